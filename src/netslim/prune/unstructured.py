"""One-shot magnitude (and random-control) pruning: top-k or threshold, layer-wise or global.

```yaml
- method: magnitude
  sparsity: 0.95          # or threshold: 0.01 (prune |w| < t); exactly one of the two
  scope: global           # or layer
  exclude: [fc3]          # selectors; the classifier is often kept denser
  max_sparsity: 0.99      # per-layer clamps (global scope can otherwise empty a layer)
```

``magnitude_prune(model, sparsity=0.9)`` is the same without a recipe. The masks stay
trainable (see :mod:`netslim.core.masks`); ``make_permanent`` bakes them in.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from torch import nn

from netslim.api import method_function
from netslim.core.config import register
from netslim.prune._api import PruneTargetFields, check_fraction
from netslim.prune.criteria import (
    apply_masks,
    masks_from_counts,
    masks_from_scores,
    prunable_layers,
    sparsity_report,
    threshold_counts,
    weight_scores,
)


class MagnitudePruneConfig(PruneTargetFields):
    """Prune the smallest weights (or random ones, as a control) of the selected layers."""

    method = "magnitude"
    sparsity: float | None = Field(None, description="fraction of weights to prune, in [0, 1)")
    threshold: float | None = Field(None, ge=0, description="prune |w| < threshold instead of a fraction")
    seed: int = Field(0, description="seed of the random criterion")

    @field_validator("sparsity")
    @classmethod
    def _fraction(cls, v):
        return check_fraction(v)

    @model_validator(mode="after")
    def _one_target(self):
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError("exactly one of 'sparsity' and 'threshold' must be set")
        if self.threshold is not None and self.criterion == "random":
            raise ValueError("'threshold' needs criterion 'magnitude' (random scores have no scale)")
        if self.max_sparsity is not None and self.max_sparsity < self.min_sparsity:
            raise ValueError(f"'max_sparsity' ({self.max_sparsity}) must be >= 'min_sparsity' ({self.min_sparsity})")
        return self

    @classmethod
    def example(cls) -> MagnitudePruneConfig:
        return cls(sparsity=0.5)


def target_masks(
    model: nn.Module, cfg: PruneTargetFields, sparsity: float | None, *, threshold: float | None = None, seed: int = 0
) -> dict:
    """Keep-masks for ``sparsity`` (or ``threshold``) over the layers and criterion of ``cfg``.

    Shared by one-shot, iterative and gradual pruning and lottery tickets.
    """
    layers = prunable_layers(model, cfg.include, cfg.exclude)
    scores = weight_scores(layers, cfg.criterion, seed)
    if threshold is not None:
        counts = threshold_counts(scores, threshold, min_sparsity=cfg.min_sparsity, max_sparsity=cfg.max_sparsity)
        return masks_from_counts(scores, counts)
    return masks_from_scores(
        scores, sparsity, scope=cfg.scope, min_sparsity=cfg.min_sparsity, max_sparsity=cfg.max_sparsity
    )


def prune_masks(model: nn.Module, cfg: MagnitudePruneConfig) -> dict:
    """The keep-masks ``cfg`` asks for, without applying them."""
    return target_masks(model, cfg, cfg.sparsity, threshold=cfg.threshold, seed=cfg.seed)


@register(MagnitudePruneConfig)
def run_magnitude(model: nn.Module, cfg: MagnitudePruneConfig, ctx) -> nn.Module:
    """Mask the smallest weights of ``model`` in place."""
    apply_masks(model, prune_masks(model, cfg))
    ctx.notes[cfg.method] = sparsity_report(model)
    return model


magnitude_prune = method_function(MagnitudePruneConfig, "magnitude_prune")  # magnitude_prune(m, sparsity=0.9)
