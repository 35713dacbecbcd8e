"""What a netslim safetensors artifact must look like before anything is built from it.

The file (safetensors): an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}``,
then the data buffer. netslim's two metadata entries:

* ``"netslim"``: the description (JSON text; :class:`Description`);
* ``"netslim.sha256"``: the integrity record (JSON text; :func:`integrity_record`)::

      {"algorithm": "sha256",
       "description": base64(SHA-256(UTF-8 bytes of the "netslim" entry)),
       "tensors": base64(concatenated SHA-256 digests, one per tensor, tensors sorted by name)}

  where a tensor's digest is SHA-256 over its header entry ``[name, dtype, shape]`` (compact
  JSON and a newline) followed by its raw bytes, exactly as stored between its data_offsets:
  a header flip that renames a tensor or turns F32 into F16 changes no data byte but does
  change the digest. 32 bytes per tensor (~43 characters) keep the record small for small models.

Checking a file (:func:`read_header`, :func:`verify_integrity`, :func:`validate_description`)
trusts nothing it reads: the header length against the file size, every header entry
(dtype known, shape non-negative integers, offsets contiguous and covering the buffer, byte
count == elements x item size), the description against a pydantic schema (types of every
field, JSON nesting depth <= :data:`MAX_DEPTH`, aliases naming stored tensors, every integer
in ``arch`` / ``modules`` at most :func:`size_bound` - the file's own element count - so no
description can ask for more than the file could fill), and, when the record is there, the
digests. Every failure is a :class:`NetslimError` naming the file and the field. Building
modules against the header's shapes happens in :mod:`netslim.core.serialize` (on the meta
device, before any allocation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import NetslimError, clip, shown

FORMAT_VERSION = 1
DESCRIPTION_KEY = "netslim"
INTEGRITY_KEY = "netslim.sha256"
ALGORITHM = "sha256"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_DEPTH = 64  # JSON nesting of a description (real ones: < 15)
MAX_DIMS = 16

# safetensors dtype name -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "F8_E4M3FNUZ": (torch.float8_e4m3fnuz, 1),
    "F8_E5M2FNUZ": (torch.float8_e5m2fnuz, 1),
    "I16": (torch.int16, 2),
    "U16": (torch.uint16, 2),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4),
    "U32": (torch.uint32, 4),
    "F32": (torch.float32, 4),
    "I64": (torch.int64, 8),
    "U64": (torch.uint64, 8),
    "F64": (torch.float64, 8),
    "C64": (torch.complex64, 8),
}
DTYPE_NAMES = {dt: name for name, (dt, _) in DTYPES.items()}


# ------------------------------------------------------------------------------ header
@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the data buffer
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int  # file offset of the data buffer

    @property
    def total_elements(self) -> int:
        return sum(e.numel for e in self.tensors.values())


def read_header(path: Path) -> Header:
    """The parsed and checked safetensors header of ``path``; reads no tensor data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            n = int.from_bytes(raw_len, "little") if len(raw_len) == 8 else -1
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                raise NetslimError(
                    f"{path} is not a readable netslim artifact: truncated or not safetensors "
                    f"(header length {n} for a file of {size} bytes)."
                )
            text = f.read(n)
    except OSError as e:
        raise NetslimError(f"{path}: cannot read the file: {e}.") from None
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise NetslimError(f"{path}: corrupt safetensors header ({type(e).__name__}: {clip(str(e))}).") from None
    if not isinstance(raw, dict):
        raise NetslimError(f"{path}: corrupt safetensors header: not a JSON object.")
    meta = raw.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise NetslimError(f"{path}: corrupt safetensors header: field '__metadata__' must map names to strings.")
    tensors = {name: _entry(path, name, e) for name, e in raw.items()}
    _check_layout(path, tensors, size - 8 - n)
    return Header(path, tensors, meta, 8 + n)


def _entry(path: Path, name: str, e: Any) -> TensorEntry:
    where = f"{path}: corrupt safetensors header: tensor {shown(name)}"
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise NetslimError(f"{where} must have exactly dtype, shape and data_offsets; got {shown(e)}.")
    dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise NetslimError(f"{where}: field 'dtype' must be one of {', '.join(DTYPES)}; got {shown(dtype)}.")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_nat(d) for d in shape)):
        raise NetslimError(
            f"{where}: field 'shape' must be a list of <= {MAX_DIMS} non-negative integers; got {shown(shape)}."
        )
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(_nat(o) for o in offsets) and offsets[0] <= offsets[1]
    ):
        raise NetslimError(
            f"{where}: field 'data_offsets' must be [begin, end] with 0 <= begin <= end; got {shown(offsets)}."
        )
    entry = TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])
    if entry.numel * DTYPES[dtype][1] != entry.end - entry.begin:
        raise NetslimError(f"{where}: {entry.end - entry.begin} bytes do not hold shape {list(shape)} of {dtype}.")
    return entry


