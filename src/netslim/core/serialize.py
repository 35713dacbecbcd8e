"""Safe persistence: ``save(model, path)`` / ``load(path) -> nn.Module``.

An artifact is a safetensors file whose metadata holds a JSON description:

* ``arch``: how to build the base model (``{"kind": "zoo", ...}`` or ``{"kind": "hf", ...}``),
  produced and consumed by builders registered with :func:`register_arch`; a model no
  registered kind claims (a user's own class) is ``{"kind": "user", "class": ..., "ref": ...}``:
  netslim cannot build it and never imports code named in a file, so ``load(path, base=...)``
  takes a fresh instance of the user's class and replays the stored structure onto it;
* ``modules``: every module whose type or constructor arguments differ from the freshly
  built base (a shrunk Linear, a factorized layer, a sparse or int8 module), as a spec
  rebuilt through :func:`register_module` — never pickle, never an import by string;
* ``masks``: tensors that carry a :class:`~netslim.core.masks.Mask` parametrization;
* ``aliases``: tied tensors stored once;
* ``info``: free-form facts (task, metrics, recipe) for reports;
* ``history``: the steps applied to the model and the one that froze it
  (:class:`~netslim.core.history.StepHistory`), so a loaded model keeps the ordering rule.

Other container formats (e.g. the Huffman-coded ``.nsz``) plug in with
:func:`register_loader` keyed by their magic bytes. Every register_* here is filled by the
modules that define the types, found through :mod:`netslim.core.registry`: ``save`` loads its
sources first (a storage form or an architecture kind may come from any of them); ``load``
only when the file needs something not registered yet (a module type, an architecture kind,
a format's loader, plan replay), so a dense model loads without importing the method families.

Integrity and validation (the file format is in :mod:`netslim.core.artifact_schema`):
:func:`save` stores a **SHA-256** of the description JSON and of every tensor's raw bytes
(with its dtype and shape) in the safetensors metadata entry ``"netslim.sha256"``.
:func:`load` reads nothing it has not checked, in this order, before building anything:
the safetensors header (sizes against the file's byte count), the checksums (``verify=True``,
the default; ``verify=False`` - the CLI's ``--no-verify`` - skips only the hashing, for
speed on trusted files: a flipped data byte then loads as a different weight), the
description against its pydantic schema, then the model is built on the **meta device**
(no memory) under a budget of modules and elements bounded by the file's own tensors and
its state dict compared with the header's names, shapes and integer dtypes; only then is it
built for real and filled. Layers holding index data (sparse CSR, packed integer codes) check
their tensors when loaded. Files written before checksums existed load with one warning.
Every failure is a :class:`NetslimError` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules import module as _torch_module
from torch.nn.utils import parametrize

from .artifact_schema import (
    ALGORITHM,
    DESCRIPTION_KEY,
    DTYPES,
    FORMAT_VERSION,
    INTEGRITY_KEY,
    Header,
    hash_threads,
    integrity_record,
    parse_description,
    read_header,
    read_integrity,
    validate_description,
    verify_description,
    verify_integrity,
)
from .conv import conv_kwargs
from .errors import NetslimError, clip, shown, unknown_name
from .history import StepHistory
from .masks import Mask, masked_params
from .registry import failure_note, load_sources
from .surgery import get_module, replace_module

log = logging.getLogger(__name__)
MAX_MODULE_DEPTH = 32  # module specs nested in module specs (containers, Int8Residual bodies)
# What a constructor may raise on arguments from a file: reported as a NetslimError naming the field.
_BUILD_ERRORS = (
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    OverflowError,
    ZeroDivisionError,
    AssertionError,
    RecursionError,
    NotImplementedError,
)


# --------------------------------------------------------------------------- archs
@dataclass(frozen=True)
class ArchKind:
    describe: Callable[[nn.Module], dict | None]  # None: not this kind
    build: Callable[[dict], nn.Module]


_ARCHS: dict[str, ArchKind] = {}


def register_arch(kind: str, describe: Callable, build: Callable) -> None:
    _ARCHS[kind] = ArchKind(describe, build)


USER_KIND = "user"
Base = nn.Module | Callable[[], nn.Module] | None  # a user model's fresh instance, or its factory


def describe_arch(model: nn.Module) -> dict:
    load_sources()
    for kind, a in _ARCHS.items():
        desc = a.describe(model)
        if desc is not None:
            return {"kind": kind, **desc}
    # A class netslim cannot build (the user's own): named, never imported on load.
    cls = parametrize.type_before_parametrizations(model)
    return {"kind": USER_KIND, "class": cls.__qualname__, "ref": getattr(model, "netslim_ref", None)}


def build_arch(arch: dict, device: str | torch.device = "cpu", base: Base = None) -> nn.Module:
    """The base model of ``arch``; a user model (kind "user") is ``base`` (an instance or a factory)."""
    kind = arch.get("kind")
    if kind == USER_KIND:
        return _user_base(arch, base)
    if kind not in _ARCHS:
        load_sources()
    if kind not in _ARCHS:
        err = unknown_name("architecture kind", kind, [*_ARCHS, USER_KIND])
        raise type(err)(str(err) + failure_note())
    with torch.device(device):
        return _ARCHS[kind].build(arch)


def _user_base(arch: dict, base: Base) -> nn.Module:
    cls, ref = arch.get("class"), arch.get("ref")
    if base is None:
        made = f" (made from {ref})" if ref else ""
        raise NetslimError(
            f"This artifact holds a model of the user class {cls!r}{made}; netslim never imports code named in "
            "a file, so give it a fresh instance: netslim.load(path, base=YourClass()) in Python, or "
            "--model path/to/file.py:factory on the command line."
        )
    model = base() if callable(base) and not isinstance(base, nn.Module) else base
    if not isinstance(model, nn.Module):
        raise NetslimError(f"base must be an nn.Module or a function returning one; got {type(model).__name__}.")
    got = parametrize.type_before_parametrizations(model).__qualname__
    if got != cls:
        raise NetslimError(f"The artifact holds a {cls!r} model but base is a {got!r}; pass an instance of {cls}.")
    return model


# ------------------------------------------------------------------------- modules
@dataclass(frozen=True)
class ModuleType:
    cls: type
    to_kwargs: Callable[[nn.Module], dict]
    from_kwargs: Callable[[dict], nn.Module]


_MODULES: dict[str, ModuleType] = {}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_module(cls: type, to_kwargs: Callable, from_kwargs: Callable | None = None) -> None:
    """Teach save/load a module type: ``to_kwargs(m)`` gives JSON constructor arguments."""
    _MODULES[_type_name(cls)] = ModuleType(cls, to_kwargs, from_kwargs or (lambda kw: cls(**kw)))


def _lin(m):
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _conv(m):
    return conv_kwargs(m) | {"padding_mode": m.padding_mode}


def _bn(m):
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


register_module(nn.Linear, _lin)
register_module(nn.Conv1d, _conv)
register_module(nn.Conv2d, _conv)
register_module(nn.BatchNorm1d, _bn)
register_module(nn.BatchNorm2d, _bn)
register_module(
    nn.LayerNorm,
    lambda m: {
        "normalized_shape": list(m.normalized_shape),
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": m.bias is not None,
    },
)
register_module(
    nn.Embedding,
    lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim, "padding_idx": m.padding_idx},
)
register_module(nn.Dropout, lambda m: {"p": m.p})
_cls: type[nn.Module]
for _cls in (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.SiLU, nn.Sigmoid, nn.Tanh):
    register_module(_cls, lambda m: {"inplace": bool(getattr(m, "inplace", False))} if hasattr(m, "inplace") else {})
for _cls in (nn.GELU, nn.Identity, nn.Flatten):
    register_module(_cls, lambda m: {})


def module_spec(module: nn.Module, where: str = "") -> dict:
    """JSON spec that rebuilds ``module`` (structure only, not weights)."""
    name = _type_name(type(module))
    if name not in _MODULES:
        load_sources()
    if isinstance(module, _CONTAINERS):
        return {"type": name, "children": {k: module_spec(c, f"{where}.{k}") for k, c in module.named_children()}}
    if name not in _MODULES:
        raise NetslimError(
            f"Cannot save module {where or '(root)'!r} of type {type(module).__name__}: it is not a "
            "registered module type (netslim.core.serialize.register_module)."
        )
    return {"type": name, "kwargs": _MODULES[name].to_kwargs(module)}


_NESTING = threading.local()


def build_module(spec: dict, where: str = "") -> nn.Module:
    """The module ``spec`` describes (see :func:`module_spec`); NetslimError naming ``where`` if it cannot be."""
    depth = getattr(_NESTING, "depth", 0)
    if depth >= MAX_MODULE_DEPTH:
        raise NetslimError(f"Module spec {shown(where)} is nested deeper than {MAX_MODULE_DEPTH} levels.")
    _NESTING.depth = depth + 1
    try:
        return _build_module(spec, where)
    finally:
        _NESTING.depth = depth


def _build_module(spec: dict, where: str) -> nn.Module:
    name = spec.get("type") if isinstance(spec, dict) else None
    if name in {_type_name(c) for c in _CONTAINERS}:
        specs = spec.get("children", {})
        if not isinstance(specs, dict):
            raise NetslimError(f"Module spec {shown(where)}: 'children' must be an object; got {type(specs).__name__}.")
        children = {k: build_module(s, f"{where}.{k}") for k, s in specs.items()}
        if name == _type_name(nn.ModuleDict):
            return nn.ModuleDict(children)
        if name == _type_name(nn.Sequential):
            return nn.Sequential(OrderedDict(children))
        return nn.ModuleList(list(children.values()))
    if isinstance(name, str) and name not in _MODULES:
        load_sources()
    if not isinstance(name, str) or name not in _MODULES:
        err = unknown_name(f"module type (at {shown(where)})", name, _MODULES)
        raise type(err)(str(err) + failure_note())
    kwargs = spec.get("kwargs")
    if not isinstance(kwargs, dict):
        raise NetslimError(f"Module spec {shown(where)}: 'kwargs' must be an object; got {type(kwargs).__name__}.")
    try:
        return _MODULES[name].from_kwargs(kwargs)
    except NetslimError as e:
        raise NetslimError(f"Module {shown(where)} ({name.rpartition('.')[2]}): {e}") from None
    except _BUILD_ERRORS as e:
        raise NetslimError(
            f"Module {shown(where)} ({name.rpartition('.')[2]}) cannot be built from its kwargs: "
            f"{type(e).__name__}: {clip(str(e))}"
        ) from None


def _same(a: nn.Module, b: nn.Module) -> bool:
    ta = parametrize.type_before_parametrizations(a)
    tb = parametrize.type_before_parametrizations(b)
    if ta is not tb:
        return False
    name = _type_name(ta)
    if name in _MODULES and not isinstance(a, _CONTAINERS):
        return _MODULES[name].to_kwargs(a) == _MODULES[name].to_kwargs(b)
    if isinstance(a, _CONTAINERS):
        return list(dict(a.named_children())) == list(dict(b.named_children()))
    return True  # an architecture's own block type: compared through its children


def _changed_modules(model: nn.Module, base: nn.Module) -> dict[str, dict]:
    """Specs of the top-most modules of ``model`` that differ from ``base``."""
    out: dict[str, dict] = {}

    def walk(prefix: str, m: nn.Module, b: nn.Module | None) -> None:
        if prefix and (b is None or not _same(m, b)):
            out[prefix] = _spec_unparametrized(m, prefix)
            return
        base_children = dict(b.named_children()) if b is not None else {}
        for k, c in m.named_children():
            if k == "parametrizations":
                continue
            walk(f"{prefix}.{k}" if prefix else k, c, base_children.get(k))

    walk("", model, base)
    return out


def _spec_unparametrized(m: nn.Module, where: str) -> dict:
    cls = parametrize.type_before_parametrizations(m)
    if cls is not type(m):
        name = _type_name(cls)
        if name not in _MODULES:
            raise NetslimError(f"Cannot save parametrized module {where!r} of type {cls.__name__}.")
        return {"type": name, "kwargs": _MODULES[name].to_kwargs(m)}
    return module_spec(m, where)


# ---------------------------------------------------------------------- save / load
def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


atomic_write = _atomic_write


def _leaf_specs(model: nn.Module) -> dict[str, dict]:
    """Specs of every registered module that is not inside another registered one.

    A user model's base cannot be built here, so instead of the modules that differ from
    it, every module netslim knows is recorded; unknown ones (the user's own blocks) are
    walked through and rebuilt by the user's class on load.
    """
    out: dict[str, dict] = {}

    def walk(prefix: str, m: nn.Module) -> None:
        name = _type_name(parametrize.type_before_parametrizations(m))
        if prefix and name in _MODULES and not isinstance(m, _CONTAINERS):
            out[prefix] = _spec_unparametrized(m, prefix)
            return
        for k, c in m.named_children():
            if k != "parametrizations":
                walk(f"{prefix}.{k}" if prefix else k, c)

    walk("", model)
    return out


# --------------------------------------------------------------- structured prune plans
_PLAN_REPLAY: list[Callable[[nn.Module, list], nn.Module]] = []


def register_plan_replay(fn: Callable[[nn.Module, list], nn.Module]) -> None:
    """How the plans a model records in ``model.netslim_plans`` (structured pruning) are replayed
    on its freshly built base when loading (registered by ``netslim.prune.structured``)."""
    _PLAN_REPLAY[:] = [fn]


def _replay_plans(model: nn.Module, plans: list) -> None:
    if plans:
        if not _PLAN_REPLAY:
            load_sources()
        if not _PLAN_REPLAY:
            raise NetslimError("This artifact holds structured prune plans; netslim.prune.structured is not loaded.")
        _PLAN_REPLAY[0](model, plans)


def _plans_and_base_arch(model: nn.Module, arch: dict) -> tuple[list, dict]:
    """The model's recorded plans and ``arch`` as it was before them (config values they changed
    put back): base + plans rebuilds every shape and count the plans changed, whatever the class."""
    plans = list(getattr(model, "netslim_plans", None) or [])
    if plans and isinstance(arch.get("config"), dict):
        config = dict(arch["config"])
        for rec in reversed(plans):
            config.update(rec.get("config_before") or {})
        arch = {**arch, "config": config}
    return plans, arch


def describe(model: nn.Module, info: dict | None = None) -> dict:
    """The JSON description stored beside the tensors."""
    arch = describe_arch(model)
    plans, base_arch = _plans_and_base_arch(model, arch)
    if arch["kind"] == USER_KIND:
        modules = _leaf_specs(model)
    else:
        base = None
        if plans:
            try:
                with torch.device("meta"):
                    base = build_arch(base_arch, device="meta")
                    _replay_plans(base, plans)
                arch = base_arch
            except (NetslimError, *_BUILD_ERRORS) as e:  # a model changed after its plans: specs alone
                log.debug("prune plans do not replay on the base (%s): saved as module specs", e)
                base, plans = None, []
        if base is None:
            with torch.device("meta"):
                base = build_arch(arch, device="meta")
        modules = _changed_modules(model, base)
    desc = {
        "format": "netslim",
        "version": FORMAT_VERSION,
        "arch": arch,
        "modules": modules,
        "masks": masked_params(model),
        "info": info or {},
    }
    if plans:
        desc["plans"] = plans
    history = StepHistory.of(model)
    if history.applied:
        desc["history"] = history.to_json()
    return desc


_STORAGE_FORMS: dict[type, Callable[[nn.Module], nn.Module | None]] = {}


def register_storage_form(cls: type, form: Callable[[nn.Module], nn.Module | None]) -> None:
    """Teach :func:`save` a more compact stored form of a module type: ``form(module)`` returns
    the module to write in its place (an equivalent one, rebuilt by ``load``) or None to write
    it as it is. Applies to instances of exactly ``cls`` (e.g. a quantized layer whose codes
    are mostly zeros: :mod:`netslim.quantize.sparse_lowbit`)."""
    _STORAGE_FORMS[cls] = form


def _storage_forms(model: nn.Module) -> dict[str, nn.Module]:
    out = {}
    for name, m in model.named_modules():
        form = _STORAGE_FORMS.get(type(m))
        if name and form is not None:
            new = form(m)
            if new is not None:
                out[name] = new
    return out


def save(model: nn.Module, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``model`` to ``path`` (safetensors + JSON description + SHA-256 checksums), atomically.

    Modules with a registered storage form (:func:`register_storage_form`) are written in that
    form when it applies; ``model`` itself is left as it was."""
    load_sources()  # storage forms, module types
    swapped: dict[str, nn.Module] = {}
    try:
        for name, new in _storage_forms(model).items():
            swapped[name] = replace_module(model, name, new)
        return _save(model, Path(path), info)
    finally:
        for name, old in reversed(list(swapped.items())):
            replace_module(model, name, old)


