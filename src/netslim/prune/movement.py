"""Movement pruning (Sanh et al. 2020): keep the weights that move away from zero.

During fine-tuning every masked layer accumulates a score per weight,

    S <- S - W * dL/dW'        (W the stored weight, W' = W * mask, the dense gradient)

so weights that grow in magnitude (gradient pointing against them) gain score. This is
the straight-through form of the paper's learned scores with a unit learning rate.

* **hard** movement: every ``frequency`` steps from ``start_step`` to ``end_step``
  (default: 75 % of training), the mask keeps the top scores at the sparsity of the
  Zhu & Gupta cubic schedule (:func:`~netslim.prune.schedules.cubic_sparsity`),
  layer-wise or global top-k.
* **soft** movement: the mask is ``S > threshold`` and a regulariser ``reg_lambda *
  sum(sigmoid(S))`` pulls every score down; its gradient ``sigmoid'(S)`` is subtracted
  from S at each step, on the same unit-step scale as the movement term. Sparsity is an
  outcome of ``reg_lambda`` and ``threshold`` (reported), not a target.

Under ``torchrun`` (data-parallel training) the dense gradients are averaged over the ranks
before they move the scores (which then agree on every rank), and every new mask is rank
0's, broadcast before it is applied.

A pruned weight's stored value is zero (``set_mask`` zeroes it), so its score stops
moving; if it re-enters the top-k later it grows back from zero. Weights that were
already masked when the step began score -inf and stay pruned.

```yaml
- method: movement
  sparsity: 0.9
  scope: layer        # scores of different layers have different scales
  frequency: 50
  finetune: {epochs: 4, lr: 0.01}   # fine-tuning of the trained model
```
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from netslim.api import method_function
from netslim.core import distributed
from netslim.core.config import register
from netslim.core.errors import bad_param
from netslim.core.masks import get_mask, set_mask
from netslim.core.selectors import Selector
from netslim.prune._api import check_fraction, need_task, prunable_preflight, total_steps
from netslim.prune.criteria import masks_from_scores, prunable_layers, sparsity_report
from netslim.prune.schedules import cubic_sparsity
from netslim.prune.sparse_training import DenseGradTap, original, reset_optimizer_entries
from netslim.train.loop import Callback, FinetuneConfig, TrainingStep, TrainState, finetune_field, fit

log = logging.getLogger(__name__)


class MovementConfig(TrainingStep):
    """Movement pruning during fine-tuning (``mode``: hard top-k or soft threshold)."""

    method = "movement"
    mode: Literal["hard", "soft"] = "hard"
    sparsity: float = Field(0.9, description="hard: final sparsity s_f of the cubic schedule, in [0, 1)")
    initial_sparsity: float = Field(0.0, description="hard: s_i, at start_step, in [0, 1)")
    scope: Literal["layer", "global"] = "layer"
    include: Selector = None
    exclude: Selector = None
    start_step: int = Field(0, ge=0, description="t0: first mask update")
    end_step: int | None = Field(None, ge=1, description="hard: t0 + n*dt, final sparsity (default: 75% of training)")
    frequency: int = Field(50, ge=1, description="dt: optimizer steps between mask updates")
    threshold: float = Field(0.0, description="soft: keep weights with score > threshold")
    reg_lambda: float = Field(0.0, ge=0, description="soft: weight of sum(sigmoid(scores))")
    finetune: FinetuneConfig = finetune_field("the fine-tune whose steps move the scores")
    min_epochs: ClassVar[int] = 1

    @field_validator("sparsity", "initial_sparsity")
    @classmethod
    def _fraction(cls, v: float) -> float:
        return check_fraction(v)

    @model_validator(mode="after")
    def _ordered(self) -> MovementConfig:
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"'initial_sparsity' ({self.initial_sparsity}) must be <= 'sparsity' ({self.sparsity})")
        if self.end_step is not None and self.end_step < self.start_step + self.frequency:
            raise ValueError(
                f"'end_step' ({self.end_step}) must be >= 'start_step' + 'frequency' "
                f"({self.start_step + self.frequency}): the schedule ends before it starts"
            )
        return self

    keeps_modules: ClassVar[bool] = True  # masks only (netslim.recipe.preflight)
    data_parallel: ClassVar[bool] = True  # under torchrun: scores from averaged gradients, masks from rank 0

    @classmethod
    def example(cls) -> MovementConfig:
        return cls(sparsity=0.5, frequency=2, finetune={"epochs": 1, "max_steps": 6, "batch_size": 64})

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the layers resolve and the schedule fits in the run."""
        prunable_preflight(self, model)
        if task is not None:
            movement_schedule(self, total_steps(task, self.finetune))


def movement_schedule(cfg: MovementConfig, steps: int) -> tuple[int, int]:
    """(t0, n) of the cubic schedule for a run of ``steps``; checks that it fits."""
    end = cfg.end_step if cfg.end_step is not None else int(0.75 * steps)
    if end >= steps and cfg.mode == "hard":
        raise bad_param(
            "MovementConfig",
            "end_step",
            f"< the number of training steps ({steps}) so the final sparsity is reached while training",
            end,
        )
    n = (end - cfg.start_step) // cfg.frequency
    if n < 1 and cfg.mode == "hard":
        raise bad_param(
            "MovementConfig",
            "start_step",
            f"at least 'frequency' ({cfg.frequency}) steps before the "
            f"end of the schedule (step {end}); the schedule ends before it starts",
            cfg.start_step,
        )
    return cfg.start_step, max(n, 1)


