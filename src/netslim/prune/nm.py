"""N:M semi-structured sparsity: keep N of every M consecutive weights along the input dim.

For a Linear weight (out, in) the groups are ``in`` split into runs of M. For a conv
weight (out, in, kh, kw) they run along the input channels at each kernel position
(the layout of NVIDIA's ASP and of channels-last implicit GEMM), so ``in`` must be a
multiple of M; layers where it is not are skipped and listed in the report.

```yaml
- method: nm
  n: 2
  m: 4
```
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.prune._api import Selector, as_config
from netslim.prune.criteria import apply_masks, prunable_layers, sparsity_report
from netslim.prune.unstructured import score_layers


class NMConfig(MethodConfig):
    """Keep the ``n`` highest-scored of every ``m`` consecutive input weights."""

    method = "nm"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=1)
    criterion: Literal["magnitude", "random"] = "magnitude"
    include: Selector = None
    exclude: Selector = None
    seed: int = 0

    @model_validator(mode="after")
    def _n_le_m(self):
        if self.n > self.m:
            raise ValueError("'n' must be <= 'm' (N:M keeps N of every M weights)")
        return self


def to_groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """(out, in[, k...]) -> (out * prod(k) * in/m, m): runs of M along the input dim."""
    if t.dim() > 2:  # conv: (out, in, *k) -> (out, *k, in) so runs stay inside one channel axis
        t = t.movedim(1, -1)
    return t.reshape(-1, m)


def from_groups(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_groups` for a tensor of ``shape``."""
    if len(shape) > 2:
        moved = (shape[0], *shape[2:], shape[1])
        return g.reshape(moved).movedim(-1, 1)
    return g.reshape(shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with exactly ``n`` True in every group of ``m`` (highest scores; ties: lower index)."""
    groups = to_groups(scores, m)                                  # (G, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return from_groups(keep, scores.shape)


@register(NMConfig)
def run_nm(model: nn.Module, cfg: NMConfig, ctx=None) -> nn.Module:
    layers = prunable_layers(model, cfg.include, cfg.exclude)
    usable = []
    for name, module in layers:
        if module.weight.shape[1] % cfg.m:
            reason = f"input dim {module.weight.shape[1]} is not a multiple of m={cfg.m}"
            if ctx is not None:
                ctx.skip(name, reason)
            continue
        usable.append((name, module))
    if not usable:
        raise NetslimError(f"No selected layer has an input dim divisible by 'm'={cfg.m}; nothing to prune.")
    scores = score_layers(usable, cfg.criterion, cfg.seed)
    apply_masks(model, {name: nm_mask(s, cfg.n, cfg.m) for name, s in scores.items()})
    if ctx is not None:
        ctx.notes[cfg.method] = sparsity_report(model)
    return model


def nm_prune(model: nn.Module, cfg: NMConfig | None = None, **kwargs: Any) -> nn.Module:
    """Apply an N:M mask in place: ``nm_prune(model, n=2, m=4)``."""
    return run_nm(model, as_config(NMConfig, cfg, kwargs))
