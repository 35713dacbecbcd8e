"""Where a model comes from: one resolver for everything ``--model`` / ``model=`` accepts.

:func:`open_model` takes

* an ``nn.Module`` (the Python API): used as it is;
* a zoo name (``resnet20``: the trained checkpoint from the cache; ``minilm``: packaged weights);
* a netslim artifact (``.safetensors`` with a netslim description, or ``.nsz``);
* an ``.onnx`` file, run by ONNX Runtime (:class:`netslim.models.onnx_model.OnnxModel`);
* a llama.cpp ``.gguf`` file of a Llama-family LM (:func:`open_gguf`);
* a Hugging Face model directory (``config.json`` + safetensors, as ``save_pretrained``
  writes it): loaded offline with the class named in ``config.architectures``; its tokenizer
  / image processor come from the same directory; a compressed-tensors directory (int4 / int8
  from llm-compressor or ``format: hf``) gets netslim's own packed layers with the file's codes
  (:func:`netslim.export.compressed_dir.open_compressed_dir`);
* ``path/to/file.py:factory``: the user's own code, imported because the user named it on
  the command line or in the call, plus optional weights (safetensors, or a ``.pt`` state
  dict read with ``torch.load(weights_only=True)``). Artifacts never name code to import:
  loading one of a user model needs ``base=`` (see :func:`netslim.core.serialize.load`).

It returns an :class:`OpenedModel`: the model, a short name for reports, the default
dataset (zoo models only), the tokenizer / processor ``source`` and ``base`` (what
``netslim.load`` needs to rebuild artifacts of this model: a factory for user models).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.serialize import load, read_description, read_info

log = logging.getLogger(__name__)
_FACTORY = re.compile(r"^(?P<file>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class OpenedModel:
    model: nn.Module
    name: str  # for reports: zoo name, directory or file name
    dataset: str | None = None  # default dataset (zoo models)
    source: str | None = None  # tokenizer / image processor: built-in name or HF directory
    base: Callable[[], nn.Module] | None = None  # fresh base for artifacts of user models
    info: dict[str, Any] = field(default_factory=dict)  # the artifact's stored info, when opened from one


def is_factory_ref(ref: str) -> bool:
    return bool(_FACTORY.match(str(ref)))


def open_model(ref: Any, *, weights: str | Path | None = None, base: Any = None, verify: bool = True) -> OpenedModel:
    """Resolve ``ref`` (see the module docstring). ``base``: for an artifact of a user model,
    its fresh instance, a factory, or a ``file.py:factory`` reference. ``verify``: check the
    SHA-256 checksums of netslim artifacts (``--no-verify`` turns it off)."""
    if isinstance(ref, nn.Module):
        return _module(ref, weights)
    if not isinstance(ref, (str, Path)):
        raise NetslimError(
            f"A model is an nn.Module, a zoo name, an artifact path, a Hugging Face directory or "
            f"file.py:factory; got {type(ref).__name__}."
        )
    text = str(ref)
    if is_factory_ref(text):
        return _factory(text, weights, verify)
    if weights is not None:
        raise NetslimError(f"--weights goes with --model path/to/file.py:factory; got --model {text[:200]!r}.")
    path = Path(text)
    if path.is_dir():
        return open_hf_dir(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return open_gguf(path)
    if path.is_file():
        return _artifact(path, base, verify)
    if path.suffix or "/" in text:
        raise NetslimError(
            f"Model {text[:200]!r} does not exist: give a zoo name, an artifact file, a Hugging Face "
            "model directory or path/to/file.py:factory."
        )
    return _zoo(text)


# ------------------------------------------------------------------------------ kinds
def _zoo(name: str) -> OpenedModel:
    from netslim.core.cache import checkpoint_path
    from netslim.models import build_model, model_entry

    try:
        entry = model_entry(name)
    except NetslimError as e:
        raise NetslimError(
            f"{e} A model may also be an artifact file, a Hugging Face model directory or path/to/file.py:factory."
        ) from None
    source = name if entry.pretrained else None
    if entry.pretrained:
        return OpenedModel(build_model(name), name, entry.dataset, source)
    ckpt = checkpoint_path(name)
    if not ckpt.is_file():
        raise NetslimError(
            f"No trained checkpoint for model {name!r} at {ckpt}; run `netslim train {name}` first "
            "(or pass an artifact path with --model)."
        )
    return OpenedModel(load(ckpt), name, entry.dataset)


def _artifact(path: Path, base: Any, verify: bool = True) -> OpenedModel:
    info: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        desc = read_description(path, verify=verify)
        info = desc.get("info", {})
        arch = desc.get("arch", {})
    elif path.suffix == ".nsz":
        info, arch = read_info(path), {}  # the format's own reader (codec's), found by magic
    elif path.suffix.lower() == ".onnx":  # run by ONNX Runtime (netslim.models.onnx_model)
        from netslim.models.onnx_model import open_onnx

        return open_onnx(path, _base_factory(base))
    else:
        raise NetslimError(
            f"{path}: not a model file netslim reads (.safetensors artifact, .nsz, .gguf, .onnx, a "
            "Hugging Face directory or path/to/file.py:factory)."
        )
    factory = _base_factory(base)
    model = load(path, base=factory, verify=verify)
    source = info.get("source") or (arch.get("source") if isinstance(arch.get("source"), str) else None)
    return OpenedModel(model, info.get("model", path.stem), info.get("dataset"), source, factory, info)


def open_gguf(path: Path) -> OpenedModel:
    """A llama.cpp GGUF file of a Llama-family LM (netslim.models.gguf_io): Q4_0 / Q8_0 layers as
    netslim packed layers with the file's codes, the rest dense fp32; the tokenizer is the file's."""
    from netslim.models.gguf_io import load_gguf_model

    path = path.resolve()
    return OpenedModel(load_gguf_model(path), path.name, None, str(path))


def _base_factory(base: Any) -> Callable[[], nn.Module] | None:
    if base is None:
        return None
    if isinstance(base, nn.Module):
        return lambda: copy.deepcopy(base)
    if isinstance(base, (str, Path)):
        if not is_factory_ref(str(base)):
            raise NetslimError(f"base must be path/to/file.py:factory; got {str(base)[:200]!r}.")
        file, name = _split_factory(str(base))
        return lambda: _call_factory(file, name)
    if callable(base):
        return base
    raise NetslimError(f"base must be an nn.Module, a factory or file.py:factory; got {type(base).__name__}.")


def _module(model: nn.Module, weights) -> OpenedModel:
    if weights is not None:
        model = load_weights(model, weights)
    source = module_source(model)
    from netslim.core.serialize import USER_KIND, describe_arch

    base = None
    if describe_arch(model)["kind"] == USER_KIND:
        snapshot = copy.deepcopy(model)  # the base of its artifacts: a class netslim cannot build
        base = lambda: copy.deepcopy(snapshot)  # noqa: E731
    return OpenedModel(model, type(model).__name__, None, source, base)


def module_source(model: nn.Module) -> str | None:
    """Where a module's tokenizer / processor come from: netslim's record, else the directory
    an HF model was loaded from by the user (``from_pretrained(dir)``)."""
    source = getattr(model, "netslim_source", None)
    path = getattr(model, "name_or_path", None)
    if source is None and path and Path(str(path)).is_dir():
        source = str(Path(str(path)).resolve())
        model.netslim_source = source
    return source


# ------------------------------------------------------------------- user factories
def _split_factory(ref: str) -> tuple[Path, str]:
    m = _FACTORY.match(ref)
    file, name = Path(m["file"]), m["name"]
    if not file.is_file():
        raise NetslimError(
            f"Model file {str(file)!r} (from {ref!r}) does not exist; give path/to/file.py:function "
            "with the path of your model's .py file (relative to the current directory, or absolute)."
        )
    return file.resolve(), name


def _call_factory(file: Path, name: str) -> nn.Module:
    # A unique module name per file: two users' model.py files never shadow each other.
    mod_name = "netslim_user_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    module = sys.modules.get(mod_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's code: report it as bad input, one line
            del sys.modules[mod_name]
            raise NetslimError(f"Importing {file} failed: {type(e).__name__}: {str(e)[:200]}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        names = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise NetslimError(f"{file} has no function {name!r}; callables there: {', '.join(names[:12]) or '(none)'}.")
    try:
        model = fn()
    except Exception as e:
        raise NetslimError(f"{file}:{name}() failed: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(model, nn.Module):
        raise NetslimError(f"{file}:{name}() must return a torch.nn.Module; it returned {type(model).__name__}.")
    return model


def _factory(ref: str, weights, verify: bool = True) -> OpenedModel:
    file, name = _split_factory(ref)
    model = _call_factory(file, name)
    info: dict[str, Any] = {}
    if weights is not None:
        model = load_weights(model, weights, verify=verify)
        if Path(weights).suffix == ".safetensors" and _is_netslim_artifact(Path(weights)):
            info = read_description(weights, verify=verify).get("info", {})  # e.g. the data it was trained on
    model.netslim_ref = f"{file}:{name}"
    return OpenedModel(model.eval(), f"{file.stem}:{name}", None, None, lambda: _call_factory(file, name), info)


def load_weights(model: nn.Module, weights: str | Path, *, verify: bool = True) -> nn.Module:
    """``model`` with the weights of file ``weights``: safetensors, a state dict read with
    ``torch.load(weights_only=True)``, or a netslim artifact of this model's class (whose stored
    structure, e.g. pruned layers, is replayed onto ``model``)."""
    path = Path(weights)
    if not path.is_file():
        raise NetslimError(
            f"Weights file {str(path)!r} does not exist; --weights takes a .safetensors file, a "
            "torch.save'd state dict (.pt) or a netslim artifact of this model."
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            if _is_netslim_artifact(path):
                return load(path, base=model, verify=verify)
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise NetslimError(f"{path}: not a readable safetensors file: {str(e)[:200]}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a bad or unsafe file
            raise NetslimError(
                f"Weights {path}: torch.load(weights_only=True) cannot read it ({_load_reason(e)}); {_SAVE_STATE}."
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise NetslimError(
                f"Weights {path}: expected a state dict (parameter name -> tensor); got "
                f"{type(state).__name__} holding other values; {_SAVE_STATE}."
            )
    _load_strict(model, state, path)
    return model


_SAVE_STATE = "save them with torch.save(model.state_dict(), path) or as .safetensors"


def _load_reason(err: BaseException) -> str:
    """The useful line of a ``torch.load`` error (its first lines are advice about ``weights_only``)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        tail = text.split("WeightsUnpickler error:", 1)[1]
        line = next((ln.strip() for ln in tail.splitlines() if ln.strip()), "")
        text = line.split(" Please use", 1)[0]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(err).__name__
    return f"{type(err).__name__}: {line[:200]}"