def _nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_layout(path: Path, tensors: dict[str, TensorEntry], data_len: int) -> None:
    """Tensors tile the data buffer exactly: no gap, no overlap, nothing past the end."""
    pos = 0
    for name, e in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != pos:
            raise NetslimError(
                f"{path}: corrupt safetensors header: tensor {shown(name)} starts at byte {e.begin} "
                f"of the data, expected {pos} (a gap or an overlap)."
            )
        pos = e.end
    if pos != data_len:
        raise NetslimError(
            f"{path}: the data holds {data_len} bytes, the header describes {pos}: the file is truncated or corrupted."
        )


# --------------------------------------------------------------------------- integrity
DIGEST_BYTES = 32


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes safetensors stores for the CPU-contiguous tensor ``t`` (no copy)."""
    # numpy's stubs declare ndarray.__buffer__ only for Python >= 3.12 (PEP 688); it is a buffer on every version.
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


def _tensor_digest(name: str, dtype: str, shape, data) -> bytes:
    """SHA-256 of the tensor's header entry ``[name, dtype, shape]`` (compact JSON, newline) and raw bytes."""
    h = hashlib.sha256(json.dumps([name, dtype, list(shape)], separators=(",", ":")).encode("utf-8") + b"\n")
    h.update(data)
    return h.digest()


