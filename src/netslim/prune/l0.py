"""L0 pruning with hard-concrete gates (Louizos, Welling & Kingma 2018).

Each selected weight (or each output unit) gets a learned gate ``z`` in [0, 1]:

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    z = clamp(s * (zeta - gamma) + gamma, 0, 1)                (training: a sample)
    z = clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1) (deterministic, at the end)

with beta = 2/3, gamma = -0.1, zeta = 1.1. The probability that a gate is non-zero,
``sigmoid(log_alpha - beta * log(-gamma / zeta))``, is differentiable, so the expected
L0 norm is a penalty the loss can carry (through ``Callback.extra_loss``).

**Steering to a target sparsity.** A fixed L0 weight gives whatever sparsity it gives.
Here the penalty is ``lam * d``, with ``d`` the expected density, and ``lam`` is a
non-negative multiplier adapted by dual ascent in log space against a target ``t`` that
ramps linearly from 1 to ``1 - sparsity`` over ``warmup_fraction`` of training:

    log(lam) += lambda_lr * (d - t) / max(d, t)        (after every step)

Why log space: the gate's loss gradient is ``~ w * dL/dw`` per weight while the
penalty's is ``lam / N``, so the ``lam`` that balances them spans orders of magnitude
across models; a multiplicative update finds it in tens of steps, and it shrinks back as
fast once the model is sparser than the target (so the data can reopen useful gates).
The relative gap keeps the controller as responsive at 95 % sparsity as at 50 %, and
bounding it to (-1, 1) makes ``lam`` shrink as fast as it grew. While the expected
density is at or below the target the penalty is switched off altogether (only the data
moves the gates): without that, the gates' lag behind the ramp winds ``lam`` up and they
overshoot far past the target before it has shrunk back. The gates descend with their own Adam optimizer (``gate_lr``, no weight decay).

**At the end** the deterministic gates become a :class:`~netslim.core.masks.Mask`: weights
are scaled by their gate value and the mask keeps ``z > 0``; with ``exact: true`` the mask
instead keeps the top ``1 - sparsity`` of ``log_alpha`` globally (so every method of the
comparison lands on the same sparsity), and a kept weight whose deterministic gate is 0
keeps its mean gate ``sigmoid(log_alpha)`` rather than becoming a hidden zero.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils import parametrize

from netslim.api import method_function
from netslim.core import distributed
from netslim.core.config import register
from netslim.core.masks import get_mask, set_mask
from netslim.core.selectors import Selector
from netslim.prune._api import check_fraction, need_task, prunable_preflight
from netslim.prune.criteria import masks_from_scores, prunable_layers, sparsity_report
from netslim.train.loop import Callback, FinetuneConfig, TrainingStep, TrainState, finetune_field, fit

log = logging.getLogger(__name__)
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # temperature and stretch of Louizos et al.


class HardConcreteGate(nn.Module):
    """Parametrization ``w -> w * z``; ``log_alpha`` has the weight's shape or (out, 1, ...)."""

    def __init__(self, shape: tuple[int, ...], init_log_alpha: float, cover: int):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full(shape, float(init_log_alpha)))
        self.cover = cover  # weights each gate switches (1, or fan-in for unit gates)

    def gate(self) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / BETA)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.gate().to(w.dtype)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z != 0) per gate, differentiable in ``log_alpha``."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))


class L0Config(TrainingStep):
    """Hard-concrete L0 gates trained toward a target sparsity, then made masks."""

    method = "l0"
    sparsity: float = Field(0.9, description="target fraction of zero weights, in [0, 1)")
    granularity: Literal["weight", "unit"] = "weight"
    include: Selector = None
    exclude: Selector = None
    init_keep: float = Field(0.95, gt=0, lt=1, description="initial sigmoid(log_alpha) of every gate")
    gate_lr: float = Field(0.05, gt=0, description="Adam learning rate of log_alpha")
    lambda_init: float = Field(1.0, gt=0, description="initial penalty multiplier")
    lambda_lr: float = Field(0.05, gt=0, description="log-space ascent rate of the multiplier")
    warmup_fraction: float = Field(0.5, ge=0, le=1, description="target density ramps 1 -> 1 - sparsity over it")
    exact: bool = Field(True, description="final mask = top (1 - sparsity) of log_alpha, not just z > 0")
    finetune: FinetuneConfig = finetune_field("the fine-tune the gates are learned in")
    min_epochs: ClassVar[int] = 1

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        return check_fraction(v)

    keeps_modules: ClassVar[bool] = True  # gates end as masks (netslim.recipe.preflight)
    # Under torchrun the gates' gradients are averaged by DDP (the gate noise is the same draw on
    # every rank: one sample per weight, as in one process); the final masks are rank 0's.
    data_parallel: ClassVar[bool] = True

    @classmethod
    def example(cls) -> L0Config:
        return cls(sparsity=0.5, finetune={"epochs": 1, "max_steps": 6, "batch_size": 64})

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the layers resolve."""
        prunable_preflight(self, model)


def attach_gates(layers: list[tuple[str, nn.Module]], cfg: L0Config) -> dict[str, HardConcreteGate]:
    """Register a gate on each layer's weight (after any existing mask)."""
    init = math.log(cfg.init_keep / (1 - cfg.init_keep))
    gates = {}
    for name, module in layers:
        shape = tuple(module.weight.shape)
        if cfg.granularity == "unit":
            gate_shape, cover = (shape[0],) + (1,) * (len(shape) - 1), math.prod(shape[1:])
        else:
            gate_shape, cover = shape, 1
        gate = HardConcreteGate(gate_shape, init, cover).to(module.weight.device)
        gate.log_alpha.requires_grad_(False)  # kept out of the main optimizer; L0Gates steps it
        parametrize.register_parametrization(module, "weight", gate)
        gates[name] = gate
    return gates


