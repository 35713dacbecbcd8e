"""Huffman coding: round trips on random and adversarial distributions, optimality, limits."""

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netslim.codec.bitio import CorruptError, Reader, Writer
from netslim.codec.huffman import BLOCK, MAX_LEN, code_lengths, decode, encode, entropy_bits, read_stream, write_stream
from netslim.core.errors import NetslimError


def round_trip(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, int]:
    w = Writer()
    stats = write_stream(w, symbols, alphabet=alphabet)
    data = w.getvalue()
    r = Reader(data)
    out, a, _ = read_stream(r, max_alphabet=alphabet, max_count=1 << 30)
    assert r.remaining() == 0 and a == alphabet
    return out, stats.payload_bits


def unlimited_huffman(counts: np.ndarray) -> tuple[int, int]:
    """Textbook Huffman (heap): (optimal total length without a limit, depth of its tree)."""
    heap = [(int(c), 0) for c in counts if c > 0]
    if len(heap) <= 1:
        return 0, 0
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        (a, da), (b, db) = heapq.heappop(heap), heapq.heappop(heap)
        total += a + b
        heapq.heappush(heap, (a + b, max(da, db) + 1))
    return total, heap[0][1]


distributions = st.sampled_from(["uniform", "one", "skewed", "geometric", "two"])


@settings(max_examples=60, deadline=None)
@given(kind=distributions, n=st.integers(0, 20000), alphabet=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_round_trip(kind, n, alphabet, seed):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        s = rng.integers(0, alphabet, n)
    elif kind == "one":
        s = np.full(n, alphabet - 1)
    elif kind == "two":
        s = rng.choice([0, alphabet - 1], n, p=[0.999, 0.001])
    elif kind == "geometric":
        s = np.minimum(rng.geometric(0.3, n) - 1, alphabet - 1)
    else:  # probabilities 2^-i: unlimited Huffman would need codes longer than MAX_LEN
        p = 0.5 ** np.arange(1, alphabet + 1)
        s = rng.choice(alphabet, n, p=p / p.sum())
    out, bits = round_trip(s, alphabet)
    assert np.array_equal(out, s)
    counts = np.bincount(s, minlength=alphabet) if n else np.zeros(alphabet)
    h = entropy_bits(counts)
    assert h - 1e-6 <= bits <= h + n  # Huffman: within one bit per symbol of the entropy


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 10**6), min_size=1, max_size=200))
def test_lengths_are_optimal_complete_and_limited(counts):
    counts = np.array(counts, dtype=np.int64)
    lengths = code_lengths(counts)
    used = counts > 0
    assert np.all((lengths > 0) == used) and lengths.max(initial=0) <= MAX_LEN
    if used.sum() >= 2:
        assert (2.0 ** -lengths[used].astype(float)).sum() == 1.0  # complete prefix code
        cost = int((counts * lengths).sum())
        best, depth = unlimited_huffman(counts)
        assert cost >= best
        if depth <= MAX_LEN:
            assert cost == best  # the limit does not bind: exactly Huffman's cost


def test_length_limit_binds_on_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib, dtype=np.int64)
    lengths = code_lengths(counts)
    assert lengths.max() == MAX_LEN
    s = np.repeat(np.arange(40), np.minimum(counts, 3000))
    out, _ = round_trip(np.random.default_rng(0).permutation(s), 40)
    assert np.array_equal(np.sort(out), np.sort(s))


def test_many_blocks_and_block_boundaries():
    rng = np.random.default_rng(1)
    for n in (BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17):
        s = rng.integers(0, 7, n)
        out, _ = round_trip(s, 7)
        assert np.array_equal(out, s)


def test_single_symbol_costs_no_bits():
    out, bits = round_trip(np.full(1000, 4), 5)
    assert bits == 0 and np.array_equal(out, np.full(1000, 4))


def test_corrupted_payload_raises_netslim_error_or_decodes():
    """Without the container's CRC, flipped payload bits may decode to other symbols, but
    the decoder must never crash with anything but NetslimError."""
    rng = np.random.default_rng(2)
    s = rng.integers(0, 20, 3000)
    lengths = code_lengths(np.bincount(s, minlength=20))
    payload, nbits, starts = encode(s, lengths)
    for i in range(0, len(payload), 7):
        bad = bytearray(payload)
        bad[i] ^= 0x5A
        try:
            decode(bytes(bad), lengths, nbits=nbits, count=len(s), block_starts=starts)
        except NetslimError:
            pass
    with pytest.raises(CorruptError):
        decode(payload, lengths, nbits=nbits - 3, count=len(s), block_starts=starts)
    with pytest.raises(CorruptError):
        decode(payload, lengths, nbits=nbits, count=len(s) + 1, block_starts=starts)
