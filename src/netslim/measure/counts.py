"""Parameter, non-zero and MAC counts, per layer and in total."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from netslim.core.errors import NetslimError
from netslim.core.hooks import eval_mode

from .storage import stored_modules


@dataclass
class LayerStats:
    """One layer as stored (see :mod:`netslim.measure.storage` for every definition)."""

    name: str
    type: str
    shape: list[int]  # logical shape of the main weight
    params: int  # elements (weights at their logical shape + biases), never packed bytes
    nonzero: int  # non-zeros among ``params``
    bits: float  # bits of one stored weight value (fp32 32, bf16 16, int4 4, shared log2 k)
    macs: int
    kind: str = ""  # storage kind: "dense fp32", "masked fp32", "sparse CSR fp32", "packed int4", ...
    sparsity: float = 0.0  # zeros of the main weight / its elements
    stored_bytes: int = 0  # bytes of every tensor the layer saves (codes, indices, scales, masks, bias)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    """Parameters as elements (an int4 or CSR layer counts its logical weight), tied once."""
    return sum(s.params for _, _, s in stored_modules(model))


def count_nonzero(model: nn.Module) -> int:
    return sum(s.nonzero for _, _, s in stored_modules(model))


def stored_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model saves (the file adds its header / description)."""
    return sum(s.stored_bytes for _, _, s in stored_modules(model))


# ----------------------------------------------------------------------- MACs
MacsFn = Callable[[nn.Module, tuple, Any], int]
_MAC_COUNTERS: dict[type, MacsFn] = {}


def register_macs(cls: type, fn: MacsFn) -> None:
    """MACs of one call of a module type: ``fn(module, inputs, output) -> int``."""
    _MAC_COUNTERS[cls] = fn


def linear_macs(m, inputs, out) -> int:
    """MACs of a Linear-shaped module (``in_features``, ``out_features``): every output row
    costs in x out multiply-adds."""
    return int(out.numel() // out.shape[-1]) * m.in_features * m.out_features


def conv_macs(m, inputs, out) -> int:
    """MACs of a convolution-shaped module (``in_channels``, ``groups``, ``kernel_size``)."""
    # Each output element: (in_channels / groups) * prod(kernel) multiply-adds.
    k = 1
    for s in m.kernel_size:
        k *= s
    return int(out.numel()) * (m.in_channels // m.groups) * k


register_macs(nn.Linear, linear_macs)
register_macs(nn.Conv1d, conv_macs)
register_macs(nn.Conv2d, conv_macs)


def _counter_for(module: nn.Module) -> MacsFn | None:
    for cls in type(module).__mro__:
        if cls in _MAC_COUNTERS:
            return _MAC_COUNTERS[cls]
    return None


@torch.no_grad()
def macs_per_layer(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """MACs of each counted module for one forward pass on ``example_inputs``."""
    counts: dict[str, int] = {}

    def hook(name, fn):
        def count(m, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            counts[name] = counts.get(name, 0) + fn(m, inputs, out)

        return count

    counters = ((name, module, _counter_for(module)) for name, module in model.named_modules())
    with eval_mode(model, {module: hook(name, fn) for name, module, fn in counters if fn is not None}):
        model(**example_inputs) if isinstance(example_inputs, dict) else model(example_inputs)
    return counts


def layer_table(model: nn.Module, example_inputs: Any) -> list[LayerStats]:
    """One row per module that stores a weight (or is counted for MACs), from the tensors
    it actually holds: the rows of the report and of ``netslim inspect``."""
    macs = macs_per_layer(model, example_inputs)
    rows = (layer_row(name, module, s, macs) for name, module, s in stored_modules(model))
    return [row for row in rows if row is not None]


def layer_row(name: str, module: nn.Module, storage: Any, macs: dict[str, int]) -> LayerStats | None:
    """The row of ``module`` (``storage``: its :func:`~netslim.measure.storage.module_storage`,
    ``macs``: per layer name), or None for a module that neither stores a weight nor is counted for MACs."""
    if not storage.kind and name not in macs:
        return None
    return LayerStats(
        name=name,
        type=parametrize.type_before_parametrizations(module).__name__,
        shape=storage.shape,
        params=storage.params,
        nonzero=storage.nonzero,
        bits=storage.bits,
        macs=int(macs.get(name, 0)),
        kind=storage.kind,
        sparsity=storage.sparsity,
        stored_bytes=storage.stored_bytes,
    )


LOADABLE = (".safetensors", ".nsz")  # artifact formats netslim reads back (ONNX, GGUF, ... are not)


def artifact_layer_table(
    artifact: str | os.PathLike, example_inputs: Any, *, model: nn.Module | None = None, base: Any = None
) -> list[LayerStats]:
    """:func:`layer_table` of the model as stored in ``artifact`` (read back with
    ``netslim.load``, as ``netslim inspect`` does), so a sparse or Huffman-coded export is
    described by what the file holds, not by the in-memory model that wrote it. ``model``
    stands in for artifacts in formats netslim does not read; ``base`` as for ``load``."""
    path = Path(artifact)
    if path.is_file() and path.name.endswith(LOADABLE):
        from netslim.core.serialize import load

        return layer_table(load(path, base=base), example_inputs)
    if model is None:
        raise NetslimError(f"{path}: not a netslim artifact (.safetensors / .nsz) and no model given to describe.")
    return layer_table(model, example_inputs)
