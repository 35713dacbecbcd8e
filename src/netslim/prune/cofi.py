"""CoFi pruning (Xia, Zhong & Chen 2022, "Structured Pruning Learns Compact and Accurate Models").

```yaml
- method: cofi
  sparsity: 0.5            # share of the blocks' attention + FFN weight elements removed
  prune: [attention, heads, ffn, neurons, hidden]
  train: {epochs: 3}       # mask learning, with distillation from the unpruned model
  distill: 0.5             # (1 - 0.5) x task loss + 0.5 x KD(logits, T = distill_temperature)
  distill_hidden: 1.0      # + hidden-state loss, CoFi's dynamic layer mapping
  finetune: {epochs: 2, optimizer: adamw, lr: 5.0e-5}   # after shrinking, same distillation
```

Masks at five granularities (:mod:`netslim.prune.cofi_masks`; hard-concrete gates of
:class:`netslim.prune.l0.HardConcreteGate`) are learned with the model. A Lagrangian drives the
expected sparsity ``s`` (1 - expected size / full size) to a target ``t`` that ramps linearly
from 0 to ``sparsity`` over ``warmup_fraction`` of the steps (CoFi's sparsity warm-up)::

    loss = distillation loss + lambda_1 * (s - t) + lambda_2 * (s - t)^2

the gates descend (Adam, ``gate_lr``), the multipliers ascend (Adam with ``maximize``,
``lambda_lr``). The distillation is CoFi's: logits (Hinton KD) plus the hidden states of every
other teacher block (``hidden_layers``), each matched to the closest student block whose FFN is
still open, through a learned map ``W`` (identity at the start; dropped at the end)
(:class:`netslim.distill.layerwise.LayerwiseDistillTask`).

At the end the masks are made permanent (:meth:`CoFiMasks.final`: the expected number of open
gates per vector, by ``log_alpha``; gate values folded into the weights) and the model shrinks
physically: head / neuron prune plans, a width plan for the hidden dims (with the norm
correction of :mod:`netslim.prune.structured.width`), and blocks whose attention or FFN is
closed get a skipped sublayer (:mod:`netslim.prune.structured.skip`). Per-block head counts:
the result reloads with ``netslim.load`` (plans replayed, skipped sublayers rebuilt), not with
``from_pretrained``.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from netslim.api import method_function
from netslim.core.config import register
from netslim.core.errors import NetslimError
from netslim.core.hooks import hooked
from netslim.measure.counts import count_params
from netslim.prune._api import check_fraction, need_task
from netslim.train.loop import Callback, FinetuneConfig, TrainingStep, TrainState, finetune_field, fit

from .cofi_masks import GRANULARITIES, CoFiMasks, CoFiStructure, cofi_structure, fold, mask_hooks, size_of

log = logging.getLogger(__name__)
Granularity = Literal["attention", "heads", "ffn", "neurons", "hidden"]


class CoFiConfig(TrainingStep):
    """CoFi: hard-concrete masks on layers, heads, FFN layers, neurons and hidden dims, learned toward
    a target share of the blocks' parameters with distillation, then made permanent (shrunk)."""

    method = "cofi"
    sparsity: float = Field(0.5, description="share of the blocks' attention + FFN weight elements removed, in (0, 1)")
    prune: tuple[Granularity, ...] = Field(GRANULARITIES, min_length=1, description="mask granularities")
    exclude_layers: tuple[int, ...] = Field((), description="blocks whose layers, heads and neurons stay")
    init_keep: float = Field(0.9, gt=0, lt=1, description="initial sigmoid(log_alpha) of every gate")
    gate_lr: float = Field(0.01, gt=0, description="Adam learning rate of log_alpha")
    lambda_lr: float = Field(0.01, gt=0, description="Adam (ascent) learning rate of the Lagrange multipliers")
    warmup_fraction: float = Field(0.5, ge=0, le=1, description="the target ramps 0 -> sparsity over this share")
    distill: float = Field(0.5, ge=0, le=1, description="weight of the soft targets (1 - distill: the task loss)")
    distill_temperature: float = Field(2.0, gt=0)
    distill_hidden: float = Field(1.0, ge=0, description="weight of the hidden-state loss")
    hidden_layers: Literal["every_other", "all"] = Field(
        "every_other", description="teacher blocks matched by the hidden-state loss (CoFi: every other one)"
    )
    exact: bool = Field(
        True,
        description="final masks closed / reopened by log_alpha until the blocks' size meets "
        "the target (else CoFi's per-vector rounding of the expected counts)",
    )
    norm_correction: bool = Field(True, description="rescale the norms when hidden dims go (see method width)")
    calibration_batches: int = Field(4, ge=1, description="for the norm correction")
    calibration_batch_size: int = Field(16, ge=1)
    # CoFi trains twice: the mask learning (train:, transformer defaults) and the recovery (finetune:)
    train: FinetuneConfig = finetune_field(
        "mask learning, with the distillation; its seed also picks the calibration batches",
        epochs=3,
        lr=5e-5,
        batch_size=32,
        optimizer="adamw",
        weight_decay=0.0,
    )
    finetune: FinetuneConfig | None = Field(None, description="recovery after shrinking, with the same distillation")
    training_key: ClassVar[str] = "train"  # the old flat training options were the mask learning's

    keeps_modules: ClassVar[bool] = False

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        check_fraction(v)
        if v == 0:
            raise ValueError("must be a float in (0, 1): 0 removes nothing")
        return v

    @model_validator(mode="after")
    def _distinct(self):
        if len(set(self.prune)) != len(self.prune):
            raise ValueError(f"'prune' lists a granularity twice: {list(self.prune)}")
        return self

    @classmethod
    def example(cls) -> CoFiConfig:
        return cls(sparsity=0.5, train={"epochs": 1, "max_steps": 2, "batch_size": 8})

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the blocks resolve (one trace) and the target is reachable."""
        from netslim.prune.structured.generic import is_hf

        if model is not None and is_hf(model):
            example = task.example_inputs(2) if task is not None else None
            check_reachable(cofi_structure(model, example, self.exclude_layers), self)


def max_sparsity(struct: CoFiStructure, cfg: CoFiConfig) -> float:
    """The largest sparsity the masks ``cfg`` allows can reach (excluded blocks and closed
    granularities stay; at least one hidden dim stays)."""
    att = bool({"attention", "heads"} & set(cfg.prune))
    ffn = bool({"ffn", "neurons"} & set(cfg.prune))
    floor = 0.0
    for i, (h, f) in enumerate(zip(struct.heads, struct.neurons)):
        if i in struct.excluded or not att:
            floor += h.size * h.cost
        if i in struct.excluded or not ffn:
            floor += f.size * f.cost
    hidden = 1 if "hidden" in cfg.prune else struct.hidden
    return 1 - floor * hidden / struct.full_size()


def check_reachable(struct: CoFiStructure, cfg: CoFiConfig) -> None:
    top = max_sparsity(struct, cfg)
    if cfg.sparsity > top:
        raise NetslimError(
            f"cofi: sparsity {cfg.sparsity:g} cannot be reached: with prune {list(cfg.prune)} and "
            f"exclude_layers {list(cfg.exclude_layers)}, no mask removes more than {top:.4g} of the "
            f"blocks' {struct.full_size():,.0f} weight elements; lower 'sparsity' to at most "
            f"{math.floor(top * 1000) / 1000:g} or allow more granularities."
        )


# --------------------------------------------------------------------------- training
class CoFiLagrangian(Callback):
    """Adds ``l1 (s - t) + l2 (s - t)^2``, steps the gates (descent) and the multipliers (ascent)."""

    def __init__(self, masks: CoFiMasks, cfg: CoFiConfig, extra: list[nn.Parameter] = ()):
        self.masks, self.cfg, self.extra = masks, cfg, list(extra)
        self.lam = torch.zeros(2, requires_grad=True)
        self.total, self.trace, self.last = 1, [], {}
        self.opt = self.opt_extra = self.opt_lam = None

    def on_train_begin(self, state: TrainState) -> None:
        gates = list(self.masks.parameters())
        for p in (*gates, *self.extra):
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(gates, lr=self.cfg.gate_lr)
        self.opt_extra = torch.optim.AdamW(self.extra, lr=self.cfg.train.lr) if self.extra else None
        self.opt_lam = torch.optim.Adam([self.lam], lr=self.cfg.lambda_lr, maximize=True)
        self.total = max(1, state.total_steps)
        state.can_checkpoint = False  # the structure changes until the end: no earlier best epoch

    def target(self, step: int) -> float:
        ramp = self.cfg.warmup_fraction * self.total
        return self.cfg.sparsity if ramp <= 0 else self.cfg.sparsity * min(1.0, step / ramp)

    def extra_loss(self, state: TrainState) -> torch.Tensor:
        s = self.masks.expected_sparsity()
        t = self.target(state.step)
        gap = s - t
        self.last = {
            "step": state.step,
            "expected_sparsity": float(s.detach()),
            "target": t,
            "lambda_1": float(self.lam[0].detach()),
            "lambda_2": float(self.lam[1].detach()),
        }
        term = self.lam[0] * gap + self.lam[1] * gap * gap
        dev = next(iter(self.masks.parameters())).device
        return term.to(dev)

    def on_after_backward(self, state: TrainState) -> None:
        for opt in (self.opt, self.opt_extra, self.opt_lam):
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        if state.step % 50 == 0:
            self.trace.append(dict(self.last))

    def on_train_end(self, state: TrainState) -> None:
        for p in (*self.masks.parameters(), *self.extra):
            p.requires_grad_(False)


def _teacher_blocks(n: int, which: str) -> list[int]:
    return list(range(n)) if which == "all" or n < 2 else list(range(1, n, 2))


def _distill_task(task, model: nn.Module, teacher: nn.Module | None, cfg: CoFiConfig, masks: CoFiMasks):
    from netslim.distill.layerwise import LayerwiseDistillTask

    if teacher is None:
        return task, None
    transform = None
    if cfg.distill_hidden:
        d = int(model.config.hidden_size)
        transform = nn.Linear(d, d, bias=False).to(next(model.parameters()).device)
        with torch.no_grad():
            transform.weight.copy_(torch.eye(d))
    n = len(masks.struct.blocks)

    def alive() -> list[int]:
        if "ffn" not in masks.gates:
            return list(range(n))
        return [i for i, p in enumerate(masks._layer_open("ffn").tolist()) if p >= 0.5] or list(range(n))

    t = LayerwiseDistillTask(
        task,
        teacher,
        distill=cfg.distill,
        distill_temperature=cfg.distill_temperature,
        hidden_weight=cfg.distill_hidden,
        dynamic=_teacher_blocks(n, cfg.hidden_layers),
        candidates=alive,
        transform=transform,
    )
    return t, transform


def cofi_train(model: nn.Module, task, *, cfg: CoFiConfig, teacher: nn.Module | None = None) -> dict[str, Any]:
    """Learn CoFi's masks with ``model`` (in place), make them permanent and shrink the model.
    Returns the fit summary, the masks' end state, the plans and the sizes."""
    example = task.example_inputs(2)
    struct = cofi_structure(model, example, cfg.exclude_layers)
    check_reachable(struct, cfg)
    device = next(model.parameters()).device
    masks = CoFiMasks(struct, cfg.prune, cfg.init_keep, device)
    dtask, transform = _distill_task(task, model, teacher, cfg, masks)
    cb = CoFiLagrangian(masks, cfg, list(transform.parameters()) if transform is not None else [])
    with hooked(mask_hooks(model, masks), root=model):
        summary = fit(model, dtask, cfg.train, [cb])
    expected_end = float(masks.expected_sparsity())
    z = masks.final((1 - cfg.sparsity) * struct.full_size() if cfg.exact else None)
    batches = _calibration(task, cfg) if cfg.norm_correction and "hidden" in z else None
    report = shrink_to_masks(model, struct, z=z, batches=batches)
    return (
        {k: v for k, v in summary.items() if k != "history"}
        | report
        | {"expected_sparsity_end": expected_end, "target_sparsity": cfg.sparsity, "lagrangian_trace": cb.trace}
    )


