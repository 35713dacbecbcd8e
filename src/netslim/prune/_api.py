"""Helpers shared by the pruning configs: building a config from a function call,
validating selectors and fractions with the house error messages."""
from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

import pydantic
from pydantic import Field, field_validator

from netslim.core.config import MethodConfig, _format_validation_error
from netslim.core.errors import NetslimError
from netslim.train.loop import FinetuneConfig

C = TypeVar("C", bound=MethodConfig)
Selector = str | tuple[str, ...] | None


def as_config(cls: type[C], cfg: C | None, overrides: dict[str, Any]) -> C:
    """``cfg`` updated with ``overrides`` (or a new ``cls(**overrides)``), validated.

    Lets the plain-Python API take either a config or keyword arguments, with the same
    NetslimError messages a recipe gets.
    """
    if cfg is not None and not isinstance(cfg, cls):
        raise NetslimError(f"Expected a {cls.__name__} (method {cls.method!r}); got {type(cfg).__name__}.")
    data = {**(cfg.model_dump() if cfg is not None else {}), **overrides}
    try:
        return cls(**data)
    except pydantic.ValidationError as err:
        raise NetslimError(_format_validation_error(err, cls.__name__)) from None


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
    criterion: Literal["magnitude", "random"] = "magnitude"
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


class TrainFields(MethodConfig):
    """The (re)training a schedule runs between or while pruning; see TrainConfig."""

    epochs: int = Field(2, ge=0, description="epochs of each training run")
    max_steps: int | None = Field(None, ge=1, description="cap on steps per training run (smoke runs)")
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    amp: Literal["none", "bf16", "fp16"] = "none"
    seed: int = 0

    def train_config(self, **overrides: Any) -> FinetuneConfig:
        """The FinetuneConfig of one training run."""
        return FinetuneConfig(
            epochs=self.epochs, max_steps=self.max_steps, lr=self.lr, batch_size=self.batch_size,
            optimizer=self.optimizer, momentum=self.momentum, weight_decay=self.weight_decay,
            schedule=self.lr_schedule, warmup_epochs=self.warmup_epochs, amp=self.amp, seed=self.seed,
            **overrides,
        )


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
