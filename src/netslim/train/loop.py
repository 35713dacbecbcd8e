"""A plain training loop with callbacks at step and epoch boundaries.

Schedules of later methods (gradual pruning, RigL updates, QAT freezing) hook in as
:class:`Callback` objects; ``extra_loss`` lets a callback add a penalty (L0, BN-L1).
Under ``torch.distributed`` (e.g. ``torchrun``) the same loop trains data-parallel:
see :mod:`netslim.train.parallel`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from netslim.core.config import MethodConfig
from netslim.core.errors import NetslimError
from netslim.core.progress import progress
from netslim.train.parallel import DataParallel
from netslim.train.tasks import Task

log = logging.getLogger(__name__)


# Upper bounds on counts, so that a typo (``epochs: 1000000000000``) is an error, not a run
# that never ends; far above any real run (the shipped recipes use <= 30 epochs).
MAX_EPOCHS = 10_000
MAX_STEPS = 100_000_000
MAX_BATCH = 1 << 20


class TrainConfig(MethodConfig):
    """Training hyper-parameters (the ``train`` recipe step)."""

    method = "train"
    epochs: int = Field(10, ge=0, le=MAX_EPOCHS)
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="stop after this many steps (smoke runs)")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_EPOCHS)
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_clip: float | None = Field(None, gt=0)
    select_best: bool = Field(True, description="restore the weights with the best validation metric")
    eval_split: str = "val"
    seed: int = Field(0, ge=0, le=2**63 - 1)  # torch.manual_seed's range
    keeps_modules: ClassVar[bool] = True  # trains the parameters there are (netslim.recipe.preflight)
    data_parallel: ClassVar[bool] = True  # under torchrun: every rank trains (netslim.train.parallel)

    @classmethod
    def example(cls) -> TrainConfig:
        return cls(epochs=1, max_steps=2, batch_size=32)


class FinetuneConfig(TrainConfig):
    """Fine-tuning after compression: the same loop with gentler defaults. Also the one shape
    of the training options of every step that trains (see :class:`TrainingStep`)."""

    method = "finetune"
    epochs: int = Field(2, ge=0, le=MAX_EPOCHS)
    lr: float = Field(0.01, gt=0)
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_EPOCHS)


# Keys of the training options; at the top level of a TrainingStep they are the old (flat) spelling.
TRAINING_OPTIONS: frozenset[str] = frozenset(FinetuneConfig.model_fields) | {"lr_schedule"}


def finetune_field(description: str, **defaults: Any) -> Any:
    """The ``finetune:`` field of a :class:`TrainingStep` whose training defaults are ``defaults``
    (the rest: FinetuneConfig's); a partial ``finetune:`` mapping keeps them for the keys it omits."""
    return Field(default_factory=lambda: FinetuneConfig(**defaults), description=description)


class TrainingStep(MethodConfig):
    """Base of a step that trains as part of its work. Its training options are one
    :class:`FinetuneConfig` nested under ``finetune:`` (cofi, which trains twice, nests its
    mask-learning run under ``train:`` too): ``finetune: {epochs: 3, lr: 0.05}``.

    * A ``finetune:`` mapping is read over the step's own training defaults (those of
      :func:`finetune_field`): keys it leaves out keep the method's values, not FinetuneConfig's.
      A :class:`FinetuneConfig` instance is taken as it is.
    * The old flat spelling (``epochs: 3`` beside the step's other fields, ``lr_schedule``) and
      the names in ``renamed`` are refused with a message naming the new spelling.
    """

    training_key: ClassVar[str] = "finetune"  # where the old flat training options moved
    min_epochs: ClassVar[int] = 0  # of that run; >= 1 where the work happens while training
    renamed: ClassVar[dict[str, str]] = {}  # old field name -> new one

    @model_validator(mode="before")
    @classmethod
    def _training_options(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        for old, new in cls.renamed.items():
            if old in data:
                raise ValueError(f"'{old}' is now spelled '{new}' ({new}: ...)")
        flat = [k for k in data if k in TRAINING_OPTIONS and k not in cls.model_fields]
        if flat:
            new = "schedule" if flat[0] == "lr_schedule" else flat[0]
            raise ValueError(
                f"'{flat[0]}' is a training option: set it under '{cls.training_key}:' "
                f"({cls.training_key}: {{{new}: ...}})"
            )
        merged = dict(data)
        for name, info in cls.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if isinstance(default, FinetuneConfig) and isinstance(data.get(name), Mapping):
                merged[name] = {**default.model_dump(include=default.model_fields_set), **data[name]}
        return merged

    @model_validator(mode="after")
    def _enough_epochs(self):
        value = getattr(self, self.training_key, None)
        if isinstance(value, FinetuneConfig) and value.epochs < self.min_epochs:
            raise ValueError(
                f"'{self.training_key}.epochs' must be >= {self.min_epochs}: {self.method} does its work while training"
            )
        return self


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    task: Task
    total_steps: int
    step: int = 0
    epoch: int = 0
    loss: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False
    # A callback that is still changing the model's structure (e.g. a sparsity schedule)
    # sets this False so that best-on-validation never restores an earlier structure.
    can_checkpoint: bool = True


class Callback:
    """Hooks into :func:`fit`. Override what you need; all default to no-ops."""

    def on_train_begin(self, state: TrainState) -> None: ...
    def on_step_begin(self, state: TrainState) -> None: ...
    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        return None

    def on_after_backward(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm scales (standard practice; they don't overfit).
    decay, no_decay = [], []
    for _n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if not decay and not no_decay:
        raise NetslimError("Cannot train: the model has no trainable parameters.")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr)


def lr_factor(cfg: TrainConfig, step: int, total: int, warmup: int) -> float:
    """Multiplier of the base LR at ``step`` (linear warm-up, then the schedule)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    # onecycle (after warm-up): linear decay to zero
    return max(0.0, 1.0 - t)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def fit(model: nn.Module, task: Task, cfg: TrainConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train ``model`` in place on ``task``; returns a summary with the per-epoch history.

    Under an initialised process group of N > 1 ranks: data-parallel, ``cfg.batch_size`` rows per
    step over all ranks (:mod:`netslim.train.parallel`)."""
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    par = DataParallel(model, cfg.batch_size)  # checks the batch divides over the ranks
    steps_per_epoch = task.steps_per_epoch(cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps) if total else cfg.max_steps
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    opt = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    state = TrainState(model, opt, task, total)
    best_metric, best_state = None, None
    sign = 1 if task.higher_is_better else -1
    started = time.perf_counter()
    for cb in callbacks:
        cb.on_train_begin(state)
    model.train()
    epochs = cfg.epochs if cfg.epochs else 1
    while state.step < total and not state.stop and state.epoch < epochs + (1 if cfg.max_steps else 0):
        loss_sum, n = 0.0, 0
        batches = task.train_batches(state.epoch, cfg.batch_size)
        if par.main:
            batches = progress(batches, f"epoch {state.epoch + 1}", steps_per_epoch)
        for batch in batches:
            if state.step >= total or state.stop:
                break
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * lr_factor(cfg, state.step, total, warmup)
            for cb in callbacks:
                cb.on_step_begin(state)
            with _autocast(cfg, device):
                loss = task.loss(par.net(), par.shard(batch))
                for cb in callbacks:
                    extra = cb.extra_loss(state)
                    if extra is not None:
                        loss = loss + extra
            value = par.loss_value(loss)  # the mean over the ranks
            if not math.isfinite(value):
                raise NetslimError(f"Training diverged at step {state.step} (loss={value}); lower 'lr'.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            for cb in callbacks:
                cb.on_after_backward(state)
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            state.step += 1
            state.loss = value
            loss_sum, n = loss_sum + state.loss, n + 1
            for cb in callbacks:
                cb.on_step_end(state)
        metrics = par.evaluate(task, cfg.eval_split)  # rank 0's, on every rank
        entry = {
            "epoch": state.epoch + 1,
            "step": state.step,
            "train_loss": loss_sum / max(n, 1),
            **{f"{cfg.eval_split}_{k}": v for k, v in metrics.items()},
        }
        state.history.append(entry)
        log.info("epoch %d: %s", state.epoch + 1, entry)
        value = metrics[task.metric]
        if cfg.select_best and state.can_checkpoint and (best_metric is None or sign * value > sign * best_metric):
            best_metric, best_state = value, copy.deepcopy(model.state_dict())
        state.epoch += 1
        for cb in callbacks:
            cb.on_epoch_end(state)
        model.train()
    for cb in callbacks:
        cb.on_train_end(state)
    if cfg.select_best and best_state is not None:
        model.load_state_dict(best_state)
    par.finish()  # rank 0's buffers everywhere; every rank checked to hold the same weights
    model.eval()
    summary = {
        "steps": state.step,
        "epochs": state.epoch,
        "seconds": time.perf_counter() - started,
        "best_" + task.metric: best_metric,
        "history": state.history,
    }
    return summary | ({"processes": par.size} if par.active else {})
