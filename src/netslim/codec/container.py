"""The ``.nsz`` container: a Huffman-coded model that ``netslim.load`` rebuilds bit-exactly.

Layout (little-endian)::

    magic  b"\\x89NSZ\\r\\n\\x1a\\n"  (PNG-style: catches text-mode mangling)
    version u8                           (this reader: 1)
    header  varint length | zlib(JSON) | u32 CRC32
            JSON = netslim.core.serialize.describe(model) (arch, changed modules, info)
                   + tied-tensor aliases
    records varint count, then per record: varint length | body | u32 CRC32(body)
    trailer u32 CRC32 of every byte before it

Reading checks the magic, the version, then the whole-file CRC (CRC32 detects every
error burst up to 32 bits, so any flipped byte and any cut is caught before parsing),
then each record's CRC. Every length is bounds-checked, so nothing it reads can crash,
hang or build a wrong model: the failures are :class:`NetslimError` with the reason.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from netslim.core.errors import NetslimError
from netslim.core.serialize import atomic_write, build_arch, describe, load_state, restore_structure

from .bitio import CorruptError, Reader, Writer
from .modules import SharedWeight
from .records import RecordStats, read_record, storage_dtype, write_raw, write_shared, write_sparse

MAGIC = b"\x89NSZ\r\n\x1a\n"
VERSION = 1
MAX_HEADER = 1 << 24
# A preset zlib dictionary of strings every header repeats (part of format version 1):
# it shrinks a LeNet header from ~225 to ~130 bytes, 0.4 % of a 26 KB file.
HEADER_DICT = (
    b'{"aliases":{},"desc":{"arch":{"kind":"zoo","kwargs":{},"name":"resnet20lenet300lenet5"},'
    b'"info":{"dataset":"fashion-mnist","model":"","recipe":"deep_compression_"},"modules":{"'
    b'":{"kwargs":{"bias":true,"in_features":,"num_clusters":32,"out_features":},'
    b'"type":"netslim.codec.modules.SharedLinear"},"":{"kwargs":{"bias":false,"dilation":[1,1],"groups":1,'
    b'"in_channels":,"kernel_size":[3,3],"num_clusters":,"out_channels":,"padding":[1,1],"stride":[1,1]},'
    b'"type":"netslim.codec.modules.SharedConv2d"}'
)


def _compress(data: bytes) -> bytes:
    c = zlib.compressobj(9, zdict=HEADER_DICT)
    return c.compress(data) + c.flush()


def _decompress(data: bytes) -> bytes:
    d = zlib.decompressobj(zdict=HEADER_DICT)
    out = d.decompress(data, MAX_HEADER)
    if d.unconsumed_tail or not d.eof:
        raise zlib.error("header too large or truncated")
    return out


def _aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Tied tensors (same storage, offset, shape, dtype) are stored once."""
    seen: dict[tuple, str] = {}
    out = {}
    for k, t in state.items():
        if not t.numel():
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            out[k] = seen[key]
        else:
            seen[key] = k
    return out


def effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every parametrized tensor (e.g. masked weights) as the forward
    pass sees it: the file stores effective weights, and loads as plain modules.

    (Not ``make_permanent`` on a deep copy: removing a parametrization edits the class
    that the copy shares with the original.)
    """
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for mname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname in module.parametrizations:
            inner = f"{mname}.parametrizations.{pname}." if mname else f"parametrizations.{pname}."
            state = {k: v for k, v in state.items() if not k.startswith(inner)}
            state[f"{mname}.{pname}" if mname else pname] = getattr(module, pname).detach()
    return state


def _write_tensor(w: Writer, name: str, t: torch.Tensor) -> RecordStats:
    """Sparse coding where it is smaller than the raw bytes (floating tensors only)."""
    if t.is_floating_point() and t.numel() >= 16 and int(torch.count_nonzero(t)) < t.numel():
        trial = Writer()
        stats = write_sparse(trial, t, name=name)
        if len(trial.buf) < t.numel() * torch.empty(0, dtype=storage_dtype(t)).element_size():
            w.raw(trial.getvalue())
            return stats
    return write_raw(w, t, name=name)


def encode_model(
    model: nn.Module, info: dict | None = None, *, codebook_dtype: torch.dtype | None = None
) -> tuple[bytes, list[RecordStats]]:
    """The ``.nsz`` bytes of ``model`` and the bits spent per record.

    ``codebook_dtype`` (float16/float32): how centroids are stored; default: float16 when
    every centroid is exactly representable in it (``share`` rounds them so), else float32.
    """
    desc = describe(model, info)
    state = effective_state(model)
    header = {"desc": {k: desc[k] for k in ("arch", "modules", "info")}, "aliases": _aliases(state)}
    shared = {n: m for n, m in model.named_modules() if isinstance(m, SharedWeight)}
    covered = {f"{n}.{p}" for n in shared for p in ("codebook", "weight_index")}
    bodies: list[bytes] = []
    stats: list[RecordStats] = []
    for name, m in shared.items():
        w = Writer()
        stats.append(write_shared(w, m, name=name, codebook_dtype=codebook_dtype or _codebook_dtype(m)))
        bodies.append(w.getvalue())
    for key, t in state.items():
        if key in covered or key in header["aliases"]:
            continue
        w = Writer()
        stats.append(_write_tensor(w, key, t))
        bodies.append(w.getvalue())
    out = Writer()
    out.raw(MAGIC)
    out.u8(VERSION)
    hdr = _compress(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    out.blob(hdr)
    out.u32(zlib.crc32(hdr))
    out.varint(len(bodies))
    for body, st in zip(bodies, stats):
        before = len(out.buf)
        out.blob(body)
        out.u32(zlib.crc32(body))
        st.record_bytes = len(out.buf) - before
    out.u32(zlib.crc32(out.buf))
    return out.getvalue(), stats


def _codebook_dtype(m: SharedWeight) -> torch.dtype:
    cb = m.codebook.detach().float()
    return torch.float16 if torch.equal(cb.half().float(), cb) else torch.float32


def _open(data: bytes, where: str) -> Reader:
    """Check magic, version and the whole-file CRC; a reader positioned after the version."""
    if len(data) < len(MAGIC) + 1 + 4 or not data.startswith(MAGIC):
        raise NetslimError(f"{where} is not a netslim .nsz file (bad magic) or is truncated.")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise NetslimError(
            f"{where} uses .nsz format version {version}; this netslim reads version {VERSION}. "
            "Upgrade netslim to read it (or, if it was written by this version, the file is corrupted)."
        )
    body, stored = data[:-4], int.from_bytes(data[-4:], "little")
    if zlib.crc32(body) != stored:
        raise CorruptError(f"{where}: file checksum mismatch; the file is corrupted or truncated.")
    r = Reader(body, where)
    r.pos = len(MAGIC) + 1
    return r


def _checked(r: Reader, limit: int, what: str) -> bytes:
    blob = r.blob(limit)
    if zlib.crc32(blob) != r.u32():
        raise r.fail(f"{what} checksum mismatch")
    return blob


def _header(r: Reader, where: str) -> dict:
    try:
        header = json.loads(_decompress(_checked(r, MAX_HEADER, "header")))
    except (zlib.error, ValueError, UnicodeDecodeError):
        raise CorruptError(f"{where}: unreadable header; the file is corrupted.") from None
    if not isinstance(header, dict) or not isinstance(header.get("desc"), dict):
        raise CorruptError(f"{where}: header lacks the model description; the file is corrupted.")
    return header


def decode(data: bytes, where: str = "nsz data") -> tuple[dict, dict[str, torch.Tensor], list[RecordStats]]:
    """(header, state dict, per-record stats) of ``.nsz`` bytes."""
    r = _open(data, where)
    header = _header(r, where)
    state: dict[str, torch.Tensor] = {}
    stats: list[RecordStats] = []
    for i in range(r.varint(r.remaining())):
        before = r.pos
        body = _checked(r, r.remaining(), f"record {i}")
        try:
            tensors, st = read_record(Reader(body, f"{where} record {i}"))
        except (IndexError, RuntimeError, OverflowError, MemoryError) as e:
            # Only a crafted file gets here (the CRCs passed): still a clear NetslimError.
            raise CorruptError(f"{where}: record {i} is inconsistent ({type(e).__name__}: {e}).") from None
        st.record_bytes = r.pos - before
        state.update(tensors)
        stats.append(st)
    if r.remaining():
        raise r.fail("unexpected bytes after the last record")
    return header, state, stats


def model_from_bytes(data: bytes, where: str = "nsz data", base=None) -> nn.Module:
    header, state, _ = decode(data, where)
    desc = header["desc"]
    try:
        model = build_arch(desc["arch"], base=base)
        restore_structure(model, desc)
    except (KeyError, TypeError) as e:
        raise NetslimError(f"{where}: cannot rebuild the architecture ({e}).") from None
    for alias, target in header.get("aliases", {}).items():
        if target in state:
            state[alias] = state[target]
    load_state(model, state, {**desc, "aliases": header.get("aliases", {})}, where=where)
    return model.eval()


def load_nsz(path: str | os.PathLike, base=None) -> nn.Module:
    """``netslim.load`` for ``.nsz`` files (registered by magic); ``base`` as in ``netslim.load``."""
    path = Path(path)
    return model_from_bytes(path.read_bytes(), str(path), base=base)


def export_nsz(model: nn.Module, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``model`` as ``.nsz`` atomically (the ``export`` step's ``format: nsz``)."""
    path = Path(path)
    data, _ = encode_model(model, info)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


def nsz_breakdown(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Per-record bits of an ``.nsz`` file (for ``netslim inspect``), one dict per tensor:

    ``name, kind`` ("shared" | "sparse" | "raw"), ``shape, numel, nonzero, clusters``;
    ``weight_bits`` (Huffman payload of the cluster indices; raw: value bits),
    ``weight_table_bits, weight_entropy_bits``; ``index_bits`` (Huffman payload of the
    positions), ``index_table_bits, index_entropy_bits``; ``codebook_bytes``;
    ``record_bytes`` (on disk, framing and CRC included); ``fixed_bits`` (the paper's
    fixed-width coding) and ``huffman_saving`` = 1 - coded / fixed.
    """
    path = Path(path)
    _, _, stats = decode(path.read_bytes(), str(path))
    return [s.as_dict() for s in stats]


def read_nsz_info(path: str | os.PathLike) -> dict:
    """The ``info`` block (model, dataset, recipe) of an ``.nsz`` file."""
    path = Path(path)
    return _header(_open(path.read_bytes(), str(path)), str(path))["desc"].get("info", {})
