"""Per-tensor records of the ``.nsz`` container: raw, sparse and shared (cluster-coded).

A record body (little-endian; framing and CRC live in :mod:`.container`)::

    name (varint length + UTF-8) | kind u8 | dtype u8 | ndim u8 | dims (varints) | payload

* RAW     payload = stored dtype u8 | the tensor's bytes (biases, BatchNorm, integer buffers).
* SPARSE  payload = stored dtype u8 | positions | non-zero values' bytes in scan order.

  The stored dtype is float16 for a float32 tensor whose every value is exactly a
  float16 value (bit for bit, e.g. after ``share`` with ``dense: float16``), else the
  tensor's own dtype: the narrowing is lossless.
* SHARED  payload = k varint | codebook dtype u8 | positions | cluster-index Huffman
          stream | the codebook entries of the used clusters (bytes of that dtype).
          It restores ``<name>.codebook`` and ``<name>.weight_index``.

``positions`` = mode u8 (0: every element is present, 1: coded) + :mod:`.indices` stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .bitio import Reader, Writer
from .huffman import StreamStats, read_stream, write_stream
from .indices import paper_fillers, paper_index_bits, read_positions, write_positions
from .modules import SharedWeight, index_dtype

RAW, SPARSE, SHARED = 0, 1, 2
KIND_NAMES = {RAW: "raw", SPARSE: "sparse", SHARED: "shared"}
DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
DTYPE_CODE = {d: i for i, d in enumerate(DTYPES)}
PAPER_INDEX_WIDTH = {2: 5, 4: 8}  # Deep Compression: 5-bit relative index for FC, 8 for conv
MAX_DIMS = 8
MAX_NUMEL = 1 << 32


@dataclass
class RecordStats:
    """Bits spent on one record, for ``netslim inspect`` and the benchmarks."""

    name: str
    kind: str
    shape: list[int]
    numel: int
    nonzero: int = 0
    clusters: int = 0
    weight_bits: int = 0  # Huffman payload of the cluster indices (or raw value bits)
    weight_table_bits: int = 0
    weight_entropy_bits: float = 0.0
    index_bits: int = 0  # Huffman payload of the positions (gap symbols)
    index_table_bits: int = 0
    index_entropy_bits: float = 0.0
    codebook_bytes: int = 0
    record_bytes: int = 0  # the whole record on disk (framing and CRC included)
    fixed_bits: int = 0  # the paper's fixed-width coding of the same tensor
    extra: dict = field(default_factory=dict)

    @property
    def huffman_saving(self) -> float:
        coded = self.weight_bits + self.weight_table_bits + self.index_bits + self.index_table_bits
        return 1.0 - coded / self.fixed_bits if self.fixed_bits else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "huffman_saving": self.huffman_saving}


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def bytes_tensor(data: bytes, *, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if not data:
        return torch.zeros(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape).clone()


def _write_head(w: Writer, name: str, kind: int, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    w.text(name)
    w.u8(kind)
    w.u8(DTYPE_CODE[dtype])
    w.u8(len(shape))
    for d in shape:
        w.varint(d)


def _write_mask(w: Writer, flat_mask: np.ndarray, shape: tuple[int, ...]) -> tuple[StreamStats, np.ndarray]:
    if flat_mask.all():
        w.u8(0)
        return StreamStats(), np.arange(len(flat_mask), dtype=np.int64)
    w.u8(1)
    return write_positions(w, flat_mask, shape=shape)


def _read_mask(r: Reader, numel: int, shape: tuple[int, ...]) -> tuple[np.ndarray, StreamStats]:
    mode = r.u8()
    if mode == 0:
        return np.arange(numel, dtype=np.int64), StreamStats()
    if mode != 1:
        raise r.fail(f"unknown position mode {mode}")
    return read_positions(r, numel=numel, shape=shape)


def _paper_bits(shape: list[int], numel: int, pos: np.ndarray) -> tuple[int, int]:
    """(entries incl. fillers, index bits) of Deep Compression's fixed-width relative index."""
    if len(pos) == numel:
        return numel, 0
    mask = np.zeros(numel, dtype=bool)
    mask[pos] = True
    width = PAPER_INDEX_WIDTH.get(len(shape), 5)
    return len(pos) + paper_fillers(mask, width), paper_index_bits(mask, width)