class MovementPruning(Callback):
    """Accumulates movement scores every step and re-masks on the schedule."""

    def __init__(self, layers: list[tuple[str, nn.Module]], cfg: MovementConfig, t0: int, n: int):
        self.layers, self.cfg, self.t0, self.n, self.dt = layers, cfg, t0, n, cfg.frequency
        self.tap = DenseGradTap(layers)
        # Weights an earlier step pruned start at -inf: movement never revives them.
        self.scores = {name: torch.zeros_like(original(m)).masked_fill_(~get_mask(m), -math.inf) for name, m in layers}
        self.done = False
        self.events: list[tuple[int, float]] = []

    def on_train_begin(self, state: TrainState) -> None:
        state.can_checkpoint = False  # the mask still changes: no best-epoch restore yet

    def target(self, step: int) -> float:
        return cubic_sparsity(step, self.cfg.initial_sparsity, self.cfg.sparsity, self.t0, self.n, self.dt)

    def is_update(self, step: int) -> bool:
        on_grid = step >= self.t0 and (step - self.t0) % self.dt == 0
        return on_grid and (self.cfg.mode == "soft" or step <= self.t0 + self.n * self.dt)

    def on_step_begin(self, state: TrainState) -> None:
        self.tap.start()

    @torch.no_grad()
    def on_after_backward(self, state: TrainState) -> None:
        self.tap.stop()
        # Each rank tapped the gradient of its share of the batch: average them (layer order).
        distributed.all_reduce_mean_([self.tap.grads[n] for n, _ in self.layers if n in self.tap.grads])
        for name, module in self.layers:
            if name in self.tap.grads:
                # (out, in[, kh, kw]): S -= W * dL/dW'
                self.scores[name].sub_(original(module).detach() * self.tap.grads[name].to(self.scores[name].dtype))
            if self.cfg.mode == "soft" and self.cfg.reg_lambda:
                sig = torch.sigmoid(self.scores[name])
                self.scores[name].sub_(self.cfg.reg_lambda * sig * (1 - sig))  # d/dS of lambda*sigmoid(S)
        if self.is_update(state.step):
            self.remask(self.new_masks(state.step), state.optimizer)
            if self.cfg.mode == "hard":
                self.events.append((state.step, self.target(state.step)))
            if self.cfg.mode == "hard" and state.step == self.t0 + self.n * self.dt:
                self.done = True
                state.can_checkpoint = True

    def new_masks(self, step: int) -> dict[str, torch.Tensor]:
        """The masks at ``step``: rank 0's under torchrun (broadcast)."""
        if self.cfg.mode == "soft":
            return distributed.from_main({n: s > self.cfg.threshold for n, s in self.scores.items()})
        return distributed.from_main(masks_from_scores(self.scores, self.target(step), scope=self.cfg.scope))

    def remask(self, masks: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> None:
        for name, module in self.layers:
            w, old, new = original(module), get_mask(module).clone(), masks[name]
            set_mask(module, new)
            if w.grad is not None:
                w.grad.mul_(new.to(w.grad.dtype))  # the coming step must not move pruned weights
            reset_optimizer_entries(opt, w, old != new)

    def on_train_end(self, state: TrainState) -> None:
        self.tap.stop()
        if self.cfg.mode == "hard" and not self.done:
            # Training stopped before the schedule ended (max_steps): finish at the target.
            log.info("movement: schedule unfinished at step %d; applying final sparsity", state.step)
            self.remask(self.new_masks(self.t0 + self.n * self.dt), state.optimizer)
            self.done = True


def movement_train(model: nn.Module, task, *, cfg: MovementConfig) -> dict[str, Any]:
    """Fine-tune ``model`` with movement pruning (in place); the fit summary + scores + events."""
    layers = prunable_layers(model, cfg.include, cfg.exclude)
    train_cfg = cfg.finetune
    t0, n = movement_schedule(cfg, total_steps(task, train_cfg))
    for _, module in layers:
        if get_mask(module) is None:  # an all-ones mask gives the gradient tap its hook point
            set_mask(module, torch.ones_like(module.weight, dtype=torch.bool))
    cb = MovementPruning(layers, cfg, t0, n)
    summary = fit(model, task, train_cfg, [cb])
    return summary | {"scores": cb.scores, "events": cb.events}


@register(MovementConfig)
def run_movement(model: nn.Module, cfg: MovementConfig, ctx) -> nn.Module:
    summary = movement_train(model.to(ctx.device), need_task(ctx, cfg.method), cfg=cfg)
    ctx.notes[cfg.method] = {k: v for k, v in summary.items() if k not in ("scores", "history")} | {
        **sparsity_report(model)
    }
    return model


movement_prune = method_function(MovementConfig, "movement_prune")  # movement_prune(model, task, sparsity=0.9)