def _save(model: nn.Module, path: Path, info: dict | None) -> Path:
    desc = describe(model, info)
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k, t in model.state_dict().items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        tensors[k] = t.to("cpu").contiguous()
    desc["aliases"] = aliases
    desc["checksums"] = ALGORITHM
    text = json.dumps(desc)
    metadata = {DESCRIPTION_KEY: text, INTEGRITY_KEY: integrity_record(text, tensors)}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


_LOADERS: dict[bytes, Callable[..., nn.Module]] = {}
_INFO_READERS: dict[bytes, Callable[[Path], dict]] = {}


def register_loader(magic: bytes, fn: Callable[..., nn.Module], info: Callable[[Path], dict] | None = None) -> None:
    """Another artifact format, recognised by the first bytes of the file: ``fn(path, base=None)``;
    ``info(path)``: the file's ``info`` block without building the model (:func:`read_info`)."""
    _LOADERS[magic] = fn
    if info is not None:
        _INFO_READERS[magic] = info


def _magic(head: bytes) -> bytes | None:
    """The registered magic bytes that start the file, or None (a safetensors file: an 8-byte
    header length, then the JSON header). A file that is neither loads the registry's sources
    first: its format may be a method family's or a plugin's."""
    for attempt in range(2):
        for magic in _LOADERS:
            if head.startswith(magic):
                return magic
        if attempt or head[8:9] == b"{":
            return None
        load_sources()
    return None


