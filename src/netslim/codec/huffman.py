"""Canonical, length-limited Huffman coding with vectorised numpy encode and decode.

* Code lengths come from package-merge (optimal under the limit ``MAX_LEN`` = 15 bits,
  so a decode table of 2^15 entries always suffices and a length fits in 4 bits).
* Tables are stored as code lengths only (canonical codes are rebuilt from them), as a
  dense 4-bit array or a sparse (symbol, length) list, whichever is smaller.
* An alphabet with a single used symbol is coded with zero bits per symbol.
* Decoding is table driven: the next ``L`` bits at *every* bit position are looked up at
  once, giving the successor position of each; the chain of symbol starts is then
  followed by pointer doubling (log2(BLOCK) vectorised gathers), from block starts
  stored every ``BLOCK`` symbols. No Python loop runs per bit or per symbol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bitio import CorruptError, Reader, Writer, bit_windows, pack_codes, pack_uint, unpack_uint

MAX_LEN = 15
BLOCK_LOG2 = 12  # a stored bit offset every 4096 symbols: ~0.005 bits/symbol
BLOCK = 1 << BLOCK_LOG2


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy of a symbol histogram, in bits for the whole sequence."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    n = c.sum()
    return float((c * np.log2(n / c)).sum()) if n else 0.0


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Optimal prefix-code lengths with no code longer than ``max_len`` (package-merge).

    Unused symbols (count 0) get length 0; a lone used symbol gets length 1.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts > 0)
    n = len(used)
    if n <= 1:
        lengths[used] = 1
        return lengths
    if n > (1 << max_len):
        raise ValueError(f"{n} symbols cannot be coded within {max_len} bits")
    order = used[np.argsort(counts[used], kind="stable")]  # lightest first
    w = counts[order]  # (n,)
    # levels[d]: for the merged list at depth max_len - d, which items are leaves.
    levels = [np.ones(n, dtype=bool)]
    cur = w
    for _ in range(max_len - 1):
        packages = cur[: len(cur) // 2 * 2].reshape(-1, 2).sum(1)
        merged = np.concatenate([w, packages])
        idx = np.argsort(merged, kind="stable")  # leaves win ties: they come first
        cur = merged[idx]
        levels.append(idx < n)
    # Select the 2n-2 lightest items at depth 1 and expand packages downwards: in each
    # list the selected items are a prefix, leaves in it are the lightest symbols.
    depth = np.zeros(n, dtype=np.int64)
    m = 2 * n - 2
    for is_leaf in reversed(levels):
        leaves = int(is_leaf[:m].sum())
        depth[:leaves] += 1
        m = 2 * (m - leaves)
    lengths[order] = depth
    return lengths


def canonical_codes(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical codes for ``lengths``: (codes per symbol, symbols in canonical order)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]  # by length, then symbol
    ln = lengths[order]
    # Code i = (sum of 2^-L_j over j < i) * 2^L_i: exact in integers scaled by 2^MAX_LEN.
    span = np.int64(1) << (MAX_LEN - ln)
    start = np.cumsum(span) - span
    codes = np.zeros(len(lengths), dtype=np.uint32)
    codes[order] = (start >> (MAX_LEN - ln)).astype(np.uint32)
    return codes, order


@dataclass(frozen=True)
class DecodeTable:
    width: int  # bits looked up at once (the longest code)
    symbol: np.ndarray  # (2^width,) symbol whose code prefixes the window
    length: np.ndarray  # (2^width,) its code length


def decode_table(lengths: np.ndarray) -> DecodeTable:
    lengths = np.asarray(lengths, dtype=np.int64)
    codes, order = canonical_codes(lengths)
    width = int(lengths.max())
    reps = np.int64(1) << (width - lengths[order])  # table entries per code
    # Canonical codes are increasing in this order, so the ranges tile the table.
    return DecodeTable(width, np.repeat(order, reps), np.repeat(lengths[order], reps))


def validate_lengths(lengths: np.ndarray, where: str) -> None:
    """A stored table must describe a complete prefix code (Kraft sum exactly 1)."""
    used = lengths[lengths > 0].astype(np.int64)
    if len(used) == 0:
        raise CorruptError(f"{where}: empty Huffman table; the file is corrupted.")
    if len(used) == 1:
        if used[0] != 1:
            raise CorruptError(f"{where}: invalid single-symbol Huffman table; the file is corrupted.")
        return
    if used.max() > MAX_LEN or int((np.int64(1) << (MAX_LEN - used)).sum()) != 1 << MAX_LEN:
        raise CorruptError(f"{where}: Huffman code lengths do not form a complete code; the file is corrupted.")


# --------------------------------------------------------------------------- tables
def _delta_codes(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exp-Golomb (order 0) codes of the zigzagged differences between successive lengths."""
    d = np.diff(lengths.astype(np.int64), prepend=0)
    v = np.where(d >= 0, 2 * d, -2 * d - 1) + 1  # zigzag, then +1 (>= 1)
    nbits = np.floor(np.log2(v)).astype(np.int64)  # leading zeros
    return v.astype(np.uint32), (2 * nbits + 1).astype(np.int32)


