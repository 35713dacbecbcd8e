"""Pruning inside quantization-aware training: the ``prune`` option of the ``qat`` step.

The orders of pruning and quantization a QAT step can run (the issue-21 order study):

* masks already on the model (a ``magnitude`` / ``nm`` / ``gradual`` step before ``qat``): they
  stay fixed through QAT - the fake-quantized weight of a pruned position is exactly 0 (the
  LSQ grid is symmetric) and its gradient is 0 - and become code 0 in the int8 layer;
* ``prune: {schedule: cubic}`` - *joint*: masks grow on Zhu & Gupta's cubic schedule while
  the weights train quantized (re-pruned every ``frequency`` steps until ``end_fraction`` of
  the run, then fine-tuned quantized at the final sparsity);
* ``prune: {schedule: oneshot, at: 0.5}`` - *quantize -> prune*: the model first trains
  quantized, the masks are set once at ``at`` of the run (ranked by the latent weights'
  magnitude, a refinement of the quantized magnitude's order), and the rest of the run
  fine-tunes quantized with them fixed; ``at: 1.0`` prunes after training, with no recovery.

```yaml
- method: qat
  weight_bits: 4
  prune: {sparsity: 0.7, schedule: cubic}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from netslim.train.loop import Callback, FinetuneConfig, TrainState


class QATPrune(BaseModel):
    """Pruning during QAT: the final ``sparsity`` and when masks are set."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sparsity: float = Field(..., gt=0, lt=1, description="final fraction of pruned weights")
    scope: Literal["layer", "global"] = Field("layer", description="rank weights per layer or over all of them")
    schedule: Literal["cubic", "oneshot"] = Field(
        "cubic", description="cubic: joint (masks grow while training quantized); oneshot: one pruning event"
    )
    at: float = Field(
        0.5,
        ge=0,
        le=1,
        description="oneshot: fraction of the QAT steps after which masks are set "
        "(1.0: after training, before conversion)",
    )
    end_fraction: float = Field(0.75, gt=0, lt=1, description="cubic: reach the final sparsity at this fraction")
    frequency: int = Field(50, ge=1, description="cubic: optimizer steps between pruning events")


def _target(prune: QATPrune, include, exclude):
    """The magnitude pruning config whose masks these events apply (the prune family's own)."""
    from netslim.prune import GradualConfig  # pruning's public API; only needed when QAT prunes

    return GradualConfig(
        sparsity=prune.sparsity,
        scope=prune.scope,
        include=include,
        exclude=exclude,
        frequency=prune.frequency,
        end_fraction=prune.end_fraction,
    )


def prune_now(model: nn.Module, prune: QATPrune, include, exclude, sparsity: float | None = None) -> None:
    """Mask the selected (QAT) layers to ``sparsity`` (default: the final one) by magnitude."""
    from netslim.core.distributed import from_main
    from netslim.prune import apply_masks, target_masks

    cfg = _target(prune, include, exclude)
    masks = target_masks(model, cfg, prune.sparsity if sparsity is None else sparsity)
    apply_masks(model, from_main(masks))  # under torchrun: rank 0's decision on every rank


class QATPruning(Callback):
    """The prune events of :class:`QATPrune` inside :func:`netslim.train.loop.fit`; best-on-validation
    checkpoints are off until the final masks are in place (never restore a denser model)."""

    def __init__(self, prune: QATPrune, include, exclude, total_steps: int):
        self.prune, self.include, self.exclude = prune, include, exclude
        self.events: list[tuple[int, float]] = []
        if prune.schedule == "oneshot":
            self.steps = {min(int(prune.at * total_steps), max(total_steps - 1, 0)): prune.sparsity}
        else:
            from netslim.prune import cubic_sparsity

            end = max(1, int(prune.end_fraction * total_steps))
            n = max(1, end // prune.frequency)
            self.steps = {
                t: cubic_sparsity(t, 0.0, prune.sparsity, 0, n, prune.frequency)
                for t in range(0, n * prune.frequency + 1, prune.frequency)
            }
        self.last = max(self.steps)

    def on_train_begin(self, state: TrainState) -> None:
        state.can_checkpoint = False

    def on_step_begin(self, state: TrainState) -> None:
        s = self.steps.get(state.step)
        if s is None or s <= 0:
            if state.step == self.last:
                state.can_checkpoint = True
            return
        prune_now(state.model, self.prune, self.include, self.exclude, s)
        self.events.append((state.step, round(s, 6)))
        if state.step == self.last:
            state.can_checkpoint = True


def run_with_pruning(
    model: nn.Module, task, finetune: FinetuneConfig, prune: QATPrune, include, exclude, fit
) -> tuple[dict, list]:
    """QAT training with the prune events of ``prune``; returns (fit summary, [(step, sparsity)])."""
    if prune.schedule == "oneshot" and prune.at >= 1.0:  # quantize -> prune, no recovery
        summary = fit(model, task, finetune)
        prune_now(model, prune, include, exclude)
        return summary, [(summary.get("steps", -1), prune.sparsity)]
    steps = task.steps_per_epoch(finetune.batch_size) * finetune.epochs
    if finetune.max_steps is not None:
        steps = min(steps, finetune.max_steps) if steps else finetune.max_steps
    callback = QATPruning(prune, include, exclude, steps)
    summary = fit(model, task, finetune, callbacks=[callback])
    if not callback.events or callback.events[-1][1] < prune.sparsity - 1e-9:  # a run shorter than the schedule
        prune_now(model, prune, include, exclude)
        callback.events.append((-1, prune.sparsity))
    return summary, callback.events
