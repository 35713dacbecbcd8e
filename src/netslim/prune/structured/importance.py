"""Importance of each unit (channel, head, neuron) of each group: one score per unit.

The group criteria, registered here as :class:`~netslim.prune.criteria.Criterion` objects of unit
``"groups"`` (a user's own joins with :func:`netslim.prune.register_criterion`; every config's
``criterion`` field is checked against the registry, :data:`GroupCriterion`):

* ``l1`` / ``l2``: norm of every weight slice of the group (producers' rows and consumers'
  columns alike, as Torch-Pruning's group magnitude does);
* ``l2_bn``: ``l2`` plus the squared BatchNorm scales (gamma^2) of the group, the terms
  Torch-Pruning's ``GroupMagnitudeImportance(p=2)`` adds; where gammas are alike from channel
  to channel they flatten a group's scores, so a global ranking takes fewer of its channels;
* ``bn_scale``: |gamma| of the group's BatchNorm layers (network slimming, Liu et al. 2017);
  groups without a BatchNorm fall back to ``l2``;
* ``taylor``: first-order Taylor, (sum over the group's slices of w * dL/dw)^2 per unit and
  batch, summed over calibration batches (Molchanov et al. 2019);
* ``activation``: activation statistics on calibration batches: for every consumer of the
  group, ||W[:, j]|| * sqrt(mean x_j^2) of its input feature j (a structured Wanda score, as
  FLAP and LLM pruning use), summed over the unit's features. Units whose inputs are
  always (near) zero score zero, like APoZ's dead channels;
* ``random``: a control.

Scores are aggregated by summing over slots; globally ranked scores are normalised per group
(divided by the group mean) so that layers of different scale compare (see ``select``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from netslim.core.errors import bad_param
from netslim.core.graph import DependencyGraph, Group, slot_view
from netslim.core.hooks import eval_mode
from netslim.prune.criteria import checked_scores, criterion_field, get_criterion, register_criterion
from netslim.train.loop import Callback

GroupCriterion = criterion_field("groups")
"""A config field naming a group criterion (the built-ins above or a registered one)."""
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _is_weight_slot(model: nn.Module, module: str, param: str) -> bool:
    m = model.get_submodule(module)
    return param == "weight" and (isinstance(m, _WEIGHTED) or type(m).__name__ == "Conv1D")


def _norm_scores(model: nn.Module, g: Group, p: int) -> torch.Tensor:
    total = torch.zeros(g.size)
    for slot, i in g.slots:
        if not _is_weight_slot(model, slot.module, slot.param):
            continue
        t = slot_view(getattr(model.get_submodule(slot.module), slot.param).detach(), slot, i)  # (units, -1)
        total += t.float().norm(p=p, dim=1).pow(p).cpu()
    return total


def _bn_scores(model: nn.Module, g: Group, p: int = 1) -> torch.Tensor | None:
    """Sum of |gamma|^p over the group's BatchNorm slots (None when it has none)."""
    total, found = torch.zeros(g.size), False
    for slot, i in g.slots:
        m = model.get_submodule(slot.module)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and slot.param == "weight":
            total += slot_view(m.weight.detach(), slot, i).abs().pow(p).sum(1).float().cpu()
            found = True
    return total if found else None


