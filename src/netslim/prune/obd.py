"""Optimal Brain Damage (LeCun et al. 1990) with a diagonal empirical Fisher.

OBD's saliency of weight ``i`` is the loss increase a second-order expansion predicts
for setting it to zero at a minimum, ``1/2 * H_ii * w_i**2``. The Hessian diagonal is
replaced by the diagonal of the empirical Fisher, ``F_ii = mean_n (dL_n/dw_i)**2``, from
per-sample gradients on ``num_samples`` training examples (with labels, so ``task.loss``
works for any task). The model is in eval mode while the gradients are taken (batch-norm
uses its running statistics, as at inference).

``batch_size`` > 1 squares gradients of mini-batch means instead of single samples;
``batch_size * mean(g_batch**2)`` estimates F only when per-sample gradients are
uncorrelated, so it is faster but approximate. The default 1 is exact.

The scores go through :func:`~netslim.prune.criteria.masks_from_scores` (global or
layer-wise, with per-layer bounds). Already-masked weights are zero, so score zero.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils import parametrize

from netslim.api import method_function
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.core.hooks import eval_mode
from netslim.core.selectors import Selector
from netslim.prune._api import check_fraction, need_task, prunable_preflight
from netslim.prune.criteria import apply_masks, masks_from_scores, prunable_layers, sparsity_report


class OBDConfig(MethodConfig):
    """One-shot pruning by OBD saliency 1/2 * F_ii * w_i**2 (diagonal empirical Fisher)."""

    method = "obd"
    sparsity: float = Field(0.9, description="fraction of weights to prune, in [0, 1)")
    scope: Literal["global", "layer"] = "global"
    include: Selector = None
    exclude: Selector = None
    min_sparsity: float = Field(0.0, description="per-layer lower bound, in [0, 1)")
    max_sparsity: float | None = Field(None, description="per-layer upper bound, in [0, 1]")
    num_samples: int = Field(1024, ge=1, description="training examples the Fisher is averaged over")
    batch_size: int = Field(1, ge=1, description="examples per squared gradient (1 = exact per-sample)")

    @field_validator("sparsity", "min_sparsity")
    @classmethod
    def _fraction(cls, v):
        return check_fraction(v)

    @field_validator("max_sparsity")
    @classmethod
    def _upper(cls, v):
        return check_fraction(v, closed=True)

    keeps_modules: ClassVar[bool] = True  # masks only (netslim.recipe.preflight)

    @classmethod
    def example(cls) -> OBDConfig:
        return cls(sparsity=0.5, num_samples=16, batch_size=4)

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the layers resolve."""
        prunable_preflight(self, model)


def weight_param(module: nn.Module) -> torch.Tensor:
    """The leaf tensor that receives ``module.weight``'s gradient (the stored original if masked)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


def fisher_diagonal(
    model: nn.Module, task, *, layers: list[tuple[str, nn.Module]], num_samples: int, batch_size: int = 1
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of each layer's weight from ``num_samples`` training examples."""
    params = {n: weight_param(m) for n, m in layers}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    n_batches = math.ceil(num_samples / batch_size)
    seen = 0
    with eval_mode(model):  # BN running stats, no dropout: the network as deployed
        for batch in task.train_batches(0, batch_size):
            if seen == n_batches:
                break
            grads = torch.autograd.grad(task.loss(model, batch), list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    fisher[name].add_(g.float().square(), alpha=batch_size)  # b * g_mean^2 ~ E[g_n^2]
            seen += 1
    if seen < n_batches:
        raise NetslimError(
            f"The 'num_samples' parameter of OBD must be at most the training set size "
            f"({seen * batch_size}); got {num_samples}."
        )
    return {n: f / seen for n, f in fisher.items()}


def obd_scores(
    model: nn.Module, task, *, layers: list[tuple[str, nn.Module]], num_samples: int = 1024, batch_size: int = 1
) -> dict[str, torch.Tensor]:
    """Saliency ``0.5 * F_ii * w_i**2`` per weight of each layer in ``layers``."""
    fisher = fisher_diagonal(model, task, layers=layers, num_samples=num_samples, batch_size=batch_size)
    # (out, in[, kh, kw]) each; the effective weight is zero where a mask already pruned it
    return {n: 0.5 * fisher[n] * m.weight.detach().float().square() for n, m in layers}


@register(OBDConfig)
def run_obd(model: nn.Module, cfg: OBDConfig, ctx) -> nn.Module:
    """Mask the lowest-saliency weights in place."""
    model, task = model.to(ctx.device), need_task(ctx, cfg.method)
    layers = prunable_layers(model, cfg.include, cfg.exclude)
    scores = obd_scores(model, task, layers=layers, num_samples=cfg.num_samples, batch_size=cfg.batch_size)
    masks = masks_from_scores(
        scores, cfg.sparsity, scope=cfg.scope, min_sparsity=cfg.min_sparsity, max_sparsity=cfg.max_sparsity
    )
    model = apply_masks(model, masks)
    ctx.notes[cfg.method] = sparsity_report(model)
    return model


obd_prune = method_function(OBDConfig, "obd_prune")  # obd_prune(m, task, sparsity=0.9)
