"""Mixed precision: per-layer sensitivity, then an exact bit allocation under a size budget.

Sensitivity of layer l at b bits (only that layer's weights quantized, per channel):

* ``kl``: measured - KL(p_fp32 || p_quant) of the model's outputs on a calibration batch;
* ``hessian``: HAWQ-v2 proxy - mean Hessian trace of the loss w.r.t. the layer's weights
  (Hutchinson, Rademacher probes; labels = the fp32 model's own predictions) times the
  squared quantization error ``|Q_b(W) - W|^2 / 2``.

:func:`allocate_bits` then picks one width per layer minimising the summed sensitivity with
``sum(bits_l * params_l) <= avg_bits * sum(params_l)``, exactly: a dynamic programme over
layers keeping the Pareto frontier of (bits used, cost) (no rounding of the budget).
The chosen widths feed :func:`~netslim.quantize.ptq.static_int8` (``weight_bits`` per layer),
activations stay int8.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from netslim.api import method_function
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.core.selectors import Selector, select
from netslim.core.surgery import get_module

from .ptq import PTQInt8Config, quantize_weight_rows, static_int8, static_int8_preflight


def _qdq(w: torch.Tensor, bits: int) -> torch.Tensor:
    q, s = quantize_weight_rows(w, bits)
    return (q.float() * s.reshape((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)


@torch.no_grad()
def kl_sensitivity(model: nn.Module, batch: torch.Tensor, names: list[str], choices: list[int]) -> dict:
    """{layer: {bits: KL(fp32 || only this layer at bits)}} on ``batch``."""
    model.eval()
    ref = F.log_softmax(model(batch), dim=-1)
    out: dict[str, dict[int, float]] = {}
    for n in names:
        w = get_module(model, n).weight
        orig = w.detach().clone()
        out[n] = {}
        for b in choices:
            w.copy_(_qdq(orig, b))
            logp = F.log_softmax(model(batch), dim=-1)
            out[n][b] = float(F.kl_div(logp, ref, log_target=True, reduction="batchmean"))
        w.copy_(orig)
    return out


def hessian_sensitivity(
    model: nn.Module, batch: torch.Tensor, names: list[str], choices: list[int], probes: int = 8
) -> dict:
    """HAWQ-v2: mean Hessian trace (Hutchinson) x |Q_b(W) - W|^2 / 2 per layer and width."""
    model.eval()
    with torch.no_grad():
        labels = model(batch).argmax(-1)
    params = [get_module(model, n).weight for n in names]
    loss = F.cross_entropy(model(batch), labels)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    traces = [0.0] * len(params)
    gen = torch.Generator().manual_seed(0)
    for _ in range(probes):
        vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for p in params]
        hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        for i, (hv, v) in enumerate(zip(hvs, vs)):
            traces[i] += float((hv * v).sum()) / probes
    out = {}
    for n, p, tr in zip(names, params, traces):
        mean_tr = tr / p.numel()
        out[n] = {b: mean_tr * float((_qdq(p.detach(), b) - p.detach()).pow(2).sum()) / 2 for b in choices}
    return out


def allocate_bits(sensitivity: dict[str, dict[int, float]], sizes: dict[str, int], avg_bits: float) -> dict[str, int]:
    """Exact min-sum-sensitivity widths with ``sum(bits * size) <= avg_bits * sum(size)``."""
    budget = avg_bits * sum(sizes.values())
    frontier: list[tuple[float, float, tuple]] = [(0.0, 0.0, ())]  # (bits used, cost, choices)
    for name, table in sensitivity.items():
        cand = [
            (u + b * sizes[name], c + s, ch + (b,))
            for u, c, ch in frontier
            for b, s in table.items()
            if u + b * sizes[name] <= budget
        ]
        cand.sort(key=lambda t: (t[0], t[1]))
        frontier, best = [], float("inf")
        for t in cand:  # keep only states not dominated (more bits used must buy a lower cost)
            if t[1] < best:
                frontier.append(t)
                best = t[1]
        if not frontier:
            raise NetslimError(
                f"avg_bits={avg_bits} is below the smallest width offered "
                f"({min(min(t) for t in sensitivity.values())})."
            )
    _, _, choice = min(frontier, key=lambda t: t[1])
    return dict(zip(sensitivity, choice))


class MixedPrecisionConfig(MethodConfig):
    """Per-layer weight widths under an average-bits budget, then static int8 PTQ with them."""

    method = "mixed_precision"
    freezes = True
    avg_bits: float = Field(4.0, gt=1, le=8)
    choices: list[int] = Field(default_factory=lambda: [2, 4, 8])
    sensitivity: Literal["kl", "hessian"] = "kl"
    calibration_samples: int = Field(512, ge=1)
    include: Selector = None
    exclude: Selector = None

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the widths offered can meet the budget; see
        :func:`~netslim.quantize.ptq.static_int8_preflight` for the rest."""
        _check_choices(self)
        static_int8_preflight(self, model, task)


def _check_choices(cfg: MixedPrecisionConfig) -> None:
    bad = [b for b in cfg.choices if b not in range(2, 9)]
    if bad or not cfg.choices:
        raise NetslimError(
            f"The 'choices' parameter of MixedPrecisionConfig must be widths in [2, 8]; got {cfg.choices}."
        )
    if cfg.avg_bits < min(cfg.choices):
        raise NetslimError(
            f"The 'avg_bits' parameter of MixedPrecisionConfig must be >= the smallest width "
            f"offered in 'choices' ({min(cfg.choices)}); got {cfg.avg_bits}."
        )


@register(MixedPrecisionConfig)
def run_mixed_precision(model: nn.Module, cfg: MixedPrecisionConfig, ctx) -> nn.Module:
    """Per-layer widths from the sensitivity on the calibration inputs, then static int8 PTQ with them."""
    _check_choices(cfg)
    calibration = ctx.task.calibration_inputs(cfg.calibration_samples, seed=ctx.seed)
    calibration = calibration.to(next(model.parameters()).device)
    names = select(model, cfg.include, cfg.exclude, types=(nn.Conv2d, nn.Linear))
    batch = calibration[:256]
    fn = kl_sensitivity if cfg.sensitivity == "kl" else hessian_sensitivity
    sens = fn(model, batch, names, sorted(cfg.choices))
    sizes = {n: get_module(model, n).weight.numel() for n in names}
    bits = allocate_bits(sens, sizes, cfg.avg_bits)
    avg = sum(bits[n] * sizes[n] for n in names) / sum(sizes.values())
    ctx.notes[cfg.method] = {
        "avg_bits": avg,
        "budget": cfg.avg_bits,
        "sensitivity": cfg.sensitivity,
        "layers": [{"name": n, "params": sizes[n], "bits": bits[n], "sensitivity": sens[n]} for n in names],
        "ptq_int8": static_int8(model, calibration, PTQInt8Config(weight_bits=bits)),
    }
    return model


mixed_precision = method_function(MixedPrecisionConfig, "mixed_precision")