def _sparse_stats(name, shape, numel, pos, pos_stats, itemsize) -> RecordStats:
    _, index_fixed = _paper_bits(shape, numel, pos)
    return RecordStats(
        name,
        "sparse",
        list(shape),
        numel,
        len(pos),
        weight_bits=8 * itemsize * len(pos),
        index_bits=pos_stats.payload_bits,
        index_table_bits=pos_stats.table_bits,
        index_entropy_bits=pos_stats.entropy_bits,
        fixed_bits=8 * itemsize * len(pos) + index_fixed,
    )


def _shared_stats(name, shape, numel, pos, k, pos_stats, cl_stats, cb_bytes) -> RecordStats:
    entries, index_fixed = _paper_bits(shape, numel, pos)
    bits = max(1, (k - 1).bit_length())
    return RecordStats(
        name,
        "shared",
        list(shape),
        numel,
        len(pos),
        clusters=k,
        weight_bits=cl_stats.payload_bits,
        weight_table_bits=cl_stats.table_bits,
        weight_entropy_bits=cl_stats.entropy_bits,
        index_bits=pos_stats.payload_bits,
        index_table_bits=pos_stats.table_bits,
        index_entropy_bits=pos_stats.entropy_bits,
        codebook_bytes=cb_bytes,
        fixed_bits=bits * entries + index_fixed + 8 * cb_bytes,
    )


def storage_dtype(t: torch.Tensor) -> torch.dtype:
    """float16 when it holds ``t`` (float32) bit-exactly, else ``t.dtype``."""
    if t.dtype != torch.float32 or not t.numel():
        return t.dtype
    t = t.detach()
    back = t.to(torch.float16).to(torch.float32)
    return torch.float16 if torch.equal(back.view(torch.int32), t.view(torch.int32)) else t.dtype


def _write_values(w: Writer, t: torch.Tensor, stored: torch.dtype) -> int:
    data = tensor_bytes(t.to(stored))
    w.raw(data)
    return len(data)