def _loader(head: bytes) -> Callable[..., nn.Module] | None:
    """The registered loader of the file's format, or None for a safetensors artifact."""
    magic = _magic(head)
    return None if magic is None else _LOADERS[magic]


def read_info(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """The ``info`` block (model, dataset, recipe) of an artifact in any format, without loading
    the model: a safetensors artifact's description (``verify`` as in :func:`read_description`),
    or the reader registered with the file's format (``{}`` when it has none)."""
    path = _existing(path)
    with open(path, "rb") as f:
        head = f.read(16)
    magic = _magic(head)
    if magic is None:
        return read_description(path, verify=verify).get("info", {})
    reader = _INFO_READERS.get(magic)
    return reader(path) if reader is not None else {}


def read_description(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """The validated JSON description of a safetensors artifact, without loading tensors.

    ``verify``: check the description's SHA-256 (when the file has checksums). The marker
    that the file carries checksums (``"checksums"``) describes the file, not the model, and
    is left out: a description written elsewhere without the record is a file without checksums.
    """
    path = _existing(path)
    header = read_header(path)
    text, raw = parse_description(header)
    if verify:
        record = _integrity(header, raw)
        if record is not None:
            verify_description(header, record, text)
    desc = validate_description(header, raw)
    desc.pop("checksums", None)
    return desc


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NetslimError(f"Artifact {str(path)!r} does not exist.")
    return path


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, base: Base = None, verify: bool = True
) -> nn.Module:
    """Rebuild the module saved at ``path``. Never unpickles anything.

    ``base``: for a model of the user's own class, a fresh instance (or a function that makes
    one); the stored structure (shrunk, quantized, sparse layers) is replayed onto it.
    ``verify``: check the SHA-256 of the description and of every tensor before building
    anything (default). ``False`` skips the hashing (the CLI's ``--no-verify``): faster on
    large trusted files, but a corrupted data byte then loads silently as a different weight;
    every structural check (header, schema, shapes, index ranges) still runs. Formats
    registered with :func:`register_loader` (``.nsz``) check their own CRCs either way.
    """
    path = _existing(path)
    with open(path, "rb") as f:
        head = f.read(16)
    fn = _loader(head)
    if fn is not None:
        return fn(path, base=base).to(device)
    header = read_header(path)
    text, raw = parse_description(header)
    if verify:
        record = _integrity(header, raw)
        if record is not None:
            verify_integrity(header, record, text, hash_threads())
    desc = validate_description(header, raw)
    check_against_header(desc, header, base)
    where = str(path)
    # A Hugging Face model is built on the meta device and takes the file's tensors as they are
    # (load_state assigns them): no fp32 copy with random weights first - loading a 173 MB int4
    # SmolLM2 peaked at +758 MB that way (the full fp32 model built and initialised, then replaced).
    lean = desc["arch"].get("kind") == "hf" and base is None
    with _errors_in(where, "arch"), torch.device("meta") if lean else contextlib.nullcontext():
        model = build_arch(desc["arch"], base=base, **({"device": "meta"} if lean else {}))
        _replay_plans(model, desc.get("plans", []))
        restore_structure(model, desc)
    load_state(model, _read_tensors(path), desc, where=where)
    if lean:
        _fill_computed_buffers(model, where)
    model.eval()
    return model.to(device)


def _fill_computed_buffers(model: nn.Module, where: str) -> None:
    """After a meta-device build and an assigning load: the non-persistent buffers a module
    computes at construction (rotary frequencies) filled as transformers fills them, the loaded
    tensors kept; anything still on the meta device is an error, not a silent garbage weight."""
    from .streaming import fill_computed_buffers, hf_buffer_init

    fill = hf_buffer_init(model)
    for name, mod in model.named_modules():
        if any(b is not None and b.is_meta and n in mod._non_persistent_buffers_set for n, b in mod._buffers.items()):
            fill_computed_buffers(mod, name, fill, where, "load it with base= (a model of your own class)")
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise NetslimError(f"{where}: no value for {shown(left[0])} after loading ({len(left)} tensor(s) left unset).")


_warned_unverified = False


def _integrity(header: Header, raw: dict):
    """The integrity record; None (with one warning per process) for a file saved before checksums."""
    global _warned_unverified
    record = read_integrity(header)
    if record is None and raw.get("checksums") is not None:
        raise NetslimError(
            f"{header.path}: its description says it carries checksums but the metadata "
            f"{INTEGRITY_KEY!r} is missing: the file is corrupted."
        )
    if record is None and not _warned_unverified:
        _warned_unverified = True
        log.warning(
            "%s has no checksums (saved by a netslim before they were stored): loaded unverified. "
            "Save it again to add them.",
            header.path,
        )
    return record


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError) as e:
        raise NetslimError(f"{path}: cannot read tensors: {clip(str(e))}.") from None


