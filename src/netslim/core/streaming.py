"""A model too large for memory, held as a skeleton on the meta device plus its tensors on disk.

:class:`StreamedModel` is the model's structure built on ``torch.device("meta")`` (no
memory) and a :class:`TensorSource`: the safetensors file(s) its tensors live in, read one
tensor at a time. :func:`materialize` gives one module (a decoder block, the embedding) its
tensors in plain memory; :func:`release` hands them back (meta again). The one-shot engine
(:mod:`netslim.core.layerwise` with :class:`netslim.core.stream_io.BlockStream`) calibrates a
block, writes its compressed tensors (:class:`netslim.core.stream_writer.ArtifactWriter`) and
releases it, so memory holds one block at a time.

Sources (:meth:`TensorSource.open`): a Hugging Face directory (``model.safetensors`` or
``model.safetensors.index.json`` and its shards) or a netslim artifact. Nothing is trusted
before it is checked: the index is a JSON object naming shard files inside the directory,
every shard exists and has a sound header (:func:`netslim.core.artifact_schema.read_header`),
every tensor the index names is in its shard and no shard holds one it does not name, and
(:func:`check_source`) the tensors cover the model exactly with the model's shapes. An
artifact's tensors are checked against its SHA-256 record as they are read.

Tensors are read with plain file reads into freshly allocated memory (no memory map: pages
of a mapped shard would count as resident memory of the process).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .artifact_schema import DTYPES, Header, TensorEntry, read_header
from .errors import NetslimError, shown

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_INDEX_BYTES = 64 << 20  # an index of 10^5 tensors is a few MB


# ------------------------------------------------------------------------- the files
class TensorSource:
    """Named tensors in one or more safetensors files, read on demand (``get``).

    ``digests``: for a netslim artifact, the SHA-256 of each tensor (checked on read).
    """

    def __init__(self, headers: dict[str, Header], where: str, digests: dict[str, bytes] | None = None):
        self.where = where
        self._headers = headers  # tensor name -> the header of the file holding it
        self._digests = digests

    # -------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> TensorSource:
        """A Hugging Face directory (single or sharded safetensors) or a safetensors file."""
        path = Path(path)
        if path.is_dir():
            if (path / SINGLE).is_file():
                return cls._single(path / SINGLE, str(path))
            if (path / INDEX).is_file():
                return cls._sharded(path)
            raise NetslimError(
                f"{path} has no weights to stream: expected {SINGLE} or a sharded {INDEX} "
                "(write them with model.save_pretrained(dir))."
            )
        if path.is_file():
            return cls._single(path, str(path))
        raise NetslimError(
            f"{shown(str(path))} does not exist: streaming reads a Hugging Face directory or a "
            "netslim .safetensors artifact."
        )

    @classmethod
    def _single(cls, file: Path, where: str) -> TensorSource:
        header = read_header(file)
        return cls({name: header for name in header.tensors}, where)

    @classmethod
    def _sharded(cls, folder: Path) -> TensorSource:
        weight_map = read_index(folder / INDEX)
        by_file: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            by_file.setdefault(file, []).append(name)
        headers: dict[str, Header] = {}
        for file, names in by_file.items():
            shard = folder / file
            if not shard.is_file():
                raise NetslimError(
                    f"{folder / INDEX}: shard {shown(file)} (holding {shown(names[0])}"
                    f"{f' and {len(names) - 1} more' if len(names) > 1 else ''}) is missing from "
                    f"{folder}; copy the whole checkpoint directory, or re-save it with "
                    "model.save_pretrained(dir)."
                )
            header = read_header(shard)
            absent = [n for n in names if n not in header.tensors]
            if absent:
                raise NetslimError(
                    f"{folder / INDEX} does not match shard {file}: the index puts {shown(absent[0])} "
                    f"there{_more(absent)} but the shard does not hold it; re-save the "
                    "checkpoint with model.save_pretrained(dir)."
                )
            unlisted = sorted(set(header.tensors) - set(names))
            if unlisted:
                raise NetslimError(
                    f"{folder / INDEX} does not match shard {file}: the shard holds "
                    f"{shown(unlisted[0])}{_more(unlisted)}, which the index does not "
                    "list there; re-save the checkpoint with model.save_pretrained(dir)."
                )
            headers.update({n: header for n in names})
        return cls(headers, str(folder))

    # ------------------------------------------------------------------- reading
    @property
    def names(self) -> list[str]:
        return list(self._headers)

    def __contains__(self, name: str) -> bool:
        return name in self._headers

    def entry(self, name: str) -> TensorEntry:
        return self._headers[name].tensors[name]

    def files(self) -> list[Path]:
        return sorted({h.path for h in self._headers.values()})

    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor ``name`` in fresh memory (``dtype``: converted to it)."""
        if name not in self._headers:
            raise NetslimError(f"{self.where}: no tensor {shown(name)}.")
        header = self._headers[name]
        e = header.tensors[name]
        out = torch.empty(e.shape, dtype=DTYPES[e.dtype][0])
        # numpy's stubs declare ndarray.__buffer__ only for Python >= 3.12 (PEP 688); it is a buffer on every version.
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")  # type: ignore[arg-type]
        with open(header.path, "rb") as f:
            f.seek(header.data_start + e.begin)
            got = f.readinto(view) if out.numel() else 0
        if got != e.end - e.begin:
            raise NetslimError(f"{header.path}: tensor {shown(name)} is truncated ({got} of {e.end - e.begin} bytes).")
        if self._digests is not None:
            from .artifact_schema import _tensor_digest

            if _tensor_digest(name, e.dtype, e.shape, view) != self._digests.get(name):
                raise NetslimError(f"{header.path}: checksum mismatch in tensor {shown(name)}: the file is corrupted.")
        return out if dtype is None or out.dtype == dtype else out.to(dtype)


