"""Pruning schedules: iterative magnitude pruning and Zhu & Gupta's gradual (cubic) pruning.

One-shot pruning is :mod:`netslim.prune.unstructured` followed by a ``finetune`` step.

``imp`` -- k rounds of prune -> fine-tune; round r keeps (1 - s_f)^(r/k) of the weights
(a geometric schedule: every round removes the same fraction of the survivors).

```yaml
- method: imp
  sparsity: 0.95
  rounds: 3
  finetune: {epochs: 2, lr: 0.01}   # the fine-tune of every round
```

``gradual`` -- sparsity follows s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, re-pruned
every dt optimizer steps from t0 until t0 + n dt (Zhu & Gupta 2017), during the training run of
``finetune:``; the rest of the run fine-tunes at the final sparsity.

```yaml
- method: gradual
  sparsity: 0.95
  finetune: {epochs: 6}
  start_step: 0        # t0
  end_step: null       # t0 + n dt; default: end_fraction (0.75) of the training steps
  frequency: 100       # dt
```
"""

from __future__ import annotations

import logging
from typing import ClassVar

from pydantic import Field, field_validator, model_validator
from torch import nn

from netslim.api import method_function
from netslim.core import distributed
from netslim.core.config import register
from netslim.core.errors import NetslimError, bad_param
from netslim.prune._api import PruneTargetFields, check_fraction, need_task, total_steps
from netslim.prune.criteria import apply_masks, sparsity_report
from netslim.prune.unstructured import target_masks
from netslim.train.loop import Callback, FinetuneConfig, TrainingStep, TrainState, finetune_field, fit

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ pure schedules
def cubic_sparsity(step: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, held at s_i before t0
    and at s_f after t0 + n dt."""
    if n < 1 or dt < 1:
        raise NetslimError(f"cubic_sparsity needs n >= 1 and dt >= 1; got n={n}, dt={dt}.")
    progress = min(max((step - t0) / (n * dt), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def imp_sparsities(final: float, rounds: int) -> list[float]:
    """Sparsity after each IMP round: keep (1 - final)^(r/rounds), r = 1..rounds."""
    return [1.0 - (1.0 - final) ** (r / rounds) for r in range(1, rounds + 1)]


# ------------------------------------------------------------------------------- IMP
class IMPConfig(PruneTargetFields, TrainingStep):
    """Iterative magnitude pruning: ``rounds`` x (prune, ``finetune``) to ``sparsity``."""

    method = "imp"
    data_parallel: ClassVar[bool] = True  # under torchrun: each round's masks are rank 0's
    sparsity: float = Field(0.9, description="final sparsity, in [0, 1)")
    rounds: int = Field(3, ge=1)
    finetune: FinetuneConfig = finetune_field("the fine-tune of every round; its seed also seeds the masks")

    @field_validator("sparsity")
    @classmethod
    def _fraction(cls, v):
        return check_fraction(v)

    @classmethod
    def example(cls) -> IMPConfig:
        return cls(sparsity=0.5, rounds=2, finetune={"epochs": 1, "max_steps": 2})


@register(IMPConfig)
def run_imp(model: nn.Module, cfg: IMPConfig, ctx) -> nn.Module:
    task = need_task(ctx, cfg.method)
    history = []
    for r, s in enumerate(imp_sparsities(cfg.sparsity, cfg.rounds), start=1):
        apply_masks(model, distributed.from_main(target_masks(model, cfg, s, seed=cfg.finetune.seed + r)))
        summary = fit(model, task, cfg.finetune)
        history.append(
            {
                "round": r,
                "sparsity": s,
                "best_" + task.metric: summary["best_" + task.metric],
                "steps": summary["steps"],
            }
        )
        log.info("IMP round %d/%d at sparsity %.4f: %s", r, cfg.rounds, s, history[-1])
    ctx.notes[cfg.method] = {"rounds": history, **sparsity_report(model)}
    return model


imp_prune = method_function(IMPConfig, "imp_prune")  # imp_prune(model, task, sparsity=0.9, rounds=3)


# ---------------------------------------------------------------------------- gradual
class GradualConfig(PruneTargetFields, TrainingStep):
    """Gradual magnitude pruning on the cubic schedule during the training of ``finetune``."""

    method = "gradual"
    data_parallel: ClassVar[bool] = True  # under torchrun: each pruning event's masks are rank 0's
    sparsity: float = Field(0.9, description="final sparsity s_f, in [0, 1)")
    initial_sparsity: float = Field(0.0, description="s_i, applied at start_step, in [0, 1)")
    start_step: int = Field(0, ge=0, description="t0: first pruning step")
    end_step: int | None = Field(None, ge=1, description="t0 + n*dt: last pruning step (default: end_fraction)")
    end_fraction: float = Field(0.75, gt=0, lt=1, description="without end_step: end at this fraction of the run")
    frequency: int = Field(100, ge=1, description="dt: optimizer steps between pruning events")
    finetune: FinetuneConfig = finetune_field(
        "the training run the schedule prunes during; its seed also seeds the masks", epochs=4
    )
    min_epochs: ClassVar[int] = 1

    @field_validator("sparsity", "initial_sparsity")
    @classmethod
    def _fraction(cls, v):
        return check_fraction(v)

    @model_validator(mode="after")
    def _ordered(self):
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"'initial_sparsity' ({self.initial_sparsity}) must be <= 'sparsity' ({self.sparsity})")
        if self.end_step is not None and self.end_step < self.start_step + self.frequency:
            raise ValueError(
                f"'end_step' ({self.end_step}) must be >= 'start_step' + 'frequency' "
                f"({self.start_step + self.frequency}): the schedule ends before it starts"
            )
        return self

    @classmethod
    def example(cls) -> GradualConfig:
        return cls(sparsity=0.5, finetune={"epochs": 1, "max_steps": 4}, frequency=1, end_step=2)

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the layers resolve and the schedule fits in the run."""
        super().preflight(model, task)
        if task is not None:
            gradual_schedule(self, total_steps(task, self.finetune))


class CubicPruning(Callback):
    """Re-prunes to :func:`cubic_sparsity` every ``dt`` steps from ``t0`` to ``t0 + n dt``.

    Checkpoint selection (best-on-validation) is disabled until the final sparsity is in
    place, so ``fit`` never restores a denser model.
    """

    def __init__(self, cfg: GradualConfig, t0: int, n: int, dt: int):
        self.cfg, self.t0, self.n, self.dt = cfg, t0, n, dt
        self.events: list[tuple[int, float]] = []

    def on_train_begin(self, state: TrainState) -> None:
        state.can_checkpoint = False

    def on_step_begin(self, state: TrainState) -> None:
        t, last = state.step, self.t0 + self.n * self.dt
        if t < self.t0 or t > last or (t - self.t0) % self.dt:
            return
        s = cubic_sparsity(t, self.cfg.initial_sparsity, self.cfg.sparsity, self.t0, self.n, self.dt)
        masks = target_masks(state.model, self.cfg, s, seed=self.cfg.finetune.seed + t)
        apply_masks(state.model, distributed.from_main(masks))  # rank 0's decision on every rank
        self.events.append((t, s))
        if t == last:
            state.can_checkpoint = True


def gradual_schedule(cfg: GradualConfig, steps: int) -> tuple[int, int, int]:
    """(t0, n, dt) for a run of ``steps`` optimizer steps; checks the schedule fits in it."""
    end = cfg.end_step if cfg.end_step is not None else int(cfg.end_fraction * steps)
    if end >= steps:
        raise bad_param(
            "GradualConfig",
            "end_step",
            f"< the number of training steps ({steps}) so the final sparsity is reached while training",
            end,
        )
    n = (end - cfg.start_step) // cfg.frequency
    if n < 1:
        raise bad_param(
            "GradualConfig",
            "start_step",
            f"at least 'frequency' ({cfg.frequency}) steps before the "
            f"end of the schedule (step {end}); the schedule ends before it starts",
            cfg.start_step,
        )
    return cfg.start_step, n, cfg.frequency


@register(GradualConfig)
def run_gradual(model: nn.Module, cfg: GradualConfig, ctx) -> nn.Module:
    task = need_task(ctx, cfg.method)
    t0, n, dt = gradual_schedule(cfg, total_steps(task, cfg.finetune))
    callback = CubicPruning(cfg, t0, n, dt)
    summary = fit(model, task, cfg.finetune, callbacks=[callback])
    ctx.notes[cfg.method] = {
        "events": callback.events,
        "best_" + task.metric: summary["best_" + task.metric],
        "history": summary["history"],
        **sparsity_report(model),
    }
    return model


gradual_prune = method_function(GradualConfig, "gradual_prune")  # gradual_prune(model, task, sparsity=0.9)
