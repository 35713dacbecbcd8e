"""Quantization-aware training: LSQ fake quantization -> the same int8 artifact as PTQ.

``prepare_qat`` folds BatchNorm into convolutions (one traced batch, as PTQ does) and swaps
Conv2d / Linear for :class:`QATConv2d` / :class:`QATLinear`: per-channel signed weights and
per-tensor activations, each with a learnable step size (LSQ, Esser et al. 2020) and a
straight-through estimator for rounding. ``convert_qat`` reads the learned steps, observes
output ranges, and builds :class:`Int8Conv2d` / :class:`Int8Linear` (weights of
``weight_bits`` < 8 are stored packed at their real width - two 4-bit codes per byte - and
unpacked to int8 for the int8 kernels).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from netslim.api import method_function
from netslim.core.config import register
from netslim.core.conv import conv_kwargs
from netslim.core.errors import NetslimError
from netslim.core.hooks import hooked
from netslim.core.masks import get_mask, set_mask
from netslim.core.selectors import Selector, select
from netslim.core.serialize import register_module
from netslim.core.surgery import get_module, replace_module
from netslim.train.loop import FinetuneConfig, TrainingStep, finetune_field, fit

from .int8_modules import int8_twin
from .observers import make_observer
from .ptq import _trace_pairs, fold_bn, static_int8_preflight
from .qat_prune import QATPrune, run_with_pruning


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x forward, gradient multiplied by g backward (LSQ's step-size gradient scaling)."""
    return (x - x * g).detach() + x * g


class LSQ(nn.Module):
    """Learned-step-size fake quantizer: ``round(clamp(x / s, qmin, qmax)) * s``.

    ``channels`` > 0: one step per slice of dim 0 (weights); 0: one step (activations).
    Activations pick unsigned [0, 2^b - 1] when the first batch is non-negative (post-ReLU),
    signed otherwise; the step is initialised from the first batch as 2 mean|x| / sqrt(qmax).
    """

    def __init__(self, bits: int, channels: int = 0, signed: bool = True):
        super().__init__()
        self.bits, self.channels = bits, channels
        self.scale = nn.Parameter(torch.ones(max(channels, 1)))
        self.register_buffer("signed", torch.tensor(signed))
        self.register_buffer("initialized", torch.tensor(False))

    def qrange(self) -> tuple[int, int]:
        if bool(self.signed):
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (-1,) + (1,) * (x.dim() - 1) if self.channels else (1,)

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        if not self.channels:
            self.signed.fill_(bool((x < 0).any()))
        qmax = self.qrange()[1]
        dims = tuple(range(1, x.dim())) if self.channels else tuple(range(x.dim()))
        init = 2 * x.abs().mean(dim=dims) / math.sqrt(qmax)
        self.scale.copy_(init.clamp_min(1e-8).reshape(self.scale.shape))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self._init(x.detach())
        qmin, qmax = self.qrange()
        per = x.numel() / self.scale.numel()
        s = grad_scale(self.scale.abs().clamp_min(1e-8), 1.0 / math.sqrt(per * qmax)).reshape(self._shape(x))
        return round_ste(torch.clamp(x / s, qmin, qmax)) * s


class QATConv2d(nn.Conv2d):
    def __init__(self, *args, weight_bits: int = 4, act_bits: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.weight_fq = LSQ(weight_bits, self.out_channels, signed=True)
        self.input_fq = LSQ(act_bits)

    def forward(self, x):
        return self._conv_forward(self.input_fq(x), self.weight_fq(self.weight), self.bias)


class QATLinear(nn.Linear):
    def __init__(self, *args, weight_bits: int = 4, act_bits: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.weight_fq = LSQ(weight_bits, self.out_features, signed=True)
        self.input_fq = LSQ(act_bits)

    def forward(self, x):
        return F.linear(self.input_fq(x), self.weight_fq(self.weight), self.bias)


register_module(QATConv2d, lambda m: conv_kwargs(m) | {"weight_bits": m.weight_bits, "act_bits": m.act_bits})
register_module(
    QATLinear,
    lambda m: {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
        "weight_bits": m.weight_bits,
        "act_bits": m.act_bits,
    },
)
register_module(LSQ, lambda m: {"bits": m.bits, "channels": m.channels})


def _to_qat(layer: nn.Module, weight_bits: int) -> nn.Module:
    dev = layer.weight.device
    if isinstance(layer, nn.Conv2d):
        new = QATConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            layer.bias is not None,
            weight_bits=weight_bits,
            device=dev,
        )
    else:
        new = QATLinear(
            layer.in_features, layer.out_features, layer.bias is not None, weight_bits=weight_bits, device=dev
        )
    with torch.no_grad():  # the effective weight: a masked layer's pruned entries are zeros
        new.weight.copy_(layer.weight.detach())
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach())
    mask = get_mask(layer)
    if mask is not None:  # masks stay fixed through QAT: LSQ maps 0 to 0, and its gradient is 0
        set_mask(new, mask)
    new.weight_fq(new.weight.detach())  # initialise the weight steps from the trained weights
    return new