def _more(items: list) -> str:
    return f" (+{len(items) - 1} more)" if len(items) > 1 else ""


def read_index(path: Path) -> dict[str, str]:
    """``weight_map`` of a sharded checkpoint's index: tensor name -> shard file name (a plain
    name inside the directory), checked."""
    try:
        if path.stat().st_size > MAX_INDEX_BYTES:
            raise NetslimError(f"{path}: larger than {MAX_INDEX_BYTES:,} bytes; not a checkpoint index.")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, NetslimError):
            raise
        raise NetslimError(f"{path}: not a readable JSON index ({type(e).__name__}: {str(e)[:120]}).") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise NetslimError(f"{path}: field 'weight_map' must be a non-empty object (tensor name -> shard file).")
    for name, file in weight_map.items():
        if (
            not isinstance(file, str)
            or not file.endswith(".safetensors")
            or Path(file).name != file
            or file.startswith(".")
        ):
            raise NetslimError(
                f"{path}: field 'weight_map' entry {shown(name)}: the shard must be a .safetensors "
                f"file name inside the directory; got {shown(file)}."
            )
    return weight_map


# ---------------------------------------------------------------------- the model
def tensor_slots(model: nn.Module, recurse: bool = True) -> dict[str, tuple[nn.Module, str, bool]]:
    """``state key -> (owning module, attribute, is_parameter)`` of every parameter and
    persistent buffer, in ``state_dict`` order (tied tensors appear under every key);
    ``recurse=False``: the module's own tensors only."""
    slots: dict[str, tuple[nn.Module, str, bool]] = {}
    mods = model.named_modules(remove_duplicate=False) if recurse else [("", model)]
    for prefix, mod in mods:
        dot = f"{prefix}." if prefix else ""
        for name, p in mod._parameters.items():
            if p is not None:
                slots[dot + name] = (mod, name, True)
        skip = mod._non_persistent_buffers_set
        for name, b in mod._buffers.items():
            if b is not None and name not in skip:
                slots[dot + name] = (mod, name, False)
    return slots


def alias_groups(model: nn.Module) -> dict[str, str]:
    """``key -> first key`` of the state keys that hold the same tensor object (tied weights:
    the LM head and the embedding); the first key of a group maps to itself."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        out[key] = first.setdefault(id(t), key)
    return out


def check_source(model: nn.Module, source: TensorSource, groups: dict[str, str]) -> None:
    """Every tensor of ``model`` is in ``source`` (a tied one under any of its names) with the
    model's shape, and ``source`` holds nothing else: one NetslimError otherwise."""
    state = model.state_dict(keep_vars=True)
    members: dict[str, list[str]] = {}
    for key, head in groups.items():
        members.setdefault(head, []).append(key)
    what = f"{source.where} does not match its config ({type(model).__name__})"
    for head, keys in members.items():
        stored = [k for k in keys if k in source]
        if not stored:
            raise NetslimError(
                f"{what}: no tensor for {shown(head)}; re-save model and config together with "
                "model.save_pretrained(dir)."
            )
        for k in stored:
            shape = source.entry(k).shape
            if tuple(shape) != tuple(state[k].shape):
                raise NetslimError(
                    f"{what}: {shown(k)} is {list(shape)} in the file, {list(state[k].shape)} in the model."
                )
    extra = [n for n in source.names if n not in groups]
    if extra:
        raise NetslimError(
            f"{what}: the weights hold {shown(extra[0])}{_more(extra)}, which is not a "
            "tensor of the model; re-save model and config together with model.save_pretrained(dir)."
        )