@contextlib.contextmanager
def _errors_in(where: str, field: str):
    """Exceptions of building from a file's description as NetslimErrors naming the file (and
    ``field`` for a constructor's own exception; netslim's messages name theirs)."""
    try:
        yield
    except NetslimError as e:
        raise NetslimError(str(e) if where in str(e) else f"{where}: {e}") from None
    except _BUILD_ERRORS as e:
        raise NetslimError(
            f"{where}: field {field!r}: cannot build the model: {type(e).__name__}: {clip(str(e))}"
        ) from None


# ----------------------------------------------------------- the plan, against the header
def check_against_header(desc: dict, header: Header, base: Base = None) -> None:
    """Build what ``desc`` describes on the meta device (no memory) and compare its tensors
    with the header's, before anything is allocated.

    Construction runs under a budget (:func:`_budget`) so that a description asking for a
    billion layers stops after a few thousand. For a user model (whose base is the caller's
    instance) the recorded modules are built and checked one by one.
    """
    where = str(header.path)
    _ensure_registered(desc)  # before the meta device context below: imports build nothing on it
    expected = {k: (e.dtype, e.shape) for k, e in header.tensors.items()}
    for alias, target in desc["aliases"].items():
        expected[alias] = expected[target]
    arch = desc["arch"]
    with _errors_in(where, "modules" if arch["kind"] == USER_KIND else "arch"), _budget(header), torch.device("meta"):
        if arch["kind"] != USER_KIND:
            model = build_arch(arch, device="meta")
            _replay_plans(model, desc.get("plans", []))
            restore_structure(model, desc)
            _compare(model.state_dict(), expected, where, arch, complete=True)
            return
        for name, spec in desc["modules"].items():
            module = build_module(spec, name)
            _attach_masks(module, desc["masks"], prefix=f"{name}.")
            _compare(module.state_dict(prefix=f"{name}."), expected, where, arch, complete=False)


