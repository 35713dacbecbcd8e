"""Recipe steps of structured pruning: ``channels`` (CNNs), ``heads``, ``ffn``, ``layers``, ``width`` (transformers).

```yaml
- method: channels
  target_macs: 0.5        # keep half of the MACs (or: ratio: 0.3, the share of channels removed)
  criterion: taylor       # l1 | l2 | l2_bn | bn_scale | taylor | activation | random | a registered one
  scope: global           # global | uniform   (or ratios: {"layer3.*": 0.5})
  iterations: 2           # prune in steps, fine-tuning between them
  finetune: {epochs: 1, lr: 0.01}
  distill: 0.5            # fine-tune with the unpruned model's soft targets (KD weight; 0 = plain)
  exclude: [conv1]        # selectors of layers that keep their channels
```

``distill`` / ``distill_temperature`` are the KD spelling of every step that distils (the
``distill`` method and ``cofi`` too); the training options are one ``finetune:`` block (None:
no fine-tune), as in every step that trains (:class:`netslim.train.loop.TrainingStep`).

Every step shrinks the model physically and appends its prune plan to the artifact's
``info["prune_plans"]`` (replayable with :func:`netslim.prune.structured.replay`).

Transformer steps (``heads``, ``ffn``, ``layers``, ``width``) distil from the unpruned model
while they fine-tune: ``distill`` weighs the soft targets of its logits, ``distill_hidden`` the
hidden-state loss (relative MSE of every block output to the teacher block it came from, on the
teacher dims it kept: :mod:`netslim.distill.layerwise`)::

    finetune: {epochs: 1, optimizer: adamw, lr: 5.0e-5}
    distill: 0.5          # (1 - 0.5) x task loss + 0.5 x KD(logits, T = distill_temperature)
    distill_hidden: 1.0   # + 1.0 x hidden-state loss

In Python each step is a method function (``fn(model, data=None, **options) -> model``, the
step's notes on ``netslim.report_of(model)``): :func:`prune_channels`, :func:`prune_heads`,
:func:`prune_ffn`, :func:`drop_layers`, :func:`prune_width`.
"""

from __future__ import annotations

import itertools
import logging
from typing import Literal

from pydantic import Field, model_validator

from netslim.api import method_function
from netslim.core.config import register
from netslim.core.errors import NetslimError, bad_param
from netslim.core.selectors import Selector
from netslim.prune.criteria import get_criterion
from netslim.train.loop import FinetuneConfig, TrainingStep, fit

from .channels import shrink_channels, total_macs
from .importance import BNSparsity, GroupCriterion

log = logging.getLogger(__name__)


class _StructuredBase(TrainingStep):
    criterion: GroupCriterion = Field(
        "l2",
        description="how units rank, the lowest removed first: l1, l2, l2_bn, bn_scale (weights only), "
        "taylor (gradients), activation (calibration activations), random, or a group criterion "
        "registered with netslim.prune.register_criterion (netslim.prune.structured.importance)",
    )
    calibration_batches: int = Field(
        8, ge=1, description="batches of the training split for a criterion that needs data (taylor, activation)"
    )
    calibration_batch_size: int = Field(64, ge=1)
    iterations: int = Field(1, ge=1, le=50, description="prune in this many equal steps")
    finetune: FinetuneConfig | None = Field(None, description="fine-tuning after each iteration")
    distill: float = Field(
        0.0,
        ge=0,
        le=1,
        description="fine-tune with the soft targets (Hinton KD) of the "
        "unpruned model (the model before the recipe; outside a recipe, the model entering "
        "this step) with this weight; 0 = plain fine-tuning",
    )
    distill_temperature: float = Field(4.0, gt=0)
    min_keep_ratio: float = Field(0.1, gt=0, le=1)
    round_to: int = Field(1, ge=1, description="kept counts rounded up to a multiple of this")
    on_empty: Literal["clamp", "fail"] = "clamp"
    exclude: Selector = None


class ChannelsConfig(_StructuredBase):
    """Channel/filter pruning of a traceable CNN, physically removing coupled channel groups."""

    method = "channels"
    ratio: float | None = Field(None, ge=0, lt=1, description="share of channels removed")
    target_macs: float | None = Field(None, gt=0, lt=1, description="share of MACs kept")
    scope: Literal["global", "uniform"] = "global"
    ratios: dict[str, float] = Field(default_factory=dict, description="{selector: share removed}, per layer")
    bn_l1: float = Field(0.0, ge=0, description="network slimming: L1 penalty on BN scales while fine-tuning")

    @model_validator(mode="after")
    def _one_target(self):
        if sum(x is not None and x != {} for x in (self.ratio, self.target_macs, self.ratios or None)) != 1:
            raise ValueError("give exactly one of 'ratio', 'target_macs' or 'ratios'")
        bad = {k: v for k, v in self.ratios.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"'ratios' values must be in [0, 1]; got {bad}")
        return self

    @classmethod
    def example(cls) -> ChannelsConfig:
        return cls(ratio=0.25)


