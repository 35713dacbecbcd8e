"""The ``sparsify`` step: run a layer sparse only where that was measured faster.

Masks are made permanent first. For every selected float Linear, a dense copy (plain F.linear
on the pruned weight) and a :class:`~netslim.prune.sparse.SparseLinear` are timed on
random inputs at each batch size in ``batch_sizes`` (interleaved, medians); the layer
becomes sparse only if it is at least ``min_speedup`` times faster at *every* batch
size. Every other layer is listed in the report's skipped modules with its timings.

Static int8 layers (after ``ptq_int8`` / ``qat``: Int8Linear and Int8Conv2d, pruned zeros at
code 0) are timed the same way, dense int8 (oneDNN) against the sparse int8 kernel
(:mod:`netslim.quantize.sparse_int8`), each with its input as it arrives in the model
(shape, quantized hand-off, memory format; recorded from one forward pass of the task's
example inputs), and become :class:`~netslim.quantize.sparse_lowbit.SparseInt8Linear` /
``SparseInt8Conv2d`` with ``kernel: sparse`` only where faster at every batch size.

```yaml
- method: sparsify
  batch_sizes: [1, 64]
```

After it, layers hold buffers, not parameters: nothing may train the model (``freezes``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from netslim.api import method_function
from netslim.core.config import MethodConfig, register
from netslim.core.masks import baked_copy, make_permanent
from netslim.core.selectors import Selector, select
from netslim.core.surgery import get_module, replace_module
from netslim.measure.latency import interleaved_latency
from netslim.prune.criteria import PRUNABLE_TYPES, prunable_layers
from netslim.prune.kernels import kernel_available
from netslim.prune.sparse import SparseLinear


class SparsifyConfig(MethodConfig):
    """Swap Linear layers for SparseLinear where the sparse kernel is measured faster."""

    method = "sparsify"
    freezes = True
    modifies_weights = False
    keeps_modules: ClassVar[bool] = False  # Linear -> SparseLinear where faster (netslim.recipe.preflight)
    batch_sizes: tuple[int, ...] = Field((1, 64), min_length=1, description="batch sizes that must all be faster")
    min_speedup: float = Field(1.1, gt=0, description="required dense/sparse time ratio")
    include: Selector = None
    exclude: Selector = None
    rounds: int = Field(3, ge=1, description="interleaved timing rounds per layer and batch size")
    repeats: int = Field(10, ge=1, description="calls per round")
    threads: int | None = Field(None, ge=1)

    @classmethod
    def example(cls) -> SparsifyConfig:
        return cls(batch_sizes=(1,), rounds=1, repeats=2)


@torch.inference_mode()
def time_layer(layer: nn.Linear, cfg: SparsifyConfig) -> dict[str, Any]:
    """Dense vs sparse medians (ms) per batch size for one (already permanent) Linear."""
    dense = baked_copy(layer).eval()
    sparse = SparseLinear.from_dense(layer, "sparse").eval()
    device = layer.weight.device
    out: dict[str, Any] = {"density": sparse.nnz / layer.weight.numel(), "timings": {}}
    for b in cfg.batch_sizes:
        x = torch.randn(b, layer.in_features, device=device)
        ms = interleaved_latency(
            {"dense": dense, "sparse": sparse}, x, rounds=cfg.rounds, repeats=cfg.repeats, threads=cfg.threads
        )
        out["timings"][str(b)] = {
            "dense_ms": ms["dense"],
            "sparse_ms": ms["sparse"],
            "speedup": ms["dense"] / max(ms["sparse"], 1e-9),
        }
    out["faster"] = all(t["speedup"] >= cfg.min_speedup for t in out["timings"].values())
    out["module"] = sparse
    return out


def _float_layers(model: nn.Module, cfg: SparsifyConfig, quantized: list[str]) -> list[tuple[str, nn.Module]]:
    if not any(isinstance(m, PRUNABLE_TYPES) for m in model.modules()) and quantized:
        return []  # a fully quantized model: only int8 layers to decide
    return prunable_layers(model, cfg.include, cfg.exclude)


@register(SparsifyConfig)
def run_sparsify(model: nn.Module, cfg: SparsifyConfig, ctx) -> nn.Module:
    """Make masks permanent and run Linear (and static int8) layers sparse where measured faster
    (in place); the task's example inputs give the input shapes of int8 convolutions."""
    make_permanent(model)
    quantized = _static_int8_names(model, cfg)
    layers = _float_layers(model, cfg, quantized)
    notes: dict[str, Any] = {"kernel": "compiled" if kernel_available() else "torch.sparse fallback", "layers": {}}
    if quantized:
        _sparsify_int8(model, quantized, cfg, ctx, notes)
    for name, layer in layers:
        if not isinstance(layer, nn.Linear):
            _skip(
                ctx, name, f"{type(layer).__name__}: no sparse kernel (runs dense; export 'sparse' stores it compactly)"
            )
            continue
        result = time_layer(layer, cfg)
        module = result.pop("module")
        notes["layers"][name] = result
        if result["faster"]:
            replace_module(model, name, module)
        else:
            speed = ", ".join(f"b{b}: {t['speedup']:.2f}x" for b, t in result["timings"].items())
            _skip(
                ctx,
                name,
                f"sparse not faster enough (dense/sparse {speed}; need >= {cfg.min_speedup}x at "
                f"density {result['density']:.1%})",
            )
    ctx.notes[cfg.method] = notes
    return model


def _static_int8_names(model: nn.Module, cfg: SparsifyConfig) -> list[str]:
    from netslim.quantize.sparse_select import STATIC_TYPES

    return select(model, cfg.include, cfg.exclude, types=STATIC_TYPES, required=False)


def _sparsify_int8(model: nn.Module, names: list[str], cfg: SparsifyConfig, ctx, notes: dict) -> None:
    """Dense int8 vs sparse int8 per static int8 layer (see the module docstring)."""
    from netslim.quantize.sparse_select import record_inputs, time_static_layer, unsupported

    example = ctx.task.example_inputs(2) if getattr(ctx, "task", None) is not None else None
    seen = record_inputs(model, names, example) if example is not None else {}
    notes["int8_layers"] = {}
    for name in names:
        layer = get_module(model, name)
        why = unsupported(layer)
        if why is None and name not in seen and not hasattr(layer, "in_features"):
            why = "no example input to learn its input shape (give the step a task, or data= in Python)"
        if why is not None:
            _skip(ctx, name, f"int8 layer kept dense: {why}")
            continue
        result = time_static_layer(
            layer,
            seen.get(name),
            cfg.batch_sizes,
            rounds=cfg.rounds,
            repeats=cfg.repeats,
            threads=cfg.threads,
            min_speedup=cfg.min_speedup,
        )
        module = result.pop("module")
        notes["int8_layers"][name] = result
        if result["faster"]:
            replace_module(model, name, module)
        else:
            speed = ", ".join(f"b{b}: {t['speedup']:.2f}x" for b, t in result["timings"].items())
            _skip(
                ctx,
                name,
                f"sparse int8 not faster enough than dense int8 (dense/sparse {speed}; need >= "
                f"{cfg.min_speedup}x at density {result['density']:.1%}, quads "
                f"{result['quad_density']:.1%})",
            )


def _skip(ctx, name: str, reason: str) -> None:
    ctx.skip(name, reason)


sparsify = method_function(SparsifyConfig, "sparsify")  # sparsify(model, example_inputs)
