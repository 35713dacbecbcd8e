"""Lottery tickets (Frankle & Carbin 2019; rewinding: Frankle et al. 2020).

Train, prune the smallest surviving weights, rewind the survivors to their values at the
rewind point, retrain with the mask fixed; ``rounds`` > 1 repeats prune -> rewind -> retrain
on a geometric schedule (iterative lottery tickets).

Where the initialisation comes from (``init``):

* ``given`` -- the weights the step receives *are* the initialisation. In a recipe that
  starts from a zoo name this is the trained checkpoint, so use ``reset`` there, or start
  the recipe from an untrained artifact (``netslim.save(build_model(name), path)``,
  then ``--model path``).
* ``reset`` -- every layer is re-initialised with ``reset_parameters()`` under ``seed``
  first: the classic lottery ticket from a random init.

The rewind point is recorded during the first training run: the weights *before* optimizer
step ``rewind_step`` (0 = the initialisation itself; Frankle et al. use a few hundred steps
for deeper nets). Every parameter and buffer is rewound (BN statistics included); pruned
weights stay zero.

```yaml
- method: lottery
  sparsity: 0.95
  rounds: 3          # trainings: rounds + 1
  finetune: {epochs: 10}   # each training run
  init: reset
  rewind_step: 0
```
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils import parametrize

from netslim.api import method_function
from netslim.core import distributed
from netslim.core.config import register
from netslim.core.errors import bad_param
from netslim.prune._api import PruneTargetFields, check_fraction, need_task, total_steps
from netslim.prune.criteria import apply_masks, current_mask, sparsity_report
from netslim.prune.schedules import imp_sparsities
from netslim.prune.unstructured import target_masks
from netslim.train.loop import Callback, FinetuneConfig, TrainingStep, TrainState, finetune_field, fit

log = logging.getLogger(__name__)


class LotteryConfig(PruneTargetFields, TrainingStep):
    """Lottery ticket: train, prune, rewind survivors, retrain; ``rounds`` times."""

    method = "lottery"
    data_parallel: ClassVar[bool] = True  # under torchrun: each round's masks are rank 0's
    sparsity: float = Field(0.9, description="final sparsity, in [0, 1)")
    rounds: int = Field(1, ge=1, description="prune/rewind/retrain rounds (trainings: rounds + 1)")
    init: Literal["given", "reset"] = Field("given", description="where the initialisation comes from")
    rewind_step: int = Field(0, ge=0, description="rewind to the weights before this optimizer step")
    finetune: FinetuneConfig = finetune_field("each training run; its seed also seeds the masks and 'init: reset'")

    @field_validator("sparsity")
    @classmethod
    def _fraction(cls, v):
        return check_fraction(v)

    @classmethod
    def example(cls) -> LotteryConfig:
        return cls(sparsity=0.5, finetune={"epochs": 1, "max_steps": 2}, rewind_step=1)

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the rewind point lies within one training run; the layers resolve."""
        if task is not None:
            steps = total_steps(task, self.finetune)
            if self.rewind_step >= max(1, steps):
                raise bad_param(
                    "LotteryConfig", "rewind_step", f"< the steps of one training run ({steps})", self.rewind_step
                )
        super().preflight(model, task)


# ------------------------------------------------------------------------ rewind points
def snapshot_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, keyed ``module.name`` as an unmasked model names them."""
    out = {}
    for mname, module in model.named_modules():
        if ".parametrizations" in f".{mname}":
            continue
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                tensors[pname] = plist.original  # the stored value; masked entries are already zero
        for pname, t in tensors.items():
            out[f"{mname}.{pname}" if mname else pname] = t.detach().clone()
    return out


@torch.no_grad()
def rewind(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` (from :func:`snapshot_weights`) back; masked entries stay zero."""
    for mname, module in model.named_modules():
        if ".parametrizations" in f".{mname}":
            continue
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        masked = set()
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                tensors[pname] = plist.original
                masked.add(pname)
        for pname, t in tensors.items():
            key = f"{mname}.{pname}" if mname else pname
            if key in weights:
                t.copy_(weights[key])
                if pname in masked:
                    t.mul_(current_mask(module).to(t.dtype))


class RecordAt(Callback):
    """Records :func:`snapshot_weights` before optimizer step ``step``."""

    def __init__(self, step: int):
        self.step, self.weights = step, None

    def on_step_begin(self, state: TrainState) -> None:
        if state.step == self.step and self.weights is None:
            self.weights = snapshot_weights(state.model)


def reset_weights(model: nn.Module, seed: int) -> None:
    """Fresh PyTorch default initialisation of every layer that has one."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


# ----------------------------------------------------------------------------- handler
@register(LotteryConfig)
def run_lottery(model: nn.Module, cfg: LotteryConfig, ctx) -> nn.Module:
    task = need_task(ctx, cfg.method)
    train_cfg = cfg.finetune
    cfg.preflight(model, task)  # fail before training on a late rewind point or bad selectors
    if cfg.init == "reset":
        reset_weights(model, train_cfg.seed)
    recorder = RecordAt(cfg.rewind_step)
    history = [_train(model, task, train_cfg, [recorder], "dense", 0.0)]
    for r, s in enumerate(imp_sparsities(cfg.sparsity, cfg.rounds), start=1):
        apply_masks(model, distributed.from_main(target_masks(model, cfg, s, seed=train_cfg.seed + r)))
        rewind(model, recorder.weights)
        history.append(_train(model, task, train_cfg, [], f"round {r}", s))
    ctx.notes[cfg.method] = {
        "trainings": history,
        "rewind_step": cfg.rewind_step,
        "init": cfg.init,
        **sparsity_report(model),
    }
    return model


def _train(model, task, train_cfg, callbacks, label: str, sparsity: float) -> dict:
    summary = fit(model, task, train_cfg, callbacks=callbacks)
    entry = {
        "run": label,
        "sparsity": sparsity,
        "steps": summary["steps"],
        "best_" + task.metric: summary["best_" + task.metric],
    }
    log.info("lottery %s: %s", label, entry)
    return entry


lottery_ticket = method_function(LotteryConfig, "lottery_ticket")  # lottery_ticket(model, task, sparsity=0.8)
