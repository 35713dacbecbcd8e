"""Sparse index coding: positions round-trip for any mask, shape and density."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from netslim.codec.bitio import Reader, Writer
from netslim.codec.indices import (
    MAX_WIDTH,
    choose_code,
    gap_symbols,
    gaps_of,
    paper_index_bits,
    positions_from_symbols,
    read_positions,
    write_positions,
)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 60),
    cols=st.integers(1, 80),
    density=st.sampled_from([0.0, 0.001, 0.05, 0.3, 0.9, 1.0]),
    pattern=st.sampled_from(["random", "columns", "rows"]),
    seed=st.integers(0, 2**31),
)
def test_positions_round_trip(rows, cols, density, pattern, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, cols)) < density
    if pattern == "columns":  # whole dead input columns, like pruned border pixels
        mask &= rng.random(cols) < 0.5
    elif pattern == "rows":
        mask &= (rng.random(rows) < 0.5)[:, None]
    flat = mask.reshape(-1)
    w = Writer()
    stats, order = write_positions(w, flat, shape=(rows, cols))
    assert sorted(order.tolist()) == np.flatnonzero(flat).tolist()
    r = Reader(w.getvalue())
    pos, rstats = read_positions(r, numel=flat.size, shape=(rows, cols))
    assert r.remaining() == 0
    assert np.array_equal(pos, order)  # same positions, in the order values are stored
    assert rstats.payload_bits == stats.payload_bits


@settings(max_examples=50, deadline=None)
@given(gaps=st.lists(st.integers(0, 20000), max_size=300), width=st.integers(1, MAX_WIDTH))
def test_gap_symbols_invert(gaps, width):
    gaps = np.array(gaps, dtype=np.int64)
    positions = np.cumsum(gaps + 1) - 1
    symbols = gap_symbols(gaps_of(positions), width)
    assert symbols.max(initial=0) < 1 << width
    numel = int(positions[-1]) + 1 if len(positions) else 1
    assert np.array_equal(positions_from_symbols(symbols, width=width, numel=numel), positions)


def test_measured_bits_beat_the_papers_fixed_width_index():
    """On a magnitude-pruned-like mask (8 % density, some dead columns) the Huffman-coded
    escape scheme uses fewer bits than 5-bit relative indices with filler entries."""
    rng = np.random.default_rng(0)
    mask = (rng.random((300, 784)) < 0.08) & (rng.random(784) < 0.8)
    w = Writer()
    stats, _ = write_positions(w, mask.reshape(-1), shape=mask.shape)
    ours = stats.payload_bits + stats.table_bits
    assert ours < paper_index_bits(mask.reshape(-1), 5)
    assert ours >= stats.entropy_bits
    code = choose_code(mask.reshape(-1), mask.shape)
    assert code.column_major  # dead columns make the column-major scan cheaper