def _read_values(r: Reader, stored: torch.dtype, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    n = int(np.prod(shape, dtype=np.float64)) if shape else 1
    itemsize = torch.empty(0, dtype=stored).element_size()
    return bytes_tensor(r.take(n * itemsize), dtype=stored, shape=shape).to(dtype)


def _read_stored(r: Reader, dtype: torch.dtype) -> torch.dtype:
    code = r.u8()
    if code >= len(DTYPES) or (code != DTYPE_CODE[dtype] and (dtype, DTYPES[code]) != (torch.float32, torch.float16)):
        raise r.fail(f"invalid stored dtype {code} for a {dtype} tensor")
    return DTYPES[code]


def write_raw(w: Writer, t: torch.Tensor, *, name: str) -> RecordStats:
    _write_head(w, name, RAW, t.dtype, tuple(t.shape))
    stored = storage_dtype(t)
    w.u8(DTYPE_CODE[stored])
    nbytes = _write_values(w, t, stored)
    return RecordStats(
        name,
        "raw",
        list(t.shape),
        t.numel(),
        int(torch.count_nonzero(t)),
        weight_bits=8 * nbytes,
        fixed_bits=8 * nbytes,
    )


def write_sparse(w: Writer, t: torch.Tensor, *, name: str) -> RecordStats:
    _write_head(w, name, SPARSE, t.dtype, tuple(t.shape))
    stored = storage_dtype(t)
    w.u8(DTYPE_CODE[stored])
    flat = t.detach().to("cpu").reshape(-1)
    pos_stats, pos = _write_mask(w, (flat != 0).numpy(), tuple(t.shape))
    _write_values(w, flat[torch.from_numpy(pos)], stored)
    itemsize = torch.empty(0, dtype=stored).element_size()
    return _sparse_stats(name, list(t.shape), t.numel(), pos, pos_stats, itemsize)


def write_shared(w: Writer, m: SharedWeight, *, name: str, codebook_dtype: torch.dtype) -> RecordStats:
    index = m.weight_index.detach().to("cpu").long()
    shape = tuple(index.shape)
    _write_head(w, name, SHARED, torch.float32, shape)
    k = m.num_clusters
    w.varint(k)
    w.u8(DTYPE_CODE[codebook_dtype])
    flat = index.reshape(-1).numpy()
    pos_stats, pos = _write_mask(w, flat != 0, shape)
    clusters = flat[pos] - 1  # (nnz,) in scan order
    cl_stats = write_stream(w, clusters, alphabet=k)
    used = np.flatnonzero(np.bincount(clusters, minlength=k))
    codebook = m.codebook.detach().to("cpu").float()
    if not torch.equal(codebook.to(codebook_dtype).float(), codebook):
        raise ValueError(f"codebook of {name!r} is not exactly representable in {codebook_dtype}")
    cb = tensor_bytes(codebook.to(codebook_dtype)[torch.from_numpy(used)])
    w.raw(cb)
    return _shared_stats(name, list(shape), len(flat), pos, k, pos_stats, cl_stats, len(cb))


def read_record(r: Reader) -> tuple[dict[str, torch.Tensor], RecordStats]:
    """Decode one record body into state-dict entries, with its stats."""
    name = r.text()
    kind, dcode, ndim = r.u8(), r.u8(), r.u8()
    if kind not in KIND_NAMES or dcode >= len(DTYPES) or ndim > MAX_DIMS:
        raise r.fail(f"invalid record header (kind {kind}, dtype {dcode}, ndim {ndim})")
    shape = [r.varint(MAX_NUMEL) for _ in range(ndim)]
    numel = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if numel > MAX_NUMEL:
        raise r.fail(f"tensor of {numel} elements exceeds the format's limit")
    dtype = DTYPES[dcode]
    if kind == SHARED:
        return _read_shared(r, name, shape, numel)
    stored = _read_stored(r, dtype)
    itemsize = torch.empty(0, dtype=stored).element_size()
    if kind == RAW:
        t = _read_values(r, stored, dtype, shape)
        return {name: t}, RecordStats(
            name,
            "raw",
            shape,
            numel,
            int(torch.count_nonzero(t)),
            weight_bits=8 * numel * itemsize,
            fixed_bits=8 * numel * itemsize,
        )
    pos, pos_stats = _read_mask(r, numel, tuple(shape))  # SPARSE
    values = _read_values(r, stored, dtype, [len(pos)])
    flat = torch.zeros(numel, dtype=dtype)
    flat[torch.from_numpy(pos)] = values
    return {name: flat.reshape(shape)}, _sparse_stats(name, shape, numel, pos, pos_stats, itemsize)


def _read_shared(r: Reader, name: str, shape: list[int], numel: int):
    k = r.varint(4096)
    cdcode = r.u8()
    if k == 0 or cdcode >= len(DTYPES) or not DTYPES[cdcode].is_floating_point:
        raise r.fail(f"invalid shared record (k={k}, codebook dtype {cdcode})")
    pos, pos_stats = _read_mask(r, numel, tuple(shape))
    clusters, alphabet, cl_stats = read_stream(r, max_alphabet=k, max_count=numel)
    if alphabet != k or len(clusters) != len(pos):
        raise r.fail("cluster indices do not match the positions")
    used = np.flatnonzero(np.bincount(clusters, minlength=k))
    cdtype = DTYPES[cdcode]
    cb = r.take(len(used) * torch.empty(0, dtype=cdtype).element_size())
    codebook = torch.zeros(k, dtype=torch.float32)
    codebook[torch.from_numpy(used)] = bytes_tensor(
        cb, dtype=cdtype, shape=[len(used)]
    ).float()  # unused: never referenced
    index = torch.zeros(numel, dtype=index_dtype(k))
    index[torch.from_numpy(pos)] = torch.from_numpy(clusters + 1).to(index.dtype)
    stats = _shared_stats(name, shape, numel, pos, k, pos_stats, cl_stats, len(cb))
    return {f"{name}.codebook": codebook, f"{name}.weight_index": index.reshape(shape)}, stats
