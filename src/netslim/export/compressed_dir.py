"""A compressed-tensors model directory -> a netslim model (``--model DIR``, :func:`open_compressed_dir`).

The directory's ``config.json`` names the transformers class and carries the
``quantization_config``; every layer a config group targets becomes netslim's own
:class:`QuantizedLinear` / :class:`QuantizedEmbedding` / :class:`DynamicInt8Linear` holding
the file's very codes, scales and zero points (:func:`netslim.export.compressed.read_layer`)
- except a layer whose scales fp16 cannot hold (llm-compressor keeps an fp32 model's scales in
fp32; netslim's packed layers store fp16): it opens as a float layer holding ``(q - zero) *
scale`` exactly, with a warning (dense in memory) - every other tensor is loaded as it is, so ``netslim eval / bench / inspect`` measure the model
as stored and further recipe steps run on it. Nothing read is trusted: the schemes are checked
before any tensor is read (:func:`~netslim.export.compressed.parse_config`), each tensor against
the shape and dtype its layer needs, ``re:`` targets against patterns that could backtrack for
long, shard names against the directory.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from netslim.core.errors import NetslimError, clip, shown
from netslim.core.surgery import get_module, replace_module
from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear

from .compressed import QUANT_METHOD, SUFFIXES, Group, parse_config, read_layer

log = logging.getLogger(__name__)


def is_compressed_tensors(cfg: dict) -> bool:
    q = cfg.get("quantization_config")
    return isinstance(q, dict) and q.get("quant_method") == QUANT_METHOD


def _matches(name: str, module: nn.Module, target: str) -> bool:
    """compressed-tensors' rule: ``re:`` regex from the start of the name, else the exact module
    name or the name of a class in the module's MRO."""
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or any(c.__name__ == target for c in type(module).__mro__)


def match_targets(model: nn.Module, groups: list[Group], *, ignore: list[str], where: str) -> dict[str, Group]:
    """Linear / Embedding modules a group targets and ``ignore`` leaves (compressed-tensors
    quantizes no other type); a module two groups claim is an error."""
    out: dict[str, Group] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Embedding)) or any(_matches(name, module, t) for t in ignore):
            continue
        hits = [g for g in groups if any(_matches(name, module, t) for t in g.targets)]
        if len(hits) > 1:
            raise NetslimError(
                f"{where}: module {name!r} is targeted by config groups {hits[0].name!r} and {hits[1].name!r}."
            )
        if hits:
            out[name] = hits[0]
    return out


class DirTensors:
    """The tensors of a model directory (``model.safetensors`` or a sharded index), read on demand."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path, self._files, self.where = path, {}, {}
        index = path / "model.safetensors.index.json"
        if (path / "model.safetensors").is_file():
            names = ["model.safetensors"]
        else:
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
                raise NetslimError(f"{index}: not a safetensors index ({clip(str(e), 120)}).") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise NetslimError(f"{index}: 'weight_map' must map tensor names to file names.")
            names = sorted(set(weight_map.values()))
        for name in names:
            file = (path / name).resolve()
            if file.parent != path.resolve() or not file.is_file():
                raise NetslimError(f"{path}: weight file {shown(name, 80)} is not a file in the directory.")
            try:
                handle = safe_open(str(file), framework="pt")
            except (SafetensorError, OSError) as e:
                raise NetslimError(f"{file}: not a readable safetensors file ({clip(str(e), 120)}).") from None
            self._files[name] = handle
            for key in handle.keys():
                self.where[key] = name

    def get(self, key: str) -> torch.Tensor | None:
        name = self.where.get(key)
        return None if name is None else self._files[name].get_tensor(key)


def open_compressed_dir(path: Path, cfg: dict) -> nn.Module:
    """The model of a compressed-tensors directory with netslim's own quantized layers (see the
    module docstring); ``cfg`` is its checked config.json. Every other tensor is loaded as is."""
    from netslim.models.hf_arch import hf_class, safe_attn_config

    where = str(path / "config.json")
    groups, ignore = parse_config(cfg["quantization_config"], where)
    cls = hf_class(cfg["architectures"][0])
    plain = {k: v for k, v in cfg.items() if k not in ("quantization_config", "dtype", "torch_dtype")}
    model = cls(cls.config_class.from_dict(safe_attn_config(plain))).float().eval()  # weights come below
    files = DirTensors(path)
    targets = match_targets(model, groups, ignore=ignore, where=where)
    if not targets:
        raise NetslimError(
            f"{where}: no Linear or Embedding layer of {cls.__name__} matches the quantization config's targets."
        )
    floats = []
    for name, group in targets.items():
        get = lambda local, n=name: files.get(f"{n}.{local}")  # noqa: E731
        layer = read_layer(get_module(model, name), group, get=get, where=f"{path}: layer {name!r}")
        replace_module(model, name, layer)
        if getattr(layer, "netslim_float_scales", None):
            floats.append(name)
    if floats:
        log.warning(
            "%s: %d of %d quantized layers (e.g. %r) have %s scales that are not fp16 values, which netslim's "
            "packed layers store: loaded as exact float weights (dense in memory)",
            path,
            len(floats),
            len(targets),
            floats[0],
            get_module(model, floats[0]).netslim_float_scales,
        )
    _load_dense(model, files, set(targets), path)
    return model


def _load_dense(model: nn.Module, files: DirTensors, quantized: set[str], path: Path) -> None:
    state = {}
    own = model.state_dict()
    for key, t in own.items():
        owner = key.rpartition(".")[0]
        if owner in quantized:
            continue
        got = files.get(key)
        if got is None:
            continue
        if tuple(got.shape) != tuple(t.shape) or got.is_floating_point() != t.is_floating_point():
            raise NetslimError(
                f"{path}: tensor {key!r} is {str(got.dtype).replace('torch.', '')} "
                f"{list(got.shape)}; the config builds {list(t.shape)}."
            )
        state[key] = got.to(t.dtype)
    stray = sorted(k for k in files.where if k.rpartition(".")[2] in SUFFIXES and k.rpartition(".")[0] not in quantized)
    if stray:
        raise NetslimError(f"{path}: tensor {stray[0]!r} belongs to a quantized layer the config does not target.")
    model.load_state_dict(state, strict=False)
    missing = [k for k in own if k not in state and k.rpartition(".")[0] not in quantized]
    missing = _tie_output(model, missing)
    if missing:
        more = f" (+{len(missing) - 3})" if len(missing) > 3 else ""
        raise NetslimError(f"{path}: the weights do not cover the model: no tensor for {', '.join(missing[:3])}{more}.")


def _tie_output(model: nn.Module, missing: list[str]) -> list[str]:
    """With tied embeddings the file holds the input embedding only: the LM head is the same
    weight (for a quantized embedding: a QuantizedLinear with copies of its codes, scales and
    zeros - separate buffers, as netslim's own weight_only makes them, so that netslim.load
    never re-ties a weight transformers no longer finds)."""
    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        return missing
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    out_name = names.get(id(out))
    if out_name is None or f"{out_name}.weight" not in missing:
        return missing
    if isinstance(inp, QuantizedEmbedding):
        head = QuantizedLinear(
            inp.embedding_dim, inp.num_embeddings, inp.bits, inp.group_size, bias=getattr(out, "bias", None) is not None
        )
        head.set_codes(inp.codes(), inp.scales, inp.zeros)
        if out.bias is not None:
            head.bias = out.bias
        replace_module(model, out_name, head)
    else:
        out.weight = inp.weight
    return [k for k in missing if k != f"{out_name}.weight"]
