"""Byte and bit level I/O for the codec: varints, bounded readers, vectorised bit packing.

Everything a decoder reads from a file goes through :class:`Reader`, whose every access
is bounds-checked, so a truncated or corrupted file raises :class:`CorruptError` (a
``NetslimError``) instead of an ``IndexError``, a hang or a huge allocation.
"""

from __future__ import annotations

import struct

import numpy as np

from netslim.core.errors import NetslimError

# Caps that keep a corrupted length field from asking for absurd memory or time.
MAX_VARINT_BYTES = 10
MAX_ELEMENTS = 1 << 34


class CorruptError(NetslimError):
    """The bytes do not form a valid stream (corrupted or truncated)."""


class Writer:
    """Append-only byte buffer with little-endian helpers."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> None:
        self.buf.append(v & 0xFF)

    def u32(self, v: int) -> None:
        self.buf += struct.pack("<I", v)

    def varint(self, v: int) -> None:
        if v < 0:
            raise ValueError(f"varint must be >= 0; got {v}")
        while True:
            byte = v & 0x7F
            v >>= 7
            self.buf.append(byte | (0x80 if v else 0))
            if not v:
                return

    def blob(self, data: bytes) -> None:
        """Length-prefixed bytes."""
        self.varint(len(data))
        self.buf += data

    def text(self, s: str) -> None:
        self.blob(s.encode("utf-8"))

    def raw(self, data: bytes) -> None:
        self.buf += data

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Bounds-checked reader over a bytes object; ``where`` names it in errors."""

    def __init__(self, data: bytes, where: str = "stream") -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.where = where

    def fail(self, what: str) -> CorruptError:
        return CorruptError(f"{self.where}: {what} at byte {self.pos}; the file is corrupted or truncated.")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"needs {n} more bytes but only {len(self.data) - self.pos} remain")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def varint(self, limit: int = MAX_ELEMENTS) -> int:
        v, shift = 0, 0
        for _ in range(MAX_VARINT_BYTES):
            byte = self.u8()
            v |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if v > limit:
                    raise self.fail(f"value {v} exceeds the limit {limit}")
                return v
            shift += 7
        raise self.fail("varint too long")

    def blob(self, limit: int | None = None) -> bytes:
        n = self.varint(limit if limit is not None else len(self.data))
        return self.take(n)

    def text(self) -> str:
        try:
            return self.blob(4096).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("invalid UTF-8 text") from None

    def remaining(self) -> int:
        return len(self.data) - self.pos


# ---------------------------------------------------------------------- bit packing
def pack_codes(codes: np.ndarray, lengths: np.ndarray, *, chunk: int = 1 << 20) -> tuple[bytes, int]:
    """Concatenate variable-length codes MSB-first; returns (bytes, number of bits).

    ``codes[i]`` holds its ``lengths[i]`` low bits. Vectorised: one ``np.repeat`` per
    chunk of symbols (chunks bound the temporary memory to ~50 bytes per coded bit).
    """
    codes = np.asarray(codes, dtype=np.uint32)
    lengths = np.asarray(lengths, dtype=np.int32)
    parts = []
    for s in range(0, len(codes), chunk):
        c, ln = codes[s : s + chunk], lengths[s : s + chunk]
        total = int(ln.sum())
        if total == 0:
            continue
        start = np.cumsum(ln) - ln  # (n,) first bit of each code
        within = np.arange(total, dtype=np.int64) - np.repeat(start, ln)  # (total,)
        shift = (np.repeat(ln, ln) - 1 - within).astype(np.uint32)
        parts.append(((np.repeat(c, ln) >> shift) & 1).astype(np.uint8))
    if not parts:
        return b"", 0
    bits = np.concatenate(parts)  # (nbits,) one byte per bit
    return np.packbits(bits).tobytes(), len(bits)


def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Fixed-width unsigned integers, MSB-first (``width`` <= 32)."""
    values = np.asarray(values, dtype=np.uint64)
    if len(values) and int(values.max()) >> width:
        raise ValueError(f"a value does not fit in {width} bits")
    data, _ = pack_codes(values.astype(np.uint32), np.full(len(values), width, np.int32))
    return data


def bit_windows(data: bytes, positions: np.ndarray, *, width: int) -> np.ndarray:
    """The ``width`` bits (<= 25) starting at each bit position, as integers (MSB-first).

    Bits past the end read as zero; callers check positions against the bit count.
    """
    if not 0 < width <= 25:
        raise ValueError(f"window width must be in [1, 25]; got {width}")
    b = np.frombuffer(bytes(data) + b"\0\0\0\0", dtype=np.uint8).astype(np.uint32)
    word = (b[:-3] << 24) | (b[1:-2] << 16) | (b[2:-1] << 8) | b[3:]  # (nbytes+1,) 32-bit windows
    p = np.asarray(positions, dtype=np.int64)
    shift = (32 - width - (p & 7)).astype(np.uint32)
    return (word[p >> 3] >> shift) & np.uint32((1 << width) - 1)


def unpack_uint(data: bytes, *, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`; ``data`` must hold ``count * width`` bits."""
    if count * width > len(data) * 8:
        raise CorruptError(f"packed integers need {count * width} bits; only {len(data) * 8} present.")
    if count == 0:
        return np.zeros(0, np.int64)
    if width <= 25:
        return bit_windows(data, np.arange(count, dtype=np.int64) * width, width=width).astype(np.int64)
    return _unpack_bits_generic(data, count, width)


def _unpack_bits_generic(data: bytes, count: int, width: int) -> np.ndarray:
    """Slow path for widths above 25 bits (rare: offsets of huge streams)."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[: count * width].reshape(count, width)
    weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
    return (bits.astype(np.int64) * weights).sum(1)
