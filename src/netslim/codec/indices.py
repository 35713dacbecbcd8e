"""Sparse index coding: positions of the non-zero weights as Huffman-coded relative gaps.

Deep Compression stores each non-zero's distance to the previous one in a fixed number
of bits ``w`` and inserts a *filler zero* (an extra entry with a zero weight and its own
cluster index) whenever a gap does not fit. netslim keeps the idea and measures three
improvements, each chosen per tensor only when it gives fewer bits:

* the filler is a pure *escape* symbol (``2^w - 1``: "skip 2^w - 1 positions") that carries
  no weight, so it costs no cluster index;
* the gap symbols are Huffman coded, and ``w`` is chosen per tensor (1..12) to minimise
  the coded bits plus the table;
* the scan order is row-major (``W[out, :]``) or column-major (``W[:, in]``): pruning
  often empties whole input columns (border pixels), whose long runs then cost a few
  escapes instead of many mid-sized gaps.

:func:`paper_index_bits` gives the paper's fixed-width scheme for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bitio import CorruptError, Reader, Writer
from .huffman import StreamStats, code_cost_bits, read_stream, write_stream

MAX_WIDTH = 12


@dataclass(frozen=True)
class PositionCode:
    width: int  # gap symbols are 0 .. 2^width - 1; the largest is the escape
    column_major: bool  # scan order of the 2-D view (rows = dim 0)


def scan_order(shape: tuple[int, ...], column_major: bool) -> np.ndarray | None:
    """Flat row-major index of each position in scan order (None: row-major itself)."""
    if not column_major:
        return None
    rows = shape[0] if shape else 1
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return np.arange(rows * cols, dtype=np.int64).reshape(rows, cols).T.reshape(-1)


def gaps_of(positions: np.ndarray) -> np.ndarray:
    """Zeros skipped before each non-zero (positions sorted ascending)."""
    positions = np.asarray(positions, dtype=np.int64)
    return np.diff(positions, prepend=-1) - 1


def gap_symbols(gaps: np.ndarray, width: int) -> np.ndarray:
    """Each gap g becomes g // E escapes followed by g % E (E = 2^width - 1)."""
    esc = (1 << width) - 1
    q = gaps // esc  # (nnz,) escapes before each non-zero
    out = np.full(len(gaps) + int(q.sum()), esc, dtype=np.int64)
    out[np.cumsum(q + 1) - 1] = gaps % esc
    return out


def positions_from_symbols(symbols: np.ndarray, *, width: int, numel: int) -> np.ndarray:
    esc = (1 << width) - 1
    is_esc = symbols == esc
    advance = np.where(is_esc, esc, symbols + 1)  # escapes skip, data symbols land
    pos = np.cumsum(advance)[~is_esc] - 1
    if len(pos) and pos[-1] >= numel:
        raise CorruptError(f"sparse positions run past the tensor's {numel} elements; the file is corrupted.")
    if len(symbols) and is_esc[-1]:
        raise CorruptError("sparse position stream ends with an escape; the file is corrupted.")
    return pos


def _width_cost(gaps: np.ndarray, width: int) -> int:
    esc = (1 << width) - 1
    counts = np.bincount(gaps % esc, minlength=esc + 1)
    counts[esc] += int((gaps // esc).sum())
    used = np.count_nonzero(counts)
    table = 8 * min((4 * (esc + 1) + 7) // 8, (used * (width + 4) + 7) // 8)
    return code_cost_bits(counts) + table


def _candidate_widths(gaps: np.ndarray) -> range:
    """Widths around log2 of the mean gap (the cost is close to unimodal in the width)."""
    centre = int(np.ceil(np.log2(gaps.mean() + 2))) + 1 if len(gaps) else 1
    return range(max(1, centre - 4), min(MAX_WIDTH, centre + 2) + 1)


def choose_code(flat_mask: np.ndarray, shape: tuple[int, ...]) -> PositionCode:
    """The (width, order) with the fewest coded bits for this mask."""
    best: tuple[int, PositionCode] | None = None
    for column_major in (False, True) if len(shape) > 1 else (False,):
        order = scan_order(shape, column_major)
        scanned = flat_mask if order is None else flat_mask[order]
        gaps = gaps_of(np.flatnonzero(scanned))
        for width in _candidate_widths(gaps):
            cost = _width_cost(gaps, width)
            if best is None or cost < best[0]:
                best = (cost, PositionCode(width, column_major))
    return best[1]


def write_positions(w: Writer, flat_mask: np.ndarray, *, shape: tuple[int, ...]) -> tuple[StreamStats, np.ndarray]:
    """Code the non-zero positions; returns stats and the scan order used (for values)."""
    code = choose_code(flat_mask, shape)
    order = scan_order(shape, code.column_major)
    scanned = flat_mask if order is None else flat_mask[order]
    w.u8(code.width | (0x80 if code.column_major else 0))
    stats = write_stream(w, gap_symbols(gaps_of(np.flatnonzero(scanned)), code.width), alphabet=1 << code.width)
    flat_positions = np.flatnonzero(scanned) if order is None else order[np.flatnonzero(scanned)]
    return stats, flat_positions


def read_positions(r: Reader, *, numel: int, shape: tuple[int, ...]) -> tuple[np.ndarray, StreamStats]:
    """Flat row-major positions of the non-zeros, in the order their values are stored."""
    flags = r.u8()
    width, column_major = flags & 0x7F, bool(flags & 0x80)
    if not 1 <= width <= MAX_WIDTH:
        raise r.fail(f"invalid index width {width}")
    symbols, alphabet, stats = read_stream(r, max_alphabet=1 << width, max_count=numel)  # a symbol covers >= 1 position
    if alphabet != 1 << width:
        raise r.fail("index alphabet does not match its width")
    pos = positions_from_symbols(symbols, width=width, numel=numel)
    order = scan_order(shape, column_major)
    return (pos if order is None else order[pos]), stats


def paper_index_bits(flat_mask: np.ndarray, width: int) -> int:
    """Deep Compression's scheme: ``width`` bits per entry, a filler entry per overflow."""
    gaps = gaps_of(np.flatnonzero(flat_mask))
    span = 1 << width  # largest relative step it can express
    fillers = int((gaps // span).sum())
    return width * (len(gaps) + fillers)


def paper_fillers(flat_mask: np.ndarray, width: int) -> int:
    return int((gaps_of(np.flatnonzero(flat_mask)) // (1 << width)).sum())