def taylor_scores(
    model: nn.Module, graph: DependencyGraph, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Accumulated (sum_slice w * g)^2 per unit over ``batches`` (gradients are cleared after)."""
    groups = graph.prunable()
    scores = {g.id: torch.zeros(g.size) for g in groups}
    with eval_mode(model):  # BN statistics stay as they are; the gradient is what we want
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            with torch.no_grad():
                for g in groups:
                    per = torch.zeros(g.size)
                    for slot, i in g.slots:
                        t = getattr(model.get_submodule(slot.module), slot.param)
                        if not isinstance(t, nn.Parameter) or t.grad is None:
                            continue
                        per += slot_view(t * t.grad, slot, i).sum(1).float().cpu()
                    scores[g.id] += per.pow(2)
    model.zero_grad(set_to_none=True)
    return scores


def _inputs_of(batch: Any) -> Any:
    """Model inputs of a batch: ``(inputs, target)`` pairs give their first item."""
    return _inputs_of(batch[0]) if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def activation_scores(model: nn.Module, graph: DependencyGraph, batches: Iterable[Any]) -> dict[int, torch.Tensor]:
    """Per unit: sum over consumer slots of ||column|| * RMS of the input feature it reads."""
    groups = graph.prunable()
    consumers = {s.module for g in groups for s, _ in g.slots if s.role == "in"}
    sq: dict[str, torch.Tensor] = {}
    n: dict[str, int] = {}

    def hook(name: str, channel_dim_1: bool):
        def fn(module, args):
            x = args[0].detach().float()
            x = x.movedim(1, -1) if channel_dim_1 else x  # features last
            sq[name] = sq.get(name, 0) + x.pow(2).reshape(-1, x.shape[-1]).sum(0)  # (features,)
            n[name] = n.get(name, 0) + x.numel() // x.shape[-1]

        return fn

    hooks = {c: hook(c, isinstance(model.get_submodule(c), nn.Conv1d | nn.Conv2d)) for c in consumers}
    with eval_mode(model, hooks, kind="pre"):
        dev = next(model.parameters()).device
        for batch in batches:
            x = _inputs_of(batch)
            x = (
                {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
                if isinstance(x, dict)
                else x.to(dev)
            )  # calibration data may live on the CPU, the model elsewhere
            model(**x) if isinstance(x, dict) else model(x)
    out = {}
    for g in groups:
        total = torch.zeros(g.size)
        for slot, i in g.slots:
            if slot.role != "in" or slot.module not in sq:
                continue
            w = getattr(model.get_submodule(slot.module), slot.param).detach().float()
            cols = w.movedim(slot.dim, 0).reshape(w.shape[slot.dim], -1).norm(dim=1)  # (features,)
            rms = (sq[slot.module] / max(n[slot.module], 1)).sqrt().to(cols.device)
            if rms.numel() != cols.numel():  # e.g. a grouped input: not comparable, leave to the others
                continue
            total += slot_view(cols * rms, replace(slot, dim=0), i).sum(1).cpu()
        out[g.id] = total
    return out


# ------------------------------------------------------------------ the built-ins
@register_criterion("l1", "groups")
def _l1(model: nn.Module, graph: DependencyGraph, **_: Any) -> dict[int, torch.Tensor]:
    """Sum of |w| over every weight slice of the unit."""
    return {g.id: _norm_scores(model, g, 1) for g in graph.prunable()}


@register_criterion("l2", "groups")
def _l2(model: nn.Module, graph: DependencyGraph, **_: Any) -> dict[int, torch.Tensor]:
    """Sum of w^2 over every weight slice of the unit."""
    return {g.id: _norm_scores(model, g, 2) for g in graph.prunable()}


@register_criterion("l2_bn", "groups")
def _l2_bn(model: nn.Module, graph: DependencyGraph, **_: Any) -> dict[int, torch.Tensor]:
    """l2 plus the squared BatchNorm scales of the group (Torch-Pruning's group magnitude, p=2)."""
    out = {}
    for g in graph.prunable():
        out[g.id] = _norm_scores(model, g, 2)
        if (bn := _bn_scores(model, g, p=2)) is not None:
            out[g.id] = out[g.id] + bn
    return out


@register_criterion("bn_scale", "groups")
def _bn_scale(model: nn.Module, graph: DependencyGraph, **_: Any) -> dict[int, torch.Tensor]:
    """|gamma| of the group's BatchNorms (network slimming); l2 where the group has none."""
    out = {}
    for g in graph.prunable():
        s = _bn_scores(model, g)
        out[g.id] = s if s is not None else _norm_scores(model, g, 2)
    return out


@register_criterion("taylor", "groups", needs="gradients")
def _taylor(model: nn.Module, graph: DependencyGraph, *, batches, loss_fn, **_: Any) -> dict[int, torch.Tensor]:
    """First-order Taylor: (sum of w * dL/dw over the unit's slices)^2, summed over batches."""
    return taylor_scores(model, graph, batches, loss_fn)


@register_criterion("activation", "groups", needs="activations")
def _activation(model: nn.Module, graph: DependencyGraph, *, batches, **_: Any) -> dict[int, torch.Tensor]:
    """||W[:, j]|| * RMS of input feature j over the unit's consumers (a structured Wanda score)."""
    return activation_scores(model, graph, batches)


@register_criterion("random", "groups")
def _random(model: nn.Module, graph: DependencyGraph, *, seed: int = 0, **_: Any) -> dict[int, torch.Tensor]:
    """Uniform random scores from ``seed`` (the control)."""
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.size, generator=gen) for g in graph.prunable()}


def group_scores(
    model: nn.Module,
    graph: DependencyGraph,
    criterion: str = "l2",
    *,
    batches: Iterable[Any] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """One score per unit for every prunable group (higher = more important), by the group
    criterion registered as ``criterion``; ``batches`` / ``loss_fn`` as it needs them."""
    crit = get_criterion(criterion, "groups")
    if crit.needs == "activations" and batches is None:
        raise bad_param("group_scores", "batches", f"calibration batches for criterion {criterion!r}", None)
    if crit.needs == "gradients" and (batches is None or loss_fn is None):
        raise bad_param("group_scores", "batches", f"calibration batches and a loss for criterion {criterion!r}", None)
    scores = crit.score(model, graph, batches=batches, loss_fn=loss_fn, seed=seed)
    return checked_scores(crit, scores, {g.id: (g.size,) for g in graph.prunable()})


class BNSparsity(Callback):
    """Training callback of network slimming: adds ``penalty * sum |gamma|`` over BatchNorms.

    Drives unimportant channels' scales towards zero during fine-tuning, so that a later
    ``bn_scale`` ranking separates them clearly (Liu et al. 2017 use 1e-5 to 1e-4).
    """

    def __init__(self, penalty: float):
        if penalty < 0:
            raise bad_param("BNSparsity", "penalty", "a float >= 0", penalty)
        self.penalty = penalty

    def extra_loss(self, state) -> torch.Tensor | None:
        if not self.penalty:
            return None
        terms = [
            m.weight.abs().sum()
            for m in state.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
        ]
        return self.penalty * torch.stack(terms).sum() if terms else None