def expected_density(gates: dict[str, HardConcreteGate]) -> torch.Tensor:
    """E[fraction of non-zero weights] over the gated layers (differentiable)."""
    kept = torch.stack([g.prob_nonzero().sum() * g.cover for g in gates.values()]).sum()
    total = sum(g.log_alpha.numel() * g.cover for g in gates.values())
    return kept / total


class L0Gates(Callback):
    """Adds the penalty ``lam * E[density]``, trains the gates, adapts ``lam``."""

    def __init__(self, gates: dict[str, HardConcreteGate], cfg: L0Config):
        self.gates, self.cfg = gates, cfg
        self.log_lam = math.log(cfg.lambda_init)
        self.density = 1.0
        self.total = 1
        self.opt: torch.optim.Optimizer | None = None
        self.trace: list[dict[str, float]] = []

    @property
    def lam(self) -> float:
        return math.exp(self.log_lam)

    def on_train_begin(self, state: TrainState) -> None:
        params = [g.log_alpha for g in self.gates.values()]
        for p in params:
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(params, lr=self.cfg.gate_lr)
        self.total = state.total_steps
        # The gates (the structure) change until the end: never restore a best earlier epoch.
        state.can_checkpoint = False

    def target_density(self, step: int) -> float:
        final = 1.0 - self.cfg.sparsity
        ramp = self.cfg.warmup_fraction * self.total
        return final if step >= ramp else 1.0 + (final - 1.0) * step / ramp

    def extra_loss(self, state: TrainState) -> torch.Tensor:
        d = expected_density(self.gates)
        self.density = float(d.detach())
        if self.density <= self.target_density(state.step):
            # Penalty off below the target. Why: Adam moves every gate whose data gradient is
            # small at the same full speed once lam dominates, and lam needs ~100 steps to
            # shrink back, so the gates overshoot (LeNet-300, 4 epochs: 98 % closed for a 95 %
            # target, -5 pt) and closed gates get no data gradient to reopen.
            return d * 0.0
        return self.lam * d

    def on_after_backward(self, state: TrainState) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        target = self.target_density(state.step)
        # Dual ascent in log space on the symmetric relative gap, in (-1, 1): lam grows and
        # shrinks at the same bounded pace (an unbounded gap winds lam up while the gates
        # lag, and the model overshoots the target). Capped so exp() stays finite.
        gap = (self.density - target) / max(self.density, target)
        self.log_lam = min(self.log_lam + self.cfg.lambda_lr * gap, 50.0)
        if state.step % 50 == 0:
            self.trace.append({"step": state.step, "density": self.density, "target": target, "lambda": self.lam})

    def on_train_end(self, state: TrainState) -> None:
        for g in self.gates.values():
            g.log_alpha.requires_grad_(False)


@torch.no_grad()
def gates_to_masks(
    layers: list[tuple[str, nn.Module]], gates: dict[str, HardConcreteGate], cfg: L0Config
) -> dict[str, torch.Tensor]:
    """Replace each gate by a Mask: weights scaled by the deterministic gate; returns masks."""
    z = {n: g.eval().gate().expand_as(m.weight) for (n, m), g in zip(layers, gates.values())}
    if cfg.exact:
        scores = {n: g.log_alpha.expand_as(m.weight) for (n, m), g in zip(layers, gates.values())}
        keep = masks_from_scores(scores, cfg.sparsity, scope="global")
    else:
        keep = {n: zn > 0 for n, zn in z.items()}
    distributed.from_main(keep)  # rank 0's decision on every rank
    for (name, module), gate in zip(layers, gates.values()):
        prior = get_mask(module)
        mean_gate = torch.sigmoid(gate.log_alpha).expand_as(module.weight)
        scale = torch.where(z[name] > 0, z[name], mean_gate)  # (out, in[, kh, kw])
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        module.weight.mul_(scale.to(module.weight.dtype))
        keep[name] = keep[name] if prior is None else keep[name] & prior
        set_mask(module, keep[name])
    return keep


def l0_train(model: nn.Module, task, *, cfg: L0Config) -> dict[str, Any]:
    """Train hard-concrete gates with ``model`` (in place) and turn them into masks.

    Returns the fit summary with the final ``sparsity`` of the gated layers (the masks'),
    the expected density the gates ended at, and a trace of the multiplier.
    """
    layers = prunable_layers(model, cfg.include, cfg.exclude)
    gates = attach_gates(layers, cfg)
    cb = L0Gates(gates, cfg)
    try:
        summary = fit(model, task, cfg.finetune, [cb])
    finally:
        end_density = float(expected_density(gates))
        with torch.no_grad():  # what the gates alone closed, before ``exact`` fixes the count
            closed = sum(int((g.eval().gate() == 0).sum()) * g.cover for g in gates.values())
        masks = gates_to_masks(layers, gates, cfg)
    zeros = sum(int((~m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return summary | {
        "sparsity": zeros / total,
        "expected_density_end": end_density,
        "gate_sparsity": closed / total,
        "lambda_end": cb.lam,
        "lambda_trace": cb.trace,
    }


@register(L0Config)
def run_l0(model: nn.Module, cfg: L0Config, ctx) -> nn.Module:
    summary = l0_train(model.to(ctx.device), need_task(ctx, cfg.method), cfg=cfg)
    ctx.notes[cfg.method] = {k: v for k, v in summary.items() if k not in ("lambda_trace", "history")} | {
        "report": sparsity_report(model)
    }
    return model


l0_prune = method_function(L0Config, "l0_prune")  # l0_prune(model, task, sparsity=0.9, finetune={"epochs": 3})