def _is_netslim_artifact(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return "netslim" in (f.metadata() or {})


def _load_strict(model: nn.Module, state: dict, path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3})" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(
                f"unexpected {', '.join(unexpected[:3])}"
                + (f" (+{len(unexpected) - 3})" if len(unexpected) > 3 else "")
            )
        for k in sorted(shapes)[:3]:
            parts.append(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise NetslimError(
            f"Weights {path} do not match the model ({type(model).__name__}): {'; '.join(parts)}; "
            "give weights saved from this model's class (same layers and sizes)."
        )
    model.load_state_dict(state, strict=True)


# -------------------------------------------------------------- Hugging Face directories
def hf_dir_config(path: Path) -> dict:
    """``config.json`` of a model directory, checked: a JSON object naming one architecture."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise NetslimError(
            f"{path} is not a Hugging Face model directory: it has no config.json "
            "(write one with model.save_pretrained(dir))."
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NetslimError(f"{cfg_path}: not valid JSON ({e}).") from None
    if not isinstance(cfg, dict):
        raise NetslimError(f"{cfg_path}: expected a JSON object; got {type(cfg).__name__}.")
    archs = cfg.get("architectures")
    if not (isinstance(archs, list) and archs and isinstance(archs[0], str)):
        raise NetslimError(f"{cfg_path} names no model class in 'architectures' (e.g. [\"LlamaForCausalLM\"]).")
    return cfg


def open_hf_dir(path: Path) -> OpenedModel:
    """A ``save_pretrained`` directory, loaded offline in fp32 with its own class; its weights
    must cover the model exactly (transformers would initialise missing ones at random)."""
    from safetensors import SafetensorError

    from netslim.models.hf_arch import finish_hf
    from netslim.models.hf_offline import quiet_loading

    path = path.resolve()
    cfg = hf_dir_config(path)
    cls = _dir_class(path, cfg["architectures"][0])
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {', '.join(others[:3])}: netslim reads weights from safetensors only)" if others else ""
        raise NetslimError(
            f"{path} has no weights: expected model.safetensors or a sharded "
            f"model.safetensors.index.json{hint}; write them with model.save_pretrained(dir)."
        )
    from netslim.export.compressed_dir import is_compressed_tensors, open_compressed_dir

    if is_compressed_tensors(cfg):  # llm-compressor's or format: hf's int4 / int8: into netslim's packed layers
        with quiet_loading(), _transformers_errors_only():
            model = open_compressed_dir(path, cfg)
        return OpenedModel(finish_hf(model, str(path)), path.name, None, str(path))
    try:
        with quiet_loading(), _transformers_errors_only():
            model, loading = cls.from_pretrained(
                str(path),
                local_files_only=True,
                dtype=torch.float32,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise NetslimError(
            f"{path}: transformers cannot load it as {cls.__name__}: {why}; re-save it with model.save_pretrained(dir)."
        ) from None
    _check_loading(path, cls.__name__, loading)
    model = finish_hf(model, str(path))
    return OpenedModel(model, path.name, None, str(path))


def _dir_class(path: Path, name: str) -> type:
    from netslim.models.hf_arch import hf_class

    try:
        return hf_class(name)
    except NetslimError as e:
        raise NetslimError(
            f"{path / 'config.json'}: {str(e).rstrip('.')}; fix 'architectures' or install a "
            "transformers version that has this class."
        ) from None


@contextlib.contextmanager
def _transformers_errors_only():
    """transformers' loading report (missing / unexpected keys) is not printed: :func:`_check_loading`
    turns what matters in it into one error."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# Task heads put on a pretrained body (a new classifier to fine-tune, an unused pooler): their
# absence is what transformers' own "newly initialized" warning is about, not a broken file.
_HEAD_PREFIXES = ("classifier.", "score.", "pooler.", "qa_outputs.", "bert.pooler.", "roberta.pooler.")


def _check_loading(path: Path, cls_name: str, loading: dict) -> None:
    """An error when weights were missing or of another shape (extra tensors in the file are ignored);
    a missing task head / pooler is initialised at random, with a warning that names it."""
    missing = sorted(loading.get("missing_keys") or ())
    heads = [k for k in missing if k.startswith(_HEAD_PREFIXES) or ".pooler." in k]
    if heads:
        log.warning(
            "%s: %s not in the weights; initialised at random (train it: netslim train %s --data ...)",
            path,
            ", ".join(heads[:4]) + (f" (+{len(heads) - 4})" if len(heads) > 4 else ""),
            path,
        )
        missing = [k for k in missing if k not in heads]
    mismatched = sorted(loading.get("mismatched_keys") or ())
    errors = list(loading.get("error_msgs") or ())
    if not (missing or mismatched or errors):
        return
    parts = []
    if missing:
        more = f" (+{len(missing) - 3})" if len(missing) > 3 else ""
        parts.append(f"no tensor for {', '.join(missing[:3])}{more}")
    for key, file_shape, model_shape in mismatched[:3]:
        parts.append(f"{key}: file {tuple(file_shape)} vs config {tuple(model_shape)}")
    if errors:
        parts.append(str(errors[0]).strip().splitlines()[0][:200])
    raise NetslimError(
        f"{path}: the weights do not match config.json ({cls_name}): {'; '.join(parts)}; save model "
        "and config together with model.save_pretrained(dir)."
    )
