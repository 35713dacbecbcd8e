"""Helpers shared by the pruning configs: the fields of a masking schedule, validating
fractions with the house error messages. (Configs are built from a call with
:func:`netslim.core.config.build_config`; training options are a nested
:class:`~netslim.train.loop.FinetuneConfig`, see :class:`~netslim.train.loop.TrainingStep`.)"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from netslim.core.config import MethodConfig
from netslim.core.errors import NetslimError
from netslim.core.selectors import Selector
from netslim.prune.criteria import WeightCriterion
from netslim.train.loop import FinetuneConfig


def check_fraction(value: float | None, *, closed: bool = False) -> float | None:
    """Validator body: a float in [0, 1) (or [0, 1] with ``closed``)."""
    if value is None:
        return value
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"must be a float in [0, 1{']' if closed else ')'}")
    return value


class PruneTargetFields(MethodConfig):
    """Which layers a pruning schedule touches and how it ranks weights (shared fields)."""

    scope: Literal["global", "layer"] = "global"
    criterion: WeightCriterion = Field(
        "magnitude",
        description="how weights rank, the lowest pruned first: 'magnitude' (|w|), 'random' (a "
        "control, from 'seed') or a weight criterion registered with netslim.prune.register_criterion",
    )
    include: Selector = None
    exclude: Selector = None
    min_sparsity: float = Field(0.0, description="per-layer lower bound, in [0, 1)")
    max_sparsity: float | None = Field(None, description="per-layer upper bound, in [0, 1]")
    keeps_modules: ClassVar[bool] = True  # masks: names, types and shapes stay (netslim.recipe.preflight)

    def preflight(self, model, task) -> None:
        """Before a recipe runs (netslim.recipe.preflight): the selected layers resolve."""
        return prunable_preflight(self, model)

    @field_validator("min_sparsity")
    @classmethod
    def _min(cls, v):
        return check_fraction(v)

    @field_validator("max_sparsity")
    @classmethod
    def _max(cls, v):
        return check_fraction(v, closed=True)


def total_steps(task, cfg: FinetuneConfig) -> int:
    """Optimizer steps :func:`netslim.train.loop.fit` will run for ``cfg`` on ``task``."""
    total = task.steps_per_epoch(cfg.batch_size) * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps) if total else cfg.max_steps
    return total


def need_task(ctx, method: str):
    """The task of a step context, or a clear error when a training step has none."""
    task = getattr(ctx, "task", None)
    if task is None:
        raise NetslimError(f"Method {method!r} trains the model and needs a task (dataset); none was given.")
    return task


def prunable_preflight(cfg: MethodConfig, model) -> None:
    """The preflight of a step that masks ``prunable_layers``: its selectors leave some."""
    if model is not None:
        from netslim.prune.criteria import prunable_layers

        prunable_layers(model, cfg.include, cfg.exclude)
