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
* ``info``: free-form facts (task, metrics, recipe) for reports.

Other container formats (e.g. the Huffman-coded ``.nsz``) plug in with
:func:`register_loader` keyed by their magic bytes.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from .errors import NetslimError, unknown_name
from .masks import Mask, masked_params
from .surgery import get_module, replace_module

FORMAT_VERSION = 1


# --------------------------------------------------------------------------- archs
@dataclass(frozen=True)
class ArchKind:
    describe: Callable[[nn.Module], dict | None]  # None: not this kind
    build: Callable[[dict], nn.Module]


_ARCHS: dict[str, ArchKind] = {}


def register_arch(kind: str, describe: Callable, build: Callable) -> None:
    _ARCHS[kind] = ArchKind(describe, build)


USER_KIND = "user"
Base = Union[nn.Module, Callable[[], nn.Module], None]  # a user model's fresh instance, or its factory


def describe_arch(model: nn.Module) -> dict:
    _ensure_archs()
    for kind, a in _ARCHS.items():
        desc = a.describe(model)
        if desc is not None:
            return {"kind": kind, **desc}
    # A class netslim cannot build (the user's own): named, never imported on load.
    cls = parametrize.type_before_parametrizations(model)
    return {"kind": USER_KIND, "class": cls.__qualname__, "ref": getattr(model, "netslim_ref", None)}


def build_arch(arch: dict, device: str | torch.device = "cpu", base: Base = None) -> nn.Module:
    """The base model of ``arch``; a user model (kind "user") is ``base`` (an instance or a factory)."""
    _ensure_archs()
    kind = arch.get("kind")
    if kind == USER_KIND:
        return _user_base(arch, base)
    if kind not in _ARCHS:
        raise unknown_name("architecture kind", kind, [*_ARCHS, USER_KIND])
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


def _ensure_archs() -> None:
    import netslim.models  # noqa: F401  (registers 'zoo' and, lazily, 'hf')
    from netslim.core.config import load_families

    load_families()  # module types and loaders of every technique family


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
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size), "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _bn(m):
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
            "affine": m.affine, "track_running_stats": m.track_running_stats}


register_module(nn.Linear, _lin)
register_module(nn.Conv1d, _conv)
register_module(nn.Conv2d, _conv)
register_module(nn.BatchNorm1d, _bn)
register_module(nn.BatchNorm2d, _bn)
register_module(nn.LayerNorm, lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                                         "elementwise_affine": m.elementwise_affine,
                                         "bias": m.bias is not None})
register_module(nn.Embedding, lambda m: {"num_embeddings": m.num_embeddings,
                                         "embedding_dim": m.embedding_dim,
                                         "padding_idx": m.padding_idx})
register_module(nn.Dropout, lambda m: {"p": m.p})
for _cls in (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.SiLU, nn.Sigmoid, nn.Tanh):
    register_module(_cls, lambda m: {"inplace": bool(getattr(m, "inplace", False))} if hasattr(m, "inplace") else {})
for _cls in (nn.GELU, nn.Identity, nn.Flatten):
    register_module(_cls, lambda m: {})


def module_spec(module: nn.Module, where: str = "") -> dict:
    """JSON spec that rebuilds ``module`` (structure only, not weights)."""
    name = _type_name(type(module))
    if isinstance(module, _CONTAINERS):
        return {"type": name, "children": {k: module_spec(c, f"{where}.{k}") for k, c in module.named_children()}}
    if name not in _MODULES:
        raise NetslimError(
            f"Cannot save module {where or '(root)'!r} of type {type(module).__name__}: it is not a "
            "registered module type (netslim.core.serialize.register_module)."
        )
    return {"type": name, "kwargs": _MODULES[name].to_kwargs(module)}