@dataclass
class StreamedModel:
    """A model whose tensors stay on disk: ``model`` (every tensor on the meta device, the
    structure as stored) and ``source``; ``groups`` as :func:`alias_groups` of the structure
    the source was written from; ``init_buffers(module)`` fills a module's non-persistent
    buffers (computed, not stored: rotary frequencies) once it is materialized."""

    model: nn.Module
    source: TensorSource
    groups: dict[str, str]
    path: Path
    init_buffers: Callable[[nn.Module], None] | None = None
    info: dict = field(default_factory=dict)  # an artifact's stored info
    validate: bool = False  # run the layers' own load-time checks on what is read (artifacts)

    def stored_key(self, key: str) -> str:
        """The name under which ``key``'s tensor is in the source (a tied key: its group's stored one)."""
        if key in self.source:
            return key
        head = self.groups.get(key, key)
        for k, h in self.groups.items():
            if h == head and k in self.source:
                return k
        raise NetslimError(f"{self.source.where}: no tensor for {shown(key)}.")


def materialize(sm: StreamedModel, module: nn.Module, prefix: str, recurse: bool = True) -> None:
    """Give ``module`` (at ``prefix`` in ``sm.model``) its tensors from the source, in plain CPU
    memory, as the dtype its skeleton declares; tied tensors get one object for every key
    (``recurse=False``: only the module's own tensors, not its children's)."""
    dot = f"{prefix}." if prefix else ""
    slots = tensor_slots(module, recurse)
    made: dict[str, torch.Tensor] = {}
    for key, (owner, attr, is_param) in slots.items():
        full = dot + key
        head = sm.groups.get(full, full)
        meta = owner._parameters[attr] if is_param else owner._buffers[attr]
        assert meta is not None  # tensor_slots lists set slots only
        t = made.get(head)
        if t is None:
            t = sm.source.get(sm.stored_key(full), meta.dtype)
            made[head] = t = nn.Parameter(t, requires_grad=meta.requires_grad) if is_param else t
        if is_param:
            owner._parameters[attr] = t  # type: ignore[assignment]  # the nn.Parameter made above
        else:
            owner._buffers[attr] = t
    _tie_outside(sm, module, dot, made)
    for name, mod in module.named_modules() if recurse else [("", module)]:
        if any(b is not None and n in mod._non_persistent_buffers_set for n, b in mod._buffers.items()):
            _fill_computed_buffers(sm, mod, f"{dot}{name}".rstrip("."))
    if sm.validate and (recurse or not any(True for _ in module.children())):
        _layer_checks(module, prefix)


def _layer_checks(module: nn.Module, prefix: str) -> None:
    """The checks layers run on tensors read from a file (CSR index ranges, packed code and
    scale shapes), as ``netslim.load`` runs them: a load of the module's own values."""
    with torch.no_grad():
        try:
            module.load_state_dict(module.state_dict(keep_vars=True), strict=True)
        except NetslimError as e:
            raise NetslimError(f"{prefix or '(root)'}: {e}") from None


def _tie_outside(sm: StreamedModel, module: nn.Module, dot: str, made: dict[str, torch.Tensor]) -> None:
    """A tied tensor materialized here is also the tensor of its other keys outside ``module``."""
    for key, (owner, attr, is_param) in tensor_slots(sm.model).items():
        head = sm.groups.get(key, key)
        if head in made and not key.startswith(dot):
            (owner._parameters if is_param else owner._buffers)[attr] = made[head]  # type: ignore[assignment]  # a Parameter where is_param


def _fill_computed_buffers(sm: StreamedModel, mod: nn.Module, where: str) -> None:
    fill_computed_buffers(
        mod, where, sm.init_buffers, f"{type(sm.model).__name__} cannot be streamed", "set stream: false"
    )


