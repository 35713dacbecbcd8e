"""Per-layer choice between the dense int8 kernel and the sparse int8 kernel, by measurement.

Used by the ``sparsify`` step (:mod:`netslim.prune.sparsify`) for static int8 layers
(:class:`~netslim.quantize.int8_modules.Int8Linear` / ``Int8Conv2d`` and their sparse
forms): each layer is timed as it runs in the model - its input shape, whether that input
arrives quantized (an int8 hand-off) and in which memory format, recorded from one forward
pass of an example - at every batch size, the dense int8 path (oneDNN) and the sparse int8
kernel interleaved (medians). The sparse kernel is kept only where it is at least
``min_speedup`` times faster at *every* batch size; the other layers stay dense int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim.core.hooks import hooked
from netslim.measure.latency import interleaved_latency

from . import sparse_int8
from .int8_modules import Int8Conv2d, Int8Linear, _Int8Base
from .sparse_lowbit import SparseInt8Conv2d, dense_static, sparse_static

STATIC_TYPES = (Int8Linear, Int8Conv2d)


@dataclass(frozen=True)
class SeenInput:
    shape: tuple[int, ...]  # one sample's shape
    quantized: bool
    channels_last: bool
    scale: float = 1.0
    zero: int = 0


@torch.inference_mode()
def record_inputs(model: nn.Module, names: list[str], example: Any) -> dict[str, SeenInput]:
    """How each named layer's input arrives in one forward pass of ``example`` (a batch)."""
    seen: dict[str, SeenInput] = {}

    def hook(name):
        def fn(mod, inp):
            x = inp[0]
            q = x.is_quantized
            cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            seen[name] = SeenInput(
                tuple(x.shape[1:]), q, cl, float(x.q_scale()) if q else 1.0, int(x.q_zero_point()) if q else 0
            )

        return fn

    with hooked({n: hook(n) for n in names}, root=model, kind="pre"):
        model(example)
    return seen


def timing_input(layer: _Int8Base, seen: SeenInput, batch: int) -> torch.Tensor:
    """A random input of ``batch`` samples in the form ``layer`` gets it in the model."""
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *seen.shape, generator=g).abs()  # mostly post-ReLU activations
    if seen.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not seen.quantized:
        return x
    return torch.quantize_per_tensor(x, seen.scale, seen.zero, torch.quint8)


def unsupported(layer: _Int8Base) -> str | None:
    """Why the sparse kernel cannot run ``layer``, or None."""
    if not sparse_int8.kernel_available():
        return "the sparse int8 kernel is not compiled (no C compiler or NETSLIM_NO_EXT=1)"
    if isinstance(layer, Int8Conv2d):
        if layer.groups != 1:
            return f"grouped convolution (groups={layer.groups}): the sparse int8 kernel takes groups 1"
        if layer.stride[0] != layer.stride[1] or layer.dilation[0] != layer.dilation[1]:
            return "unequal strides or dilations along the two axes"
    return None


@torch.inference_mode()
def time_static_layer(
    layer: _Int8Base,
    seen: SeenInput | None,
    batch_sizes,
    *,
    rounds: int,
    repeats: int,
    threads: int | None,
    min_speedup: float,
) -> dict[str, Any]:
    """Dense int8 vs sparse int8 medians (ms) per batch size; ``module`` the sparse-kernel layer."""
    dense = (dense_static(layer) if hasattr(layer, "nnz") else layer).eval()
    sparse = sparse_static(layer, "sparse").eval()
    if seen is None:  # a Linear's input is known from its width
        seen = SeenInput((layer.in_features,), False, False)
    out: dict[str, Any] = {
        "density": sparse.nnz / max(1, layer.weight_numel),
        "quad_density": _quad_density(sparse),
        "timings": {},
    }
    for b in batch_sizes:
        x = timing_input(layer, seen, b)
        ms = interleaved_latency({"dense": dense, "sparse": sparse}, x, rounds=rounds, repeats=repeats, threads=threads)
        out["timings"][str(b)] = {
            "dense_int8_ms": ms["dense"],
            "sparse_int8_ms": ms["sparse"],
            "speedup": ms["dense"] / max(ms["sparse"], 1e-9),
        }
    out["faster"] = all(t["speedup"] >= min_speedup for t in out["timings"].values())
    out["module"] = sparse
    return out


def _quad_density(sparse: _Int8Base) -> float:
    quads = (sparse_int8.prepare_conv if isinstance(sparse, SparseInt8Conv2d) else sparse_int8.prepare_linear)(
        sparse.int_weight()
    )
    return quads.density