def _calibration(task, cfg: CoFiConfig) -> list[Any]:
    import itertools

    return list(
        itertools.islice(task.train_batches(cfg.train.seed + 1, cfg.calibration_batch_size), cfg.calibration_batches)
    )


# ------------------------------------------------------------------------ permanent
def _closed(z: dict[str, Any], layer_key: str, unit_key: str, i: int) -> bool:
    return (layer_key in z and float(z[layer_key][i]) == 0.0) or (
        unit_key in z and not bool((z[unit_key][i] > 0).any())
    )


def shrink_to_masks(
    model: nn.Module, struct: CoFiStructure, *, z: dict[str, Any], batches: list[Any] | None = None
) -> dict[str, Any]:
    """Fold the fixed masks ``z`` into ``model`` and shrink it (module docstring); returns the report."""
    from netslim.prune.structured.hf import hf_fixups
    from netslim.prune.structured.plan import apply_plan, plan_from_keep
    from netslim.prune.structured.skip import skip_attention, skip_ffn
    from netslim.prune.structured.width import shrink_width

    before = count_params(model)
    size_full, size_left = struct.full_size(), size_of(struct, z)
    fold(model, struct, z=z)
    n = len(struct.blocks)
    dead_att = [i for i in range(n) if _closed(z, "attention", "heads", i)]
    dead_ffn = [i for i in range(n) if _closed(z, "ffn", "neurons", i)]
    keeps: dict[int, torch.Tensor] = {}
    for key, units, dead in (("heads", struct.heads, dead_att), ("neurons", struct.neurons, dead_ffn)):
        if key not in z:
            continue
        for i, u in enumerate(units):
            kept = (z[key][i] > 0).nonzero().flatten().cpu()
            if i not in dead and len(kept) < u.size:
                keeps[u.group.id] = kept
    plans = []
    if keeps:
        plan = plan_from_keep(struct.graph, keeps)
        plan.config, attrs = hf_fixups(model, struct.graph, keeps)
        plan.attrs += attrs
        apply_plan(model, plan, "shrink")
        plans.append(plan.to_dict())
    width_report = None
    if "hidden" in z and int((z["hidden"] > 0).sum()) < struct.hidden:
        keep = (z["hidden"] > 0).nonzero().flatten().cpu()
        example = batches[0] if batches else None
        model, width_report = shrink_width(
            model,
            len(keep),
            keep=keep,
            coupled=False,
            batches=batches,
            norm_correction=bool(batches),
            example_inputs=_inputs(example),
        )
        plans.append(width_report["plan"])
    for i in dead_att:
        skip_attention(model.get_submodule(struct.blocks[i]))
    for i in dead_ffn:
        skip_ffn(model.get_submodule(struct.blocks[i]))
    return {
        "params_before": before,
        "params_after": count_params(model),
        "plans": plans,
        "block_size_full": int(round(size_full)),
        "block_size_after": size_left,
        "sparsity": 1 - size_left / size_full,
        "attention_layers_removed": dead_att,
        "ffn_layers_removed": dead_ffn,
        "heads_kept": [
            int((z["heads"][i] > 0).sum()) if "heads" in z and i not in dead_att else (0 if i in dead_att else u.size)
            for i, u in enumerate(struct.heads)
        ],
        "neurons_kept": [
            int((z["neurons"][i] > 0).sum())
            if "neurons" in z and i not in dead_ffn
            else (0 if i in dead_ffn else u.size)
            for i, u in enumerate(struct.neurons)
        ],
        "hidden_kept": int((z["hidden"] > 0).sum()) if "hidden" in z else struct.hidden,
        "norm_factors": width_report["norm_factors"] if width_report else {},
    }