def _taylor_batches(task, cfg: _StructuredBase, seed: int):
    return list(itertools.islice(task.train_batches(seed, cfg.calibration_batch_size), cfg.calibration_batches))


def _needs_data(criterion: str) -> bool:
    """The criterion reads calibration batches (activations) or a loss on them (gradients)."""
    return get_criterion(criterion, "groups").needs != "weights"


def _distills(cfg) -> bool:
    return bool(cfg.distill or getattr(cfg, "distill_hidden", 0.0))


def _check_distill(cfg) -> None:
    """Distillation happens while fine-tuning: asking for it without ``finetune`` is an error, not a no-op."""
    if _distills(cfg) and cfg.finetune is None:
        raise ValueError("'distill' / 'distill_hidden' weigh the losses of the fine-tune: give 'finetune' too")


def _finetune(model, cfg, ctx, teacher, callbacks=()) -> dict:
    """The fine-tune after a pruning iteration; with ``cfg.distill`` / ``cfg.distill_hidden``, from
    ``teacher``'s soft targets and (transformers) hidden states."""
    from .generic import is_hf

    task = ctx.task
    if teacher is not None and is_hf(model):
        from netslim.distill.layerwise import layerwise_task

        task = layerwise_task(
            task,
            model,
            teacher=teacher.to(ctx.device),
            distill=cfg.distill,
            distill_temperature=cfg.distill_temperature,
            hidden_weight=getattr(cfg, "distill_hidden", 0.0),
        )
    elif teacher is not None:
        from netslim.distill import DistillConfig, DistillTask

        if getattr(cfg, "distill_hidden", 0.0):
            raise NetslimError(
                f"{cfg.method}: 'distill_hidden' matches transformer block outputs; a "
                f"{type(model).__name__} has none (use 'distill', or method distill with hints)."
            )

        kd = DistillConfig(distill=cfg.distill, distill_temperature=cfg.distill_temperature)
        task = DistillTask(task, teacher, kd)
    summary = fit(model.to(ctx.device), task, cfg.finetune, list(callbacks))
    return {k: v for k, v in summary.items() if k != "history"}


def _teacher(model, cfg, ctx):
    import copy

    if not _distills(cfg) or cfg.finetune is None:
        return None
    reference = getattr(ctx, "reference", None)
    teacher = reference() if reference is not None else copy.deepcopy(model)
    return teacher.to(ctx.device).eval().requires_grad_(False)


def _record(ctx, name: str, report: dict) -> None:
    ctx.info.setdefault("prune_plans", []).append(report["plan"])
    for s in report.get("skipped", []):
        ctx.skip(s["name"], s["reason"])
    note = {k: v for k, v in report.items() if k not in ("plan", "skipped")}
    ctx.notes.setdefault(name, []).append(note)


@register(ChannelsConfig)
def run_channels(model, cfg: ChannelsConfig, ctx):
    task = ctx.task
    example = task.example_inputs(1)
    base_macs = total_macs(model, example)
    teacher = _teacher(model, cfg, ctx)
    for it in range(1, cfg.iterations + 1):
        kwargs = dict(
            criterion=cfg.criterion,
            scope=cfg.scope,
            min_keep_ratio=cfg.min_keep_ratio,
            round_to=cfg.round_to,
            on_empty=cfg.on_empty,
            exclude=cfg.exclude or (),
            seed=ctx.seed + it,
        )
        frac = it / cfg.iterations
        if cfg.target_macs is not None:
            # geometric steps towards the target: each iteration removes the same share of MACs
            goal = cfg.target_macs**frac * base_macs
            kwargs["target_macs"] = min(0.999, goal / total_macs(model, example))
        elif cfg.ratio is not None:
            # keep (1 - ratio)^(it/n) of the original channels after iteration it
            kwargs["ratio"] = 1 - (1 - cfg.ratio) ** (1 / cfg.iterations)
        else:
            kwargs["ratios"] = {k: 1 - (1 - v) ** (1 / cfg.iterations) for k, v in cfg.ratios.items()}
        if _needs_data(cfg.criterion):
            kwargs.update(batches=_taylor_batches(task, cfg, ctx.seed + it), loss_fn=task.loss)
        model, report = shrink_channels(model, example, **kwargs)
        report["iteration"] = it
        _record(ctx, cfg.method, report)
        log.info("channels iteration %d: %d -> %d params", it, report["params_before"], report["params_after"])
        if cfg.finetune is not None:
            callbacks = [BNSparsity(cfg.bn_l1)] if cfg.bn_l1 else []
            ctx.notes[cfg.method][-1]["finetune"] = _finetune(model, cfg, ctx, teacher, callbacks)
    return model