def _text_digest(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def integrity_record(description_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """The ``"netslim.sha256"`` metadata entry for these (CPU, contiguous) tensors."""
    digests = b"".join(
        _tensor_digest(k, DTYPE_NAMES[tensors[k].dtype], tensors[k].shape, tensor_bytes(tensors[k]))
        for k in sorted(tensors)
    )
    record = {
        "algorithm": ALGORITHM,
        "description": _text_digest(description_json),
        "tensors": base64.b64encode(digests).decode("ascii"),
    }
    return json.dumps(record, separators=(",", ":"))


class _Integrity(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    algorithm: Literal["sha256"]
    description: StrictStr
    tensors: StrictStr


@dataclass(frozen=True)
class Integrity:
    description: str  # base64 SHA-256 of the description text
    tensors: list[bytes]  # SHA-256 per tensor, tensors sorted by name


def read_integrity(header: Header) -> Integrity | None:
    """The integrity record of ``header`` (None: a file written before netslim stored one)."""
    text = header.metadata.get(INTEGRITY_KEY)
    if text is None:
        return None
    try:
        rec = _Integrity.model_validate(json.loads(text))
        digests = base64.b64decode(rec.tensors, validate=True)
    except (ValueError, RecursionError, binascii.Error) as e:  # JSONDecodeError, ValidationError: ValueErrors
        raise NetslimError(
            f"{header.path}: corrupt integrity record (metadata {INTEGRITY_KEY!r}): {_first_error(e)}."
        ) from None
    if len(digests) != DIGEST_BYTES * len(header.tensors):
        raise NetslimError(
            f"{header.path}: the integrity record covers {len(digests) / DIGEST_BYTES:g} tensors, the "
            f"header lists {len(header.tensors)}: the file is corrupted."
        )
    return Integrity(rec.description, [digests[i : i + DIGEST_BYTES] for i in range(0, len(digests), DIGEST_BYTES)])


def verify_description(header: Header, record: Integrity, description_json: str) -> None:
    if _text_digest(description_json) != record.description:
        raise NetslimError(
            f"{header.path}: checksum mismatch in field 'description' (metadata "
            f"{DESCRIPTION_KEY!r}): the file is corrupted."
        )


def verify_integrity(header: Header, record: Integrity, description_json: str, threads: int = 1) -> None:
    """SHA-256 of the description and of every tensor against ``record``; NetslimError on any mismatch."""
    verify_description(header, record, description_json)
    names = sorted(header.tensors)
    with open(header.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:

            def digest(name: str) -> bytes:
                e = header.tensors[name]
                start = header.data_start
                return _tensor_digest(name, e.dtype, e.shape, view[start + e.begin : start + e.end])

            # hashlib releases the GIL on large buffers: tensors hash in parallel
            if threads > 1 and len(names) > 1:
                with ThreadPoolExecutor(min(threads, len(names))) as pool:
                    digests = list(pool.map(digest, names))
            else:
                digests = [digest(n) for n in names]
        finally:
            view.release()
    for name, got, want in zip(names, digests, record.tensors):
        if got != want:
            raise NetslimError(f"{header.path}: checksum mismatch in tensor {shown(name)}: the file is corrupted.")


def hash_threads() -> int:
    return max(1, min(8, torch.get_num_threads(), os.cpu_count() or 1))


# ------------------------------------------------------------------------- description
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModuleSpec(_Strict):
    """``{"type", "kwargs"}`` (a registered module type) or ``{"type", "children"}`` (a container)."""

    type: StrictStr = Field(min_length=1, max_length=300)
    kwargs: dict[str, JsonValue] | None = None
    children: dict[str, ModuleSpec] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ModuleSpec:
        if (self.kwargs is None) == (self.children is None):
            raise ValueError("a module spec has exactly one of 'kwargs' and 'children'")
        return self


class _Arch(BaseModel):
    """Fields every architecture kind shares; the kind's own fields are checked by kind."""

    model_config = ConfigDict(extra="allow", strict=True)
    kind: StrictStr = Field(min_length=1, max_length=100)


class _ZooArch(_Arch):
    name: StrictStr = Field(min_length=1, max_length=200)
    kwargs: dict[str, JsonValue] = {}


class _HFArch(_Arch):
    class_: StrictStr = Field(alias="class", min_length=1, max_length=200)
    config: dict[str, JsonValue]


class _UserArch(_Arch):
    class_: StrictStr = Field(alias="class", min_length=1, max_length=1000)
    ref: StrictStr | None = None


_ARCH_KINDS: dict[str, type[_Arch]] = {"zoo": _ZooArch, "hf": _HFArch, "user": _UserArch}


class History(_Strict):
    """The steps applied to the model, in order, and the last one that froze its weights."""

    applied: list[Annotated[StrictStr, Field(max_length=100)]] = Field(max_length=10_000)
    frozen_by: Annotated[StrictStr, Field(max_length=100)] | None = None


class Description(_Strict):
    format: Literal["netslim"]
    version: StrictInt = Field(ge=1, le=FORMAT_VERSION)
    arch: dict[str, JsonValue]
    modules: dict[str, ModuleSpec] = {}
    masks: list[StrictStr] = []
    aliases: dict[str, StrictStr] = {}
    info: dict[str, JsonValue] = {}
    plans: list[dict[str, JsonValue]] = []  # structured prune plans, replayed on the base (issue 22)
    history: History | None = None  # steps applied (netslim.core.history.StepHistory)
    checksums: Literal["sha256"] | None = None

    @field_validator("arch")
    @classmethod
    def _arch_kind(cls, arch: dict) -> dict:
        try:
            kind = arch.get("kind")
            (_ARCH_KINDS.get(kind, _Arch) if isinstance(kind, str) else _Arch).model_validate(arch)
        except ValidationError as e:
            raise ValueError(_first_error(e)) from None
        return arch

    @field_validator("masks")
    @classmethod
    def _unique(cls, masks: list[str]) -> list[str]:
        if len(set(masks)) != len(masks):
            raise ValueError("lists a tensor twice")
        return masks


def parse_description(header: Header) -> tuple[str, dict]:
    """(JSON text, parsed object) of the description; NetslimError when absent or not JSON."""
    path = header.path
    text = header.metadata.get(DESCRIPTION_KEY)
    if text is None:
        raise NetslimError(f"{path} is a safetensors file without a netslim description; save it with netslim.save.")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise NetslimError(
            f"{path}: corrupt description (metadata {DESCRIPTION_KEY!r}): {type(e).__name__}: {clip(str(e))}."
        ) from None
    if not isinstance(raw, dict):
        raise NetslimError(f"{path}: corrupt description: not a JSON object; got {shown(raw)}.")
    return text, raw


def validate_description(header: Header, raw: dict) -> dict:
    """``raw`` (parsed JSON) checked against the schema and the header; returned with defaults filled."""
    path = header.path
    version = raw.get("version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise NetslimError(
            f"{path} was written by a newer netslim (format {version}); this one reads <= {FORMAT_VERSION}."
        )
    deep = too_deep(raw, MAX_DEPTH)
    if deep is not None:
        raise NetslimError(
            f"{path}: invalid description: field {shown(deep)} is nested deeper than {MAX_DEPTH} levels."
        )
    try:
        Description.model_validate(raw)
    except ValidationError as e:
        raise NetslimError(f"{path}: invalid description: {_first_error(e)}.") from None
    desc = {"modules": {}, "masks": [], "aliases": {}, "info": {}, **raw}
    _check_aliases(header, desc["aliases"])
    bound = size_bound(header)
    for field in ("arch", "modules"):
        big = _first_big_int(desc[field], bound, field)
        if big is not None:
            raise NetslimError(
                f"{path}: invalid description: field {big[0]!r} is {shown(big[1])}, more than this "
                f"file's {bound} stored elements could fill."
            )
    _check_geometry(path, desc["modules"], "modules")
    return desc


# Window geometry of convolution / pooling specs: no real layer uses a kernel, stride, padding or
# dilation over this many positions, and a crafted padding of 10^5 passes every size bound yet
# makes the forward pass run for minutes.
MAX_WINDOW = 1024
_WINDOW_KEYS = ("kernel_size", "stride", "padding", "dilation", "output_padding")


def _check_geometry(path: Path, obj: Any, where: str) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _WINDOW_KEYS and not isinstance(v, str):
                values = v if isinstance(v, list) else [v]
                if any(isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_WINDOW for x in values):
                    raise NetslimError(
                        f"{path}: invalid description: field {where}.{k} is {shown(v)}; a convolution "
                        f"or pooling window is at most {MAX_WINDOW} positions."
                    )
            _check_geometry(path, v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_geometry(path, v, f"{where}[{i}]")


def size_bound(header: Header) -> int:
    """The largest integer a description may hold in ``arch`` / ``modules``: every size (a
    width, a count of layers or non-zeros) is at most the number of elements the file stores;
    2^24 keeps room for constants of tiny models (rope_theta, max_position_embeddings)."""
    return max(header.total_elements, 2**24)


def _check_aliases(header: Header, aliases: dict[str, str]) -> None:
    for alias, target in aliases.items():
        if target not in header.tensors:
            raise NetslimError(
                f"{header.path}: invalid description: field 'aliases.{clip(alias)}' names "
                f"{shown(target)}, which is not a tensor of the file."
            )
        if alias in header.tensors:
            raise NetslimError(
                f"{header.path}: invalid description: field 'aliases.{clip(alias)}' shadows a stored tensor."
            )


def too_deep(obj: Any, limit: int) -> str | None:
    """The path of the first value nested deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > limit:
            return where or "(root)"
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


def _first_big_int(obj: Any, bound: int, where: str) -> tuple[str, int] | None:
    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > bound:
            return clip(at), value
        if isinstance(value, dict):
            stack.extend((v, f"{at}.{k}") for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(value))
    return None


def _first_error(e: Exception) -> str:
    if not isinstance(e, ValidationError):
        return f"{type(e).__name__}: {clip(str(e))}"
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"field {shown(loc)}: {clip(err['msg'])}; got {shown(err.get('input'))}"


# ------------------------------------------------------------- layers' load-time checks
def loaded(state_dict: dict, prefix: str, names: tuple[str, ...]) -> bool:
    """True when the state dict being loaded holds all of ``names`` for the layer at ``prefix``
    (else torch reports the missing keys, and the layer's check would see its initial values)."""
    return all(prefix + n in state_dict for n in names)


def check_layer_tensors(where: str, fields: dict[str, tuple[torch.Tensor, tuple, torch.dtype | None]]) -> None:
    """A layer's tensors against what its constructor arguments declare: ``field -> (tensor,
    shape, dtype)``, dtype None meaning any floating dtype (a model cast to bf16 stays valid)."""
    for field, (t, shape, dtype) in fields.items():
        dtype_ok = t.is_floating_point() if dtype is None else t.dtype == dtype
        if tuple(t.shape) != tuple(shape) or not dtype_ok:
            want = "floats" if dtype is None else str(dtype)
            raise NetslimError(
                f"{where}: field {field!r} must be {want} of shape {list(shape)}; got {t.dtype} {list(t.shape)}."
            )


def check_positive(where: str, field: str, t: torch.Tensor) -> None:
    """Scales: finite and > 0 (what every netslim quantizer writes)."""
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise NetslimError(f"{where}: field {field!r} must hold finite scales > 0.")