def fill_computed_buffers(
    mod: nn.Module, name: str, fill: Callable[[nn.Module], None] | None, what: str, fix: str
) -> None:
    """``mod``'s non-persistent buffers (computed at construction: rotary frequencies) made real
    and filled by ``fill`` (:func:`hf_buffer_init`); without ``fill`` one NetslimError
    ``"{what}: module ... computes its buffers ...; {fix}."``."""
    for n, b in list(mod._buffers.items()):
        if b is not None and n in mod._non_persistent_buffers_set:
            mod._buffers[n] = torch.zeros(b.shape, dtype=b.dtype)
    if fill is None:
        raise NetslimError(
            f"{what}: module {name or '(root)'} computes its buffers {sorted(mod._non_persistent_buffers_set)} "
            f"at construction; {fix}."
        )
    fill(mod)


def release(module: nn.Module, root: nn.Module | None = None) -> None:
    """Every tensor of ``module`` back to the meta device (the memory is freed); with ``root``,
    its tied tensors elsewhere in ``root`` too (one meta tensor per group)."""
    swapped: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (old, meta): old kept alive, ids unique

    def meta_of(t: torch.Tensor, is_param: bool) -> torch.Tensor:
        if id(t) not in swapped:
            m = torch.empty(t.shape, dtype=t.dtype, device="meta")
            swapped[id(t)] = (t, nn.Parameter(m, requires_grad=t.requires_grad) if is_param else m)
        return swapped[id(t)][1]

    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and not p.is_meta:
                mod._parameters[name] = meta_of(p, True)  # type: ignore[assignment]  # an nn.Parameter (is_param)
        for name, b in list(mod._buffers.items()):
            if b is not None and not b.is_meta:
                mod._buffers[name] = meta_of(b, False)
    if root is not None and swapped:
        for mod in root.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and id(p) in swapped and swapped[id(p)][0] is p:
                    mod._parameters[name] = swapped[id(p)][1]  # type: ignore[assignment]  # the meta nn.Parameter
            for name, b in list(mod._buffers.items()):
                if b is not None and id(b) in swapped and swapped[id(b)][0] is b:
                    mod._buffers[name] = swapped[id(b)][1]


def is_meta(module: nn.Module) -> bool:
    return all(t.is_meta for t in [*module.parameters(), *module.buffers()])


def module_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers as its skeleton declares them."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def open_artifact(path: str | os.PathLike, *, verify: bool = True) -> StreamedModel:
    """A netslim artifact as a :class:`StreamedModel`: its structure rebuilt on the meta device
    from the description (checked against the header first), its tensors read on demand and
    checked against their SHA-256 as they are read (``verify``)."""
    from .artifact_schema import parse_description, read_integrity, validate_description, verify_description
    from .serialize import USER_KIND, build_arch, check_against_header, restore_structure

    path = Path(path)
    if not path.is_file():
        raise NetslimError(f"Artifact {shown(str(path))} does not exist.")
    header = read_header(path)
    text, raw = parse_description(header)
    record = read_integrity(header) if verify else None
    if record is not None:
        verify_description(header, record, text)
    desc = validate_description(header, raw)
    if desc["arch"].get("kind") == USER_KIND:
        raise NetslimError(
            f"{path} holds a model of your own class ({desc['arch'].get('class')}): netslim streams "
            "Hugging Face decoder models only; set stream: false."
        )
    check_against_header(desc, header)
    with torch.device("meta"):
        model = build_arch(desc["arch"], device="meta")
        restore_structure(model, desc)
    model.eval()
    groups = alias_groups(model)
    for alias, target in desc.get("aliases", {}).items():
        groups[alias] = groups.get(target, target)
    digests = None
    if record is not None:
        digests = dict(zip(sorted(header.tensors), record.tensors))
    source = TensorSource({n: header for n in header.tensors}, str(path), digests)
    return StreamedModel(
        model, source, groups, path, init_buffers=hf_buffer_init(model), info=desc.get("info", {}), validate=True
    )


def hf_buffer_init(model: nn.Module) -> Callable[[nn.Module], None] | None:
    """Fills a module's computed (non-persistent) buffers the way transformers does after loading
    on the meta device (``_init_weights``: rotary frequencies); the module's stored tensors keep
    their values. None for a model that is not a transformers model."""
    init = getattr(model, "_init_weights", None)
    if not callable(init) or not type(model).__module__.startswith("transformers."):
        return None

    def fill(mod: nn.Module) -> None:
        kept = {k: t.detach().clone() for k, t in mod.state_dict(keep_vars=True).items()}
        with torch.no_grad():
            init(mod)
            for k, t in mod.state_dict(keep_vars=True).items():
                if k in kept:
                    t.detach().copy_(kept[k])

    return fill