# ---------------------------------------------------------------------- transformers
def _hidden_field():
    return Field(
        0.0,
        ge=0,
        description="transformers: weight of the hidden-state loss while fine-tuning (relative "
        "MSE of every block output to the unpruned block it came from); 0 = none",
    )


class _TransformerBase(_StructuredBase):
    ratio: float = Field(..., ge=0, lt=1, description="share of units removed")
    scope: Literal["global", "uniform"] = Field(
        "uniform", description="uniform: the same count in every block (the HF config can say it)"
    )
    distill_hidden: float = _hidden_field()

    @model_validator(mode="after")
    def _distill_needs_finetune(self):
        _check_distill(self)
        return self


class HeadsConfig(_TransformerBase):
    """Remove attention heads (Llama GQA: whole key/value groups) of a Hugging Face transformer."""

    method = "heads"

    @classmethod
    def example(cls) -> HeadsConfig:
        return cls(ratio=0.25)


class FFNConfig(_TransformerBase):
    """Remove FFN intermediate neurons of every block of a Hugging Face transformer."""

    method = "ffn"

    @classmethod
    def example(cls) -> FFNConfig:
        return cls(ratio=0.25)


class LayersConfig(TrainingStep):
    """Drop whole blocks, the ones that change their input least (block influence): transformer
    blocks of a Hugging Face model, or residual blocks (``y = f(x) + x``) of a CNN, which become
    the identity."""

    method = "layers"
    count: int | None = Field(None, ge=1, description="number of blocks removed, chosen on calibration data")
    indices: tuple[int, ...] | None = Field(
        None, description="or exactly these blocks (CNNs: positions in the list of removable residual blocks)"
    )
    names: tuple[str, ...] | None = Field(None, description="CNNs: or exactly these residual blocks, by module name")
    by: Literal["influence", "influence_per_ms"] = Field(
        "influence",
        description="with 'count', CNNs: least influence, or least influence per ms the block "
        "takes (measured), which removes slow blocks first among equally unimportant ones",
    )
    calibration_samples: int = Field(16, ge=1)
    finetune: FinetuneConfig | None = None
    distill: float = Field(
        0.0,
        ge=0,
        le=1,
        description="fine-tune with the soft targets of the unpruned model with this weight; 0 = plain fine-tuning",
    )
    distill_temperature: float = Field(4.0, gt=0)
    distill_hidden: float = _hidden_field()

    @model_validator(mode="after")
    def _one(self):
        if sum(v is not None for v in (self.count, self.indices, self.names)) != 1:
            raise ValueError("give exactly one of 'count', 'indices' or 'names'")
        _check_distill(self)
        return self

    @classmethod
    def example(cls) -> LayersConfig:
        return cls(count=1)

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the blocks named, indexed or counted can be dropped (a CNN's
        removable residual blocks come from one forward pass on ``task.example_inputs(1)``)."""
        from .blocks import check_block_choice, residual_blocks
        from .hf import _is_hf
        from .transformer import check_layer_choice

        if model is None:
            return
        if _is_hf(model):
            _check_transformer_options(self)
            check_layer_choice(model, self.count, self.indices)
            return
        if self.distill_hidden:
            raise NetslimError(
                "layers: 'distill_hidden' matches transformer block outputs; a "
                f"{type(model).__name__} has none (use 'distill')."
            )
        if task is not None:
            candidates = residual_blocks(model, task.example_inputs(1))
            if candidates or self.names is not None:  # none and no names: skipped at run time
                check_block_choice(model, candidates, self.count, _cnn_block_names(self, candidates))


def _not_transformer(model, ctx, method: str) -> bool:
    from .hf import _is_hf

    if _is_hf(model):
        return False
    ctx.skip(type(model).__name__, f"{method}: not a Hugging Face transformer (use method 'channels')")
    return True


_UNITS = {
    "heads": (
        "head",
        "attention-head",
        "BERT-style self.query/key/value, Llama-style q/k/v/o_proj with num_key_value_groups, GPT-2 c_attn",
    ),
    "ffn": ("neuron", "FFN", "gate/up/down_proj, BERT-style intermediate.dense + output.dense, GPT-2 c_fc + c_proj"),
}


def _nothing_pruned(model, cfg: _TransformerBase, ratio: float) -> str:
    """Why a heads / ffn pass removed nothing (no rule for this family, or a ratio that rounds to 0)."""
    from .hf import transformer_graph

    kind, what, known = _UNITS[cfg.method]
    sizes = sorted({g.size for g in transformer_graph(model, kinds=(kind,)).prunable()})
    if not sizes:
        return (
            f"{cfg.method}: no {what} rule for model_type {model.config.model_type!r} "
            f"(netslim knows {known}); nothing removed"
        )
    gqa = " (key/value groups)" if kind == "head" and getattr(model.config, "num_key_value_heads", None) else ""
    excluded = " or 'exclude' covers them" if cfg.exclude else ""
    return (
        f"{cfg.method}: ratio {ratio:.3g} removes no {kind}: blocks have {'/'.join(map(str, sizes))} "
        f"{kind}s{gqa}, too few for that share{excluded}; raise the ratio"
    )


def _run_transformer(model, cfg: _TransformerBase, ctx, fn):
    if _not_transformer(model, ctx, cfg.method):
        return model
    teacher = _teacher(model, cfg, ctx)
    for it in range(1, cfg.iterations + 1):
        kwargs = dict(
            criterion=cfg.criterion,
            scope=cfg.scope,
            min_keep_ratio=cfg.min_keep_ratio,
            round_to=cfg.round_to,
            on_empty=cfg.on_empty,
            exclude=cfg.exclude or (),
            seed=ctx.seed + it,
        )
        if _needs_data(cfg.criterion):
            kwargs.update(batches=_taylor_batches(ctx.task, cfg, ctx.seed + it), loss_fn=ctx.task.loss)
        ratio = 1 - (1 - cfg.ratio) ** (1 / cfg.iterations)
        model, report = fn(model, ratio, **kwargs)
        report["iteration"] = it
        if not report["groups"] and not report["skipped"]:  # no silent no-op: say why nothing changed
            report["skipped"] = [{"name": type(model).__name__, "reason": _nothing_pruned(model, cfg, ratio)}]
        _record(ctx, cfg.method, report)
        if cfg.finetune is not None:
            ctx.notes[cfg.method][-1]["finetune"] = _finetune(model, cfg, ctx, teacher)
    return model


@register(HeadsConfig)
def run_heads(model, cfg: HeadsConfig, ctx):
    from .transformer import shrink_heads

    return _run_transformer(model, cfg, ctx, shrink_heads)


@register(FFNConfig)
def run_ffn(model, cfg: FFNConfig, ctx):
    from .transformer import shrink_ffn

    return _run_transformer(model, cfg, ctx, shrink_ffn)


def _drop_cnn_blocks(model, cfg: LayersConfig, ctx):
    from .blocks import drop_residual_blocks, residual_blocks

    example = ctx.task.example_inputs(1)
    candidates = residual_blocks(model, example)
    if not candidates and cfg.names is None:  # nothing provably removable: skipped, with the reason
        ctx.skip(
            type(model).__name__,
            "layers: not a Hugging Face transformer and no residual block "
            "(y = f(x) + x with the input's shape) to remove",
        )
        return model, None
    names = _cnn_block_names(cfg, candidates)
    if names is not None:
        return drop_residual_blocks(model, example, names=list(names))
    x = ctx.task.calibration_inputs(cfg.calibration_samples, seed=ctx.seed)
    return drop_residual_blocks(
        model, example, cfg.count, batches=[x[i : i + 64] for i in range(0, len(x), 64)], by=cfg.by
    )


def _cnn_block_names(cfg: LayersConfig, candidates: list[str]) -> tuple[str, ...] | None:
    """The residual blocks ``cfg`` names directly or by position (None: chosen by ``count``)."""
    if cfg.indices is None:
        return cfg.names
    bad = [i for i in cfg.indices if not 0 <= i < len(candidates)]
    if bad:
        raise bad_param(
            "layers",
            "indices",
            f"positions in [0, {len(candidates) - 1}] of the removable residual blocks {candidates}",
            list(cfg.indices),
        )
    return tuple(candidates[i] for i in cfg.indices)


def _check_transformer_options(cfg: LayersConfig) -> None:
    if cfg.names is not None:
        raise bad_param(
            "layers",
            "names",
            "'count' or 'indices' for a transformer ('names' is for CNN residual blocks)",
            list(cfg.names),
        )
    if cfg.by != "influence":
        raise bad_param(
            "layers", "by", "'influence' for a transformer ('influence_per_ms' is for CNN residual blocks)", cfg.by
        )


@register(LayersConfig)
def run_layers(model, cfg: LayersConfig, ctx):
    from .hf import _is_hf
    from .transformer import drop_transformer_blocks

    teacher = _teacher(model, cfg, ctx)
    if not _is_hf(model):
        model, report = _drop_cnn_blocks(model, cfg, ctx)
        if report is None:
            return model
    else:
        _check_transformer_options(cfg)
        if cfg.indices is not None:
            model, report = drop_transformer_blocks(model, len(cfg.indices), indices=list(cfg.indices))
        else:
            inputs = ctx.task.calibration_inputs(cfg.calibration_samples, seed=ctx.seed)
            batches = [
                {k: v[i : i + 4] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[i : i + 4]
                for i in range(0, cfg.calibration_samples, 4)
            ]
            model, report = drop_transformer_blocks(model, cfg.count, batches)
    _record(ctx, cfg.method, report)
    if cfg.finetune is not None:
        ctx.notes[cfg.method][-1]["finetune"] = _finetune(model, cfg, ctx, teacher)
    return model


# ---------------------------------------------------------------------------- width
class WidthConfig(TrainingStep):
    """Hidden-size pruning of a Hugging Face transformer (BERT, GPT-2, Llama family): the residual
    stream narrower in the embeddings, every block, every norm and the head; config updated."""

    method = "width"
    hidden_size: int | None = Field(
        None, ge=1, description="the new width (BERT / GPT-2: a multiple of the head size; whole heads go with it)"
    )
    ratio: float | None = Field(None, ge=0, lt=1, description="or the share of hidden dims removed")
    criterion: GroupCriterion = Field(
        "activation",
        description="how hidden dims rank: activation (Minitron: RMS of every norm's output per dim on "
        "calibration data), or any group criterion over the residual stream's weight slices (l2, taylor, "
        "random, ... or one registered with netslim.prune.register_criterion)",
    )
    calibration_batches: int = Field(8, ge=1)
    calibration_batch_size: int = Field(16, ge=1)
    norm_correction: bool = Field(
        True, description="rescale each norm by its mean statistic ratio (kept dims / all dims) on calibration data"
    )
    finetune: FinetuneConfig | None = None
    distill: float = Field(
        0.0,
        ge=0,
        le=1,
        description="fine-tune with the soft targets of the unpruned model with this weight; 0 = plain fine-tuning",
    )
    distill_temperature: float = Field(4.0, gt=0)
    distill_hidden: float = _hidden_field()

    @model_validator(mode="after")
    def _one(self):
        if (self.hidden_size is None) == (self.ratio is None):
            raise ValueError("give exactly one of 'hidden_size' or 'ratio'")
        _check_distill(self)
        return self

    @classmethod
    def example(cls) -> WidthConfig:
        return cls(ratio=0.25)

    def preflight(self, model, task) -> None:
        """Before a recipe runs: a transformer family with a width rule and a width its config can say
        (checked on shapes only; outside a recipe, a model that is not a transformer is skipped)."""
        from .width import target_width

        if model is not None:
            target_width(model, self.hidden_size, self.ratio)


@register(WidthConfig)
def run_width(model, cfg: WidthConfig, ctx):
    from .width import shrink_width

    if _not_transformer(model, ctx, cfg.method):
        return model
    teacher = _teacher(model, cfg, ctx)
    batches = None
    if _needs_data(cfg.criterion) or cfg.norm_correction:
        batches = _taylor_batches(ctx.task, cfg, ctx.seed)
    model, report = shrink_width(
        model,
        cfg.hidden_size,
        ratio=cfg.ratio,
        criterion=cfg.criterion,
        batches=batches,
        loss_fn=ctx.task.loss,
        seed=ctx.seed,
        norm_correction=cfg.norm_correction,
    )
    _record(ctx, cfg.method, report)
    log.info("width %d: %d -> %d params", report["hidden_size"], report["params_before"], report["params_after"])
    if cfg.finetune is not None:
        ctx.notes[cfg.method][-1]["finetune"] = _finetune(model, cfg, ctx, teacher)
    return model


# The methods in plain Python (netslim.api.method_function): fn(model, data=None, **options) -> model.
prune_channels = method_function(ChannelsConfig, "prune_channels")
prune_heads = method_function(HeadsConfig, "prune_heads")
prune_ffn = method_function(FFNConfig, "prune_ffn")
drop_layers = method_function(LayersConfig, "drop_layers")
prune_width = method_function(WidthConfig, "prune_width")