def _ensure_registered(desc: dict) -> None:
    """Load the registry's sources when ``desc`` names what is not registered yet: an
    architecture kind, a module type (any ``"type"`` string in ``modules``, nested specs
    included), or plans to replay."""

    def types(value: Any):
        if isinstance(value, dict):
            if isinstance(value.get("type"), str):
                yield value["type"]
            for v in value.values():
                yield from types(v)
        elif isinstance(value, list):
            for v in value:
                yield from types(v)

    known = set(_MODULES) | {_type_name(c) for c in _CONTAINERS}
    kind = desc["arch"].get("kind")
    if (
        (kind != USER_KIND and kind not in _ARCHS)
        or (desc.get("plans") and not _PLAN_REPLAY)
        or any(t not in known for t in types(desc.get("modules", {})))
    ):
        load_sources()


@contextlib.contextmanager
def _budget(header: Header):
    """Fail construction that registers more tensor elements or modules than the file's own
    tensors could account for (4x their elements + 2^26 for non-persistent buffers; 16 modules per tensor)."""
    max_elements = 4 * header.total_elements + 2**26
    max_modules = 16 * len(header.tensors) + 4096
    me, seen = threading.get_ident(), {"elements": 0, "modules": 0}

    def count(kind: str, n: int, limit: int) -> None:
        if threading.get_ident() != me:  # another thread building its own model
            return
        seen[kind] += n
        if seen[kind] > limit:
            raise NetslimError(
                f"the description (fields 'arch', 'modules') asks for more than {limit} {kind}, "
                f"more than the file's {len(header.tensors)} tensors ({header.total_elements} "
                "elements) account for"
            )

    def on_tensor(module, name, t):
        if t is not None:
            count("elements", t.numel(), max_elements)

    def on_module(module, name, sub):
        count("modules", 1, max_modules)

    handles = [
        _torch_module.register_module_parameter_registration_hook(on_tensor),
        _torch_module.register_module_buffer_registration_hook(on_tensor),
        _torch_module.register_module_module_registration_hook(on_module),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _compare(state: dict, expected: dict, where: str, arch: dict, complete: bool) -> None:
    what = f"{where} does not match its architecture ({arch.get('name') or arch.get('class')})"
    for k, t in state.items():
        if k not in expected:
            raise NetslimError(f"{what}: missing tensor {shown(k)}.")
        dtype, shape = expected[k]
        if tuple(t.shape) != shape:
            raise NetslimError(
                f"{what}: tensor {shown(k)} is {list(shape)} in the file; the description builds {list(t.shape)}."
            )
        stored = DTYPES[dtype][0]
        if (stored.is_floating_point != t.dtype.is_floating_point) or (
            not t.dtype.is_floating_point and stored != t.dtype
        ):
            raise NetslimError(f"{what}: tensor {shown(k)} is {dtype} in the file; the layer holds {t.dtype}.")
    extra = sorted(set(expected) - set(state)) if complete else []
    if extra:
        raise NetslimError(f"{what}: unexpected tensor {shown(extra[0])}.")


def restore_structure(model: nn.Module, desc: dict) -> None:
    """Replace changed modules, re-attach masks and record the step history as the description says."""
    for name, spec in desc.get("modules", {}).items():
        replace_module(model, name, build_module(spec, name))
    _attach_masks(model, desc.get("masks", []))
    if desc.get("history"):
        StepHistory.from_json(desc["history"]).store(model)


def _attach_masks(model: nn.Module, masks: list[str], prefix: str = "") -> None:
    """Mask parametrizations on the parameters ``masks`` names (only those under ``prefix``,
    relative to it: ``model`` is then the module at that prefix)."""
    for i, qual in enumerate(masks):
        if not qual.startswith(prefix):
            continue
        mname, _, pname = qual[len(prefix) :].rpartition(".")
        try:
            module = get_module(model, mname)
        except NetslimError as e:
            raise NetslimError(f"field 'masks[{i}]': {e}") from None
        if pname not in dict(module.named_parameters(recurse=False)):
            raise NetslimError(f"field 'masks[{i}]': {shown(qual)} is not a parameter of the model.")
        parametrize.register_parametrization(
            module, pname, Mask(torch.ones_like(getattr(module, pname), dtype=torch.bool))
        )


def load_state(model: nn.Module, state: dict, desc: dict, where: str) -> None:
    for alias, target in desc.get("aliases", {}).items():
        if target in state:
            state[alias] = state[target]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except NetslimError as e:  # a layer's own load-time check (sparse indices, packed code shapes)
        raise NetslimError(str(e) if where in str(e) else f"{where}: {e}") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:4])
        raise NetslimError(
            f"{where} does not match its architecture ({desc['arch'].get('name') or desc['arch'].get('class')}): {detail}"
        ) from None
    tie = getattr(model, "tie_weights", None)
    # Tied tensors were restored from one stored copy above; re-tying is only for the plain
    # case: a mask parametrization on a tied weight (magnitude on an LM head) breaks
    # transformers' tie_weights, and the aliased values are already the same.
    if callable(tie) and desc.get("aliases") and not desc.get("masks"):
        tie()