@torch.no_grad()
def prepare_qat(
    model: nn.Module,
    example: torch.Tensor,
    *,
    weight_bits: int = 4,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> nn.Module:
    """Fold BN, then swap the selected Conv2d/Linear layers for LSQ fake-quant versions (in place)."""
    if weight_bits not in range(2, 9):
        raise NetslimError(f"The 'weight_bits' parameter of QAT must be an int in [2, 8]; got {weight_bits!r}.")
    model.eval()
    names = select(model, include, exclude, types=(nn.Conv2d, nn.Linear))
    fold, _, _ = _trace_pairs(model, names, example)
    for conv, bn in fold.items():
        fold_bn(get_module(model, conv), get_module(model, bn))
        replace_module(model, bn, nn.Identity())
    for n in names:
        replace_module(model, n, _to_qat(get_module(model, n), weight_bits))
    model(example)  # initialise the activation steps
    return model


def _lsq_act(fq: LSQ) -> tuple[float, float]:
    """uint8 (scale, zero point) equivalent to an 8-bit LSQ activation quantizer."""
    return float(fq.scale.abs()), 128.0 if bool(fq.signed) else 0.0


@torch.no_grad()
def convert_qat(model: nn.Module, calibration: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """QAT layers -> Int8Conv2d / Int8Linear with the learned weight and input steps (in place)."""
    model.eval()
    names = [n for n, m in model.named_modules() if isinstance(m, (QATConv2d, QATLinear))]
    if not names:
        raise NetslimError("convert_qat: the model has no QAT layer; run prepare_qat first.")
    batches = list(calibration.split(batch_size))
    _, fuse, _ = _trace_pairs(model, names, batches[0])
    outs = {n: make_observer("minmax") for n in names}
    with hooked(
        {n: lambda m, i, o, n=n: outs[n].observe(torch.relu(o) if n in fuse else o) for n in names}, root=model
    ):
        for b in batches:
            model(b)
    for n in names:
        replace_module(model, n, _from_qat(get_module(model, n), n in fuse, outs[n].qparams()))
    for relu in fuse.values():
        replace_module(model, relu, nn.Identity())
    return model


def _from_qat(layer: nn.Module, relu: bool, out_qp) -> nn.Module:
    fq = layer.weight_fq
    qmin, qmax = fq.qrange()
    s = fq.scale.abs().clamp_min(1e-8)  # (out,)
    codes = torch.clamp(torch.round(layer.weight / s.reshape((-1,) + (1,) * (layer.weight.dim() - 1))), qmin, qmax)
    act = (*_lsq_act(layer.input_fq), float(out_qp.scale), float(out_qp.zero_point))
    new = int8_twin(layer, relu=relu, weight_bits=layer.weight_bits)
    bias = layer.bias if layer.bias is not None else torch.zeros(codes.shape[0])
    new.set_quantized(codes.to(torch.int8), s, bias.float(), act)
    return new


class QATConfig(TrainingStep):
    """prepare (BN fold + LSQ fake quant) -> fine-tune -> convert to the int8 artifact."""

    method = "qat"
    freezes = True
    # Under torchrun every rank prepares and converts alike (the same calibration rows) and
    # fine-tunes data-parallel; prune events take rank 0's masks.
    data_parallel: ClassVar[bool] = True
    weight_bits: int = Field(4, ge=2, le=8)
    act_bits: Literal[8] = 8
    finetune: FinetuneConfig = finetune_field(
        "the quantization-aware training", epochs=3, lr=0.001, optimizer="adamw", weight_decay=0.0
    )
    calibration_samples: int = Field(512, ge=1)
    prune: QATPrune | None = Field(
        None,
        description="prune while training quantized (joint, or quantize -> prune); "
        "masks already on the model stay fixed either way",
    )
    include: Selector = None
    exclude: Selector = None

    def preflight(self, model, task) -> None:
        """Before a recipe runs: see :func:`~netslim.quantize.ptq.static_int8_preflight`."""
        static_int8_preflight(self, model, task)


@register(QATConfig)
def run_qat(model: nn.Module, cfg: QATConfig, ctx) -> nn.Module:
    calib = ctx.task.calibration_inputs(cfg.calibration_samples, seed=ctx.seed).to(ctx.device)
    model = prepare_qat(
        model.to(ctx.device), calib[:64], weight_bits=cfg.weight_bits, include=cfg.include, exclude=cfg.exclude
    )
    events = None
    if cfg.prune is None:
        summary = fit(model, ctx.task, cfg.finetune)
    else:
        qat_layers = [n for n, m in model.named_modules() if isinstance(m, (QATConv2d, QATLinear))]
        summary, events = run_with_pruning(model, ctx.task, cfg.finetune, cfg.prune, qat_layers, None, fit)
    model = convert_qat(model.cpu(), calib.cpu())
    ctx.notes[cfg.method] = {
        "weight_bits": cfg.weight_bits,
        "act_bits": cfg.act_bits,
        "finetune": {k: v for k, v in summary.items() if k != "history"},
    }
    if events is not None:
        ctx.notes[cfg.method]["prune_events"] = events
    return model


qat_train = method_function(QATConfig, "qat_train")  # qat_train(model, data, weight_bits=8, finetune={"epochs": 1})
