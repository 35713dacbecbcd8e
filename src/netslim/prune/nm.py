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

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from netslim.api import method_function
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.core.patterns import declare_nm
from netslim.core.selectors import Selector
from netslim.prune.criteria import WeightCriterion, apply_masks, prunable_layers, sparsity_report, weight_scores


class NMConfig(MethodConfig):
    """Keep the ``n`` highest-scored of every ``m`` consecutive input weights."""

    method = "nm"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=1)
    criterion: WeightCriterion = Field(
        "magnitude", description="ranks the weights of each group of m: magnitude, random or a registered one"
    )
    include: Selector = None
    exclude: Selector = None
    seed: int = 0
    keeps_modules: ClassVar[bool] = True  # masks only (netslim.recipe.preflight)

    @model_validator(mode="after")
    def _n_le_m(self):
        if self.n > self.m:
            raise ValueError("'n' must be <= 'm' (N:M keeps N of every M weights)")
        return self

    def preflight(self, model, task) -> list[dict] | None:
        """Before a recipe runs: the layers resolve and some have an input dim divisible by ``m``;
        returns the ones that will be skipped."""
        return None if model is None else fitting_layers(prunable_layers(model, self.include, self.exclude), self.m)[1]


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
    groups = to_groups(scores, m)  # (G, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return from_groups(keep, scores.shape)


def fitting_layers(layers: list[tuple[str, nn.Module]], m: int) -> tuple[list[tuple[str, nn.Module]], list[dict]]:
    """``(layers whose input dim is a multiple of m, [{name, reason}] of the others)``; raises
    when none fits."""
    usable, skipped = [], []
    for name, module in layers:
        if module.weight.shape[1] % m:
            skipped.append({"name": name, "reason": f"input dim {module.weight.shape[1]} is not a multiple of m={m}"})
        else:
            usable.append((name, module))
    if not usable:
        dims = ", ".join(f"{n} {mod.weight.shape[1]}" for n, mod in layers[:6]) + (" ..." if len(layers) > 6 else "")
        raise NetslimError(f"No selected layer has an input dim divisible by 'm'={m} ({dims}); nothing to prune.")
    return usable, skipped


@register(NMConfig)
def run_nm(model: nn.Module, cfg: NMConfig, ctx) -> nn.Module:
    """Apply an N:M mask in place."""
    usable, skipped = fitting_layers(prunable_layers(model, cfg.include, cfg.exclude), cfg.m)
    for s in skipped:
        ctx.skip(s["name"], s["reason"])
    scores = weight_scores(usable, cfg.criterion, cfg.seed)
    apply_masks(model, {name: nm_mask(s, cfg.n, cfg.m) for name, s in scores.items()})
    declare_nm(model, list(scores), cfg.n, cfg.m)  # later steps must keep it (netslim.core.patterns)
    ctx.notes[cfg.method] = sparsity_report(model)
    return model


nm_prune = method_function(NMConfig, "nm_prune")  # nm_prune(model, n=2, m=4)
