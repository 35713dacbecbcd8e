"""The ``sparsify`` step: run a Linear layer sparse only where that was measured faster.

Masks are made permanent first. For every selected Linear, a dense copy (plain F.linear
on the pruned weight) and a :class:`~netslim.prune.sparse.SparseLinear` are timed on
random inputs at each batch size in ``batch_sizes`` (interleaved, medians); the layer
becomes sparse only if it is at least ``min_speedup`` times faster at *every* batch
size. Every other layer is listed in the report's skipped modules with its timings.

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

from netslim.core.config import MethodConfig, register
from netslim.core.masks import make_permanent
from netslim.core.surgery import replace_module
from netslim.measure.latency import interleaved_latency
from netslim.prune._api import Selector, as_config
from netslim.prune.criteria import prunable_layers
from netslim.prune.kernels import kernel_available
from netslim.prune.sparse import SparseLinear, baked_copy


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
    def example(cls) -> "SparsifyConfig":
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
        ms = interleaved_latency({"dense": dense, "sparse": sparse}, x, rounds=cfg.rounds, repeats=cfg.repeats,
                                 threads=cfg.threads)
        out["timings"][str(b)] = {"dense_ms": ms["dense"], "sparse_ms": ms["sparse"],
                                  "speedup": ms["dense"] / max(ms["sparse"], 1e-9)}
    out["faster"] = all(t["speedup"] >= cfg.min_speedup for t in out["timings"].values())
    out["module"] = sparse
    return out


@register(SparsifyConfig)
def run_sparsify(model: nn.Module, cfg: SparsifyConfig, ctx=None) -> nn.Module:
    make_permanent(model)
    layers = prunable_layers(model, cfg.include, cfg.exclude)
    notes: dict[str, Any] = {"kernel": "compiled" if kernel_available() else "torch.sparse fallback", "layers": {}}
    for name, layer in layers:
        if not isinstance(layer, nn.Linear):
            _skip(ctx, name, f"{type(layer).__name__}: no sparse kernel (runs dense; export 'sparse' stores it compactly)")
            continue
        result = time_layer(layer, cfg)
        module = result.pop("module")
        notes["layers"][name] = result
        if result["faster"]:
            replace_module(model, name, module)
        else:
            speed = ", ".join(f"b{b}: {t['speedup']:.2f}x" for b, t in result["timings"].items())
            _skip(ctx, name, f"sparse not faster enough (dense/sparse {speed}; need >= {cfg.min_speedup}x at "
                             f"density {result['density']:.1%})")
    if ctx is not None:
        ctx.notes[cfg.method] = notes
    return model


def _skip(ctx, name: str, reason: str) -> None:
    if ctx is not None:
        ctx.skip(name, reason)


def sparsify(model: nn.Module, cfg: SparsifyConfig | None = None, **kwargs: Any) -> nn.Module:
    """Make masks permanent and run Linear layers sparse where measured faster (in place)."""
    return run_sparsify(model, as_config(SparsifyConfig, cfg, kwargs))