def write_table(w: Writer, lengths: np.ndarray) -> None:
    """Alphabet size, then the code lengths in the smallest of three layouts: dense 4-bit
    lengths, sparse (symbol, length) pairs, or Exp-Golomb-coded differences of successive
    lengths (cheap for the smooth length profiles of gap and cluster histograms)."""
    a = len(lengths)
    used = np.flatnonzero(lengths)
    sym_bits = max(1, (a - 1).bit_length())
    codes, widths = _delta_codes(lengths)
    delta = pack_codes(codes, widths)[0]
    options = {0: (4 * a + 7) // 8, 1: (len(used) * (sym_bits + 4) + 7) // 8 + 2, 2: len(delta)}
    mode = min(options, key=options.get)
    w.varint(a)
    w.u8(mode)
    if mode == 1:
        w.varint(len(used))
        vals = np.stack([used, lengths[used]], 1).reshape(-1)
        w.raw(pack_codes(vals.astype(np.uint32), np.tile([sym_bits, 4], len(used)))[0])
    elif mode == 2:
        w.raw(delta)
    else:
        w.raw(pack_uint(lengths, 4))


def _read_delta_table(r: Reader, a: int) -> np.ndarray:
    """Inverse of the Exp-Golomb delta layout; a Python loop over at most 4096 entries."""
    bits = np.unpackbits(np.frombuffer(r.data[r.pos :], dtype=np.uint8))
    out = np.zeros(a, dtype=np.int64)
    pos, prev = 0, 0
    for i in range(a):
        zeros = 0
        while pos + zeros < len(bits) and bits[pos + zeros] == 0 and zeros <= 16:
            zeros += 1
        if zeros > 16 or pos + 2 * zeros + 1 > len(bits):
            raise r.fail("invalid Huffman length table")
        v = int("".join(map(str, bits[pos + zeros : pos + 2 * zeros + 1])), 2) - 1
        pos += 2 * zeros + 1
        prev += v // 2 if v % 2 == 0 else -(v + 1) // 2
        if not 0 <= prev <= MAX_LEN:
            raise r.fail("invalid Huffman length table")
        out[i] = prev
    r.take((pos + 7) // 8)
    return out


def read_table(r: Reader, max_alphabet: int) -> np.ndarray:
    a = r.varint(max_alphabet)
    if a == 0:
        raise r.fail("empty alphabet")
    mode = r.u8()
    lengths = np.zeros(a, dtype=np.uint8)
    if mode == 1:
        n = r.varint(a)
        sym_bits = max(1, (a - 1).bit_length())
        if sym_bits > 21:
            raise r.fail(f"alphabet of {a} symbols is too large")
        data = r.take((n * (sym_bits + 4) + 7) // 8)
        at = np.arange(n, dtype=np.int64) * (sym_bits + 4)  # bit offset of each pair
        syms = bit_windows(data, at, width=sym_bits).astype(np.int64)
        lens = bit_windows(data, at + sym_bits, width=4).astype(np.int64)
        if n and (syms.max() >= a or np.any(np.diff(syms) <= 0) or lens.min() == 0):
            raise r.fail("invalid sparse Huffman table")
        lengths[syms] = lens
    elif mode == 0:
        lengths[:] = unpack_uint(r.take((4 * a + 7) // 8), count=a, width=4)
    elif mode == 2:
        lengths[:] = _read_delta_table(r, a)
    else:
        raise r.fail(f"unknown Huffman table mode {mode}")
    validate_lengths(lengths, r.where)
    return lengths


# --------------------------------------------------------------------- encode/decode
def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int, np.ndarray]:
    """(payload, number of bits, bit offsets of symbol blocks 1, 2, ...)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if np.count_nonzero(lengths) == 1:  # one symbol: zero bits each
        return b"", 0, np.zeros(0, np.int64)
    codes, _ = canonical_codes(lengths)
    ln = lengths[symbols].astype(np.int64)  # (n,)
    payload, nbits = pack_codes(codes[symbols], ln)
    starts = (np.cumsum(ln) - ln)[BLOCK::BLOCK]  # (nblocks-1,)
    return payload, nbits, starts


def decode(payload: bytes, lengths: np.ndarray, *, nbits: int, count: int, block_starts: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`; raises :class:`CorruptError` on any inconsistency."""
    used = np.flatnonzero(lengths)
    if len(used) == 1:
        if nbits:
            raise CorruptError("a single-symbol Huffman stream must carry no bits; the file is corrupted.")
        return np.full(count, used[0], dtype=np.int64)
    if count == 0:
        if nbits:
            raise CorruptError("an empty Huffman stream carries bits; the file is corrupted.")
        return np.zeros(0, np.int64)
    table = decode_table(lengths)
    dt = np.int32 if nbits < (1 << 30) else np.int64
    win = bit_windows(payload, np.arange(nbits, dtype=np.int64), width=table.width)  # (nbits,)
    nxt = np.arange(nbits, dtype=dt) + table.length[win].astype(dt)  # successor of each bit
    # Sentinels: nbits = "stream ended", nbits + 1 = "ran past the end" (absorbing).
    jump = np.concatenate([np.minimum(nxt, nbits + 1), np.array([nbits + 1, nbits + 1], dt)])
    starts = np.concatenate([[0], np.asarray(block_starts, np.int64)]).astype(dt)
    if np.any(np.diff(starts) <= 0) or starts[-1] >= nbits:
        raise CorruptError("Huffman block offsets are out of order or out of range; the file is corrupted.")
    pos = starts[:, None]  # (nblocks, 1) known symbol starts
    per_block = min(count, BLOCK)
    while pos.shape[1] < per_block:  # doubling: 2^k -> 2^(k+1) starts
        pos = np.concatenate([pos, jump[pos]], axis=1)
        if pos.shape[1] < per_block:
            jump = jump[jump]
    flat = pos[:, :per_block].reshape(-1)[:count]  # (count,) bit offset of each symbol
    if len(flat) < count or flat.max() >= nbits:
        raise CorruptError("Huffman stream ends before all symbols were decoded; the file is corrupted.")
    ends = nxt[flat]
    boundaries = np.concatenate([starts[1:], [nbits]])
    last = np.minimum(np.arange(1, len(starts) + 1) * BLOCK, count) - 1
    if not np.array_equal(ends[last], boundaries):
        raise CorruptError("Huffman stream does not end where its header says; the file is corrupted.")
    return table.symbol[win[flat]].astype(np.int64)


# ----------------------------------------------------------------------- streams
@dataclass
class StreamStats:
    count: int = 0
    table_bits: int = 0
    payload_bits: int = 0
    entropy_bits: float = 0.0
    fixed_bits: int = 0  # the same symbols at a fixed width of ceil(log2(alphabet)) bits


def write_stream(w: Writer, symbols: np.ndarray, *, alphabet: int) -> StreamStats:
    """Huffman-code ``symbols`` (ints in [0, alphabet)) into ``w`` with their table."""
    symbols = np.asarray(symbols, dtype=np.int64)
    counts = np.bincount(symbols, minlength=alphabet) if len(symbols) else np.zeros(alphabet, np.int64)
    if len(symbols) == 0:
        counts[0] = 1  # a valid table for an empty stream
    lengths = code_lengths(counts)
    before = len(w.buf)
    write_table(w, lengths)
    table_bits = 8 * (len(w.buf) - before)
    payload, nbits, starts = encode(symbols, lengths)
    w.varint(len(symbols))
    w.varint(nbits)
    if len(starts):
        w.raw(pack_uint(starts, max(1, nbits.bit_length())))
    w.raw(payload)
    return StreamStats(
        len(symbols),
        table_bits,
        nbits,
        entropy_bits(counts) if len(symbols) else 0.0,
        len(symbols) * max(1, (alphabet - 1).bit_length()),
    )


def read_stream(r: Reader, *, max_alphabet: int, max_count: int) -> tuple[np.ndarray, int, StreamStats]:
    """Decode one stream; returns (symbols, alphabet size, its stats)."""
    begin = r.pos
    lengths = read_table(r, max_alphabet)
    table_bits = 8 * (r.pos - begin)
    count = r.varint(max_count)
    nbits = r.varint(8 * r.remaining())
    nblocks = (count + BLOCK - 1) // BLOCK
    starts = np.zeros(0, np.int64)
    if nblocks > 1 and nbits:
        width = max(1, nbits.bit_length())
        starts = unpack_uint(r.take(((nblocks - 1) * width + 7) // 8), count=nblocks - 1, width=width)
    payload = r.take((nbits + 7) // 8)
    symbols = decode(payload, lengths, nbits=nbits, count=count, block_starts=starts)
    counts = np.bincount(symbols, minlength=len(lengths)) if count else np.zeros(1)
    stats = StreamStats(count, table_bits, nbits, entropy_bits(counts), count * max(1, (len(lengths) - 1).bit_length()))
    return symbols, len(lengths), stats


def code_cost_bits(counts: np.ndarray) -> int:
    """Payload bits of Huffman-coding a histogram (no table), for choosing parameters."""
    lengths = code_lengths(counts)
    if np.count_nonzero(lengths) <= 1:
        return 0
    return int((np.asarray(counts, np.int64) * lengths).sum())