def _inputs(batch: Any) -> Any:
    from netslim.prune.structured.importance import _inputs_of

    return None if batch is None else _inputs_of(batch)


# ------------------------------------------------------------------------------ step
@register(CoFiConfig)
def run_cofi(model: nn.Module, cfg: CoFiConfig, ctx) -> nn.Module:
    from netslim.prune.structured.generic import is_hf

    if not is_hf(model):
        ctx.skip(type(model).__name__, "cofi: not a Hugging Face transformer (use method 'channels' or 'l0')")
        return model
    task = need_task(ctx, cfg.method)
    teacher = None
    if cfg.distill or cfg.distill_hidden:
        teacher = ctx.reference() if getattr(ctx, "reference", None) is not None else copy.deepcopy(model)
        teacher = teacher.to(ctx.device).eval().requires_grad_(False)
    summary = cofi_train(model.to(ctx.device), task, cfg=cfg, teacher=teacher)
    ctx.info.setdefault("prune_plans", []).extend(summary["plans"])
    note = {k: v for k, v in summary.items() if k not in ("plans", "lagrangian_trace")}
    log.info(
        "cofi: block sparsity %.3f (target %.3f), %d -> %d params",
        summary["sparsity"],
        cfg.sparsity,
        summary["params_before"],
        summary["params_after"],
    )
    if cfg.finetune is not None:
        from netslim.distill.layerwise import layerwise_task

        ft_task = (
            task
            if teacher is None
            else layerwise_task(
                task,
                model,
                teacher=teacher,
                distill=cfg.distill,
                distill_temperature=cfg.distill_temperature,
                hidden_weight=cfg.distill_hidden,
            )
        )
        ft = fit(model, ft_task, cfg.finetune)
        note["finetune"] = {k: v for k, v in ft.items() if k != "history"}
    ctx.notes[cfg.method] = note
    return model


cofi_prune = method_function(CoFiConfig, "cofi_prune")  # cofi_prune(model, task, sparsity=0.5)


__all__ = [
    "CoFiConfig",
    "CoFiLagrangian",
    "check_reachable",
    "cofi_prune",
    "cofi_train",
    "max_sparsity",
    "shrink_to_masks",
]
