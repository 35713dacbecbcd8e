"""Parameter, non-zero and MAC counts, per layer and in total."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass
class LayerStats:
    name: str
    type: str
    shape: list[int]
    params: int
    nonzero: int
    bits: float      # storage bits per weight of the main tensor (32 for fp32)
    macs: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    return sum(t.numel() for t in _tensors(model))


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(t)) for t in _tensors(model))


def _tensors(model: nn.Module):
    """Effective parameters: masked tensors counted as their masked value; shared once."""
    seen = set()
    for mname, module in model.named_modules():
        if "parametrizations" in mname.split("."):
            continue  # originals and masks of a parametrization: counted through the owner
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in seen:
                seen.add(id(p))
                yield p.detach()
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                yield getattr(module, name).detach()
        for name, b in module.named_buffers(recurse=False):
            # Packed/quantized weights of later methods live in buffers named *weight*.
            if "weight" in name and id(b) not in seen:
                seen.add(id(b))
                yield b.detach()


# ----------------------------------------------------------------------- MACs
MacsFn = Callable[[nn.Module, tuple, Any], int]
_MAC_COUNTERS: dict[type, MacsFn] = {}


def register_macs(cls: type, fn: MacsFn) -> None:
    """MACs of one call of a module type: ``fn(module, inputs, output) -> int``."""
    _MAC_COUNTERS[cls] = fn


def _linear_macs(m, inputs, out) -> int:
    return int(out.numel() // out.shape[-1]) * m.in_features * m.out_features


def _conv_macs(m, inputs, out) -> int:
    # Each output element: (in_channels / groups) * prod(kernel) multiply-adds.
    k = 1
    for s in m.kernel_size:
        k *= s
    return int(out.numel()) * (m.in_channels // m.groups) * k


register_macs(nn.Linear, _linear_macs)
register_macs(nn.Conv1d, _conv_macs)
register_macs(nn.Conv2d, _conv_macs)


def _counter_for(module: nn.Module) -> MacsFn | None:
    for cls in type(module).__mro__:
        if cls in _MAC_COUNTERS:
            return _MAC_COUNTERS[cls]
    return None


@torch.no_grad()
def macs_per_layer(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """MACs of each counted module for one forward pass on ``example_inputs``."""
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        fn = _counter_for(module)
        if fn is None:
            continue

        def hook(m, inputs, output, name=name, fn=fn):
            out = output[0] if isinstance(output, tuple) else output
            counts[name] = counts.get(name, 0) + fn(m, inputs, out)

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(**example_inputs) if isinstance(example_inputs, dict) else model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return counts


def _weight_bits(module: nn.Module) -> float:
    bits = getattr(module, "weight_bits", None)  # quantized modules report their own
    if bits is not None:
        return float(bits)
    w = getattr(module, "weight", None)
    return float(torch.finfo(w.dtype).bits if w is not None and w.is_floating_point() else 32)


def layer_table(model: nn.Module, example_inputs: Any) -> list[LayerStats]:
    """One row per module that holds a weight (or is counted for MACs)."""
    macs = macs_per_layer(model, example_inputs)
    rows = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) and name not in macs:
            continue
        if ".parametrizations." in name:
            continue
        own = [p.detach() for p in module.parameters(recurse=False)]
        if parametrize.is_parametrized(module):  # masked tensors count as their masked value
            own += [getattr(module, n).detach() for n in module.parametrizations]
        own += [b for n, b in module.named_buffers(recurse=False) if "weight" in n]
        rows.append(LayerStats(
            name=name, type=parametrize.type_before_parametrizations(module).__name__,
            shape=list(w.shape) if isinstance(w, torch.Tensor) else [],
            params=sum(t.numel() for t in own),
            nonzero=sum(int(torch.count_nonzero(t)) for t in own),
            bits=_weight_bits(module), macs=int(macs.get(name, 0)),
        ))
    return rows