def build_module(spec: dict, where: str = "") -> nn.Module:
    name = spec.get("type")
    if name in (_type_name(c) for c in _CONTAINERS):
        children = {k: build_module(s, f"{where}.{k}") for k, s in spec.get("children", {}).items()}
        if name == _type_name(nn.ModuleDict):
            return nn.ModuleDict(children)
        if name == _type_name(nn.Sequential):
            return nn.Sequential(OrderedDict(children))
        return nn.ModuleList(list(children.values()))
    if name not in _MODULES:
        raise unknown_name(f"module type (at {where!r})", name, _MODULES)
    return _MODULES[name].from_kwargs(spec["kwargs"])


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


def describe(model: nn.Module, info: dict | None = None) -> dict:
    """The JSON description stored beside the tensors."""
    arch = describe_arch(model)
    if arch["kind"] == USER_KIND:
        modules = _leaf_specs(model)
    else:
        with torch.device("meta"):
            base = build_arch(arch, device="meta")
        modules = _changed_modules(model, base)
    return {
        "format": "netslim", "version": FORMAT_VERSION, "arch": arch,
        "modules": modules, "masks": masked_params(model), "info": info or {},
    }


def save(model: nn.Module, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write ``model`` to ``path`` (safetensors + JSON description), atomically."""
    path = Path(path)
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
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"netslim": json.dumps(desc)}))
    return path


_LOADERS: dict[bytes, Callable[..., nn.Module]] = {}


def register_loader(magic: bytes, fn: Callable[..., nn.Module]) -> None:
    """Another artifact format, recognised by the first bytes of the file: ``fn(path, base=None)``."""
    _LOADERS[magic] = fn


def read_description(path: str | os.PathLike) -> dict:
    """The JSON description of a safetensors artifact, without loading tensors."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise NetslimError(f"{path} is not a readable netslim artifact: {e}.") from None
    if "netslim" not in meta:
        raise NetslimError(f"{path} is a safetensors file without a netslim description; save it with netslim.save.")
    desc = json.loads(meta["netslim"])
    if desc.get("version", 0) > FORMAT_VERSION:
        raise NetslimError(
            f"{path} was written by a newer netslim (format {desc['version']}); this one reads <= {FORMAT_VERSION}."
        )
    return desc


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NetslimError(f"Artifact {str(path)!r} does not exist.")
    return path


def load(path: str | os.PathLike, device: str | torch.device = "cpu", *, base: Base = None) -> nn.Module:
    """Rebuild the module saved at ``path``. Never unpickles anything.

    ``base``: for a model of the user's own class, a fresh instance (or a function that makes
    one); the stored structure (shrunk, quantized, sparse layers) is replayed onto it.
    """
    path = _existing(path)
    _ensure_archs()
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, fn in _LOADERS.items():
        if head.startswith(magic):
            return fn(path, base=base).to(device)
    desc = read_description(path)
    model = build_arch(desc["arch"], base=base)
    restore_structure(model, desc)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise NetslimError(f"{path}: cannot read tensors: {e}.") from None
    load_state(model, state, desc, where=str(path))
    model.eval()
    return model.to(device)


def restore_structure(model: nn.Module, desc: dict) -> None:
    """Replace changed modules and re-attach masks as the description says."""
    for name, spec in desc.get("modules", {}).items():
        replace_module(model, name, build_module(spec, name))
    for qual in desc.get("masks", []):
        mname, _, pname = qual.rpartition(".")
        module = get_module(model, mname)
        parametrize.register_parametrization(module, pname, Mask(torch.ones_like(getattr(module, pname), dtype=torch.bool)))


def load_state(model: nn.Module, state: dict, desc: dict, where: str) -> None:
    for alias, target in desc.get("aliases", {}).items():
        if target in state:
            state[alias] = state[target]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:4])
        raise NetslimError(
            f"{where} does not match its architecture ({desc['arch'].get('name') or desc['arch'].get('class')}): {detail}"
        ) from None
    tie = getattr(model, "tie_weights", None)
    if callable(tie) and desc.get("aliases"):
        tie()
