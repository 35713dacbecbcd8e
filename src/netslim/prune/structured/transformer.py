"""Attention heads, FFN neurons and whole blocks of Hugging Face transformers.

``shrink_heads(model, ratio=1/3)``, ``shrink_ffn(model, ratio=0.5)``: physically smaller
q/k/v/o and FFN projections (see :mod:`.hf` for the groups). ``scope="uniform"`` (the
default here) removes the same count from every block, which lets the model config say it
and ``from_pretrained`` reload it. ``drop_transformer_blocks(model, 4, inputs)`` removes the blocks that
change their input least (block influence, 1 - cosine(input, output), as in ShortGPT).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError, bad_param
from netslim.measure.counts import count_params

from .blocks import mean_influence
from .channels import check_exclude, excluded_groups
from .generic import nothing_removed, report_empty, structured_graph
from .hf import _is_hf, block_list, hf_fixups, transformer_graph
from .importance import group_scores
from .plan import PrunePlan, apply_plan, plan_from_keep
from .select import choose_keep

log = logging.getLogger(__name__)


def unit_graph(model: nn.Module, kind: str, example_inputs: Any = None):
    """The generic graph (:func:`structured_graph`) with its ``kind`` groups; a Hugging Face model
    that cannot be traced falls back on the hand-written family rules (:func:`transformer_graph`)."""
    try:
        return structured_graph(model, example_inputs)
    except NetslimError as e:
        if not _is_hf(model):
            raise
        graph = transformer_graph(model, kinds=(kind,))
        graph.skipped.insert(0, {"name": type(model).__name__, "reason": f"{e} (family rules used instead)"})
        return graph


def plan_transformer(
    model: nn.Module,
    kind: str,
    ratio: float,
    *,
    criterion: str = "l2",
    scope: str = "uniform",
    min_keep_ratio: float = 0.1,
    round_to: int = 1,
    on_empty: str = "clamp",
    exclude: Iterable[str] = (),
    batches: Iterable[Any] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
    example_inputs: Any = None,
) -> tuple[PrunePlan, Any]:
    """Prune plan removing ``ratio`` of the ``kind`` ("head" or "neuron") units."""
    if kind not in ("head", "neuron"):
        raise bad_param("plan_transformer", "kind", "one of 'head', 'neuron'", kind)
    if not 0 <= ratio < 1:
        raise bad_param("plan_transformer", "ratio", "a float in [0, 1)", ratio)
    check_exclude(model, exclude)
    graph = unit_graph(model, kind, example_inputs)
    mine = {g.id for g in graph.prunable() if g.kind == kind}
    excluded = excluded_groups(model, graph, exclude) & mine
    scores = group_scores(model, graph, criterion, batches=batches, loss_fn=loss_fn, seed=seed)
    keep = choose_keep(
        model,
        graph,
        scores,
        ratio,
        scope=scope,
        min_keep_ratio=min_keep_ratio,
        round_to=round_to,
        on_empty=on_empty,
        only=mine - excluded,
    )
    plan = plan_from_keep(graph, keep)
    plan.config, attrs = hf_fixups(model, graph, keep) if _is_hf(model) else ({}, [])
    plan.attrs += attrs
    if plan.empty:  # no silent no-op
        what = {"head": "heads", "neuron": "ffn"}[kind]
        why = nothing_removed(graph, what, (kind,), ratio, excluded)
        report_empty(why, on_empty, what)
        graph.skipped = [*graph.skipped, *why]
    return plan, graph


def _report(model: nn.Module, plan: PrunePlan, graph, before: int) -> dict[str, Any]:
    if plan.groups and not plan.config:
        log.warning(
            "the model config cannot express these counts (blocks differ, BERT or GPT-2 heads): "
            "netslim.load reloads the model, from_pretrained does not"
        )
    return {
        "params_before": before,
        "params_after": count_params(model),
        "groups": plan.groups,
        "config": plan.config,
        "skipped": graph.skipped,
        "plan": plan.to_dict(),
        "from_pretrained": bool(plan.config) or not plan.groups,
    }


def shrink_heads(model: nn.Module, ratio: float, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Remove ``ratio`` of the attention heads (Llama GQA: of the key/value groups); returns (model, report)."""
    before = count_params(model)
    plan, graph = plan_transformer(model, "head", ratio, **kwargs)
    apply_plan(model, plan, "shrink")
    return model, _report(model, plan, graph, before)


def shrink_ffn(model: nn.Module, ratio: float, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Remove ``ratio`` of the FFN intermediate neurons of every block; returns (model, report)."""
    before = count_params(model)
    plan, graph = plan_transformer(model, "neuron", ratio, **kwargs)
    apply_plan(model, plan, "shrink")
    return model, _report(model, plan, graph, before)


def block_influence(model: nn.Module, batches: Iterable[Any]) -> torch.Tensor:
    """Per block: mean over tokens of 1 - cos(block input, block output) (low = removable)."""
    blocks, _, _ = block_list(model)
    return mean_influence(model, list(blocks), batches, dim=-1)


def check_layer_choice(model: nn.Module, count: int | None, indices: Sequence[int] | None = None) -> None:
    """``indices`` (block positions, not all of them) or ``count`` (fewer than there are) can be
    dropped from the transformer ``model``; raises otherwise."""
    n = len(block_list(model)[0])
    if indices is None:
        if not isinstance(count, int) or not 0 < count < n:
            raise bad_param("drop_layers", "count", f"an int in [1, {n - 1}] (the model has {n} blocks)", count)
    elif any(not 0 <= i < n for i in indices) or len(set(indices)) >= n:
        raise bad_param("drop_layers", "indices", f"distinct block indices in [0, {n - 1}], not all", list(indices))


def drop_transformer_blocks(
    model: nn.Module, count: int, batches: Iterable[Any] | None = None, *, indices: list[int] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove ``count`` whole blocks, the least influential on ``batches`` (or the given ``indices``)."""
    check_layer_choice(model, count, indices)
    if indices is None:
        if batches is None:
            raise NetslimError("drop_layers: block influence needs calibration batches (or give 'indices').")
        influence = block_influence(model, batches)
        indices = sorted(torch.argsort(influence)[:count].tolist())
    else:
        influence = None
    before = count_params(model)
    plan = PrunePlan(drop_layers=sorted(int(i) for i in indices))
    apply_plan(model, plan, "shrink")
    return model, {
        "params_before": before,
        "params_after": count_params(model),
        "dropped": plan.drop_layers,
        "influence": influence.tolist() if influence is not None else None,
        "plan": plan.to_dict(),
        "skipped": [],
    }
