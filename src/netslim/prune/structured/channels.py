"""CNN channel/filter pruning: graph -> scores -> kept channels -> smaller dense model.

``shrink_channels(model, example_inputs, ratio=0.3)`` or ``target_macs=0.5`` (keep half of
the MACs, found by bisection on the global ratio). Returns the shrunk model (in place) and
a report with the plan, the groups touched and every module skipped with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from netslim.core.errors import NetslimError, bad_param
from netslim.core.graph import DependencyGraph
from netslim.core.selectors import matches
from netslim.measure.counts import count_params, macs_per_layer

from .generic import nothing_removed, report_empty, structured_graph
from .importance import group_scores
from .plan import PrunePlan, apply_plan, plan_from_keep
from .select import choose_keep

log = logging.getLogger(__name__)


def total_macs(model: nn.Module, example_inputs: Any) -> int:
    return int(sum(macs_per_layer(model, example_inputs).values()))


def estimate_macs(model: nn.Module, layer_macs: Mapping[str, int], plan: PrunePlan) -> float:
    """MACs after ``plan`` without building the model: a Conv/Linear's MACs are its weight's
    element count times its output positions, so each scales with the kept share of every
    sliced weight dim (exact for the layers the graph prunes)."""
    share: dict[str, float] = {}
    for e in plan.entries:
        if e["param"] == "weight" and e["module"] in layer_macs:
            size = model.get_submodule(e["module"]).weight.shape[e["dim"]]
            share[e["module"]] = share.get(e["module"], 1.0) * len(e["keep"]) / size
    return sum(m * share.get(name, 1.0) for name, m in layer_macs.items())


def check_exclude(model: nn.Module, exclude: Iterable[str]) -> None:
    """Every ``exclude`` selector matches a module of ``model``; NetslimError naming the one that does not."""
    names = [(n, m) for n, m in model.named_modules() if n]
    for sel in exclude or ():
        if not any(matches(sel, n, m) for n, m in names):
            sample = ", ".join(n for n, _ in names[:4])
            raise NetslimError(
                f"exclude selector {sel!r} matches no module of {type(model).__name__} (module names "
                f"look like {sample}, ...; a selector is a name, a glob, 're:' + regex or a type)."
            )


def excluded_groups(model: nn.Module, graph: DependencyGraph, exclude: Iterable[str]) -> set[int]:
    """Ids of groups with any slot in a module matched by ``exclude`` selectors."""
    exclude = list(exclude or ())
    check_exclude(model, exclude)
    out = set()
    for g in graph.prunable():
        for slot, _ in g.slots:
            m = model.get_submodule(slot.module)
            if any(matches(sel, slot.module, m) for sel in exclude):
                out.add(g.id)
                break
    return out


def plan_channels(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    criterion: str = "l2",
    scope: str = "global",
    ratios: Mapping[str, float] | None = None,
    min_keep_ratio: float = 0.1,
    round_to: int = 1,
    on_empty: str = "clamp",
    exclude: Iterable[str] = (),
    batches: Iterable[Any] | None = None,
    loss_fn: Callable | None = None,
    seed: int = 0,
) -> tuple[PrunePlan, DependencyGraph, dict]:
    """The prune plan (not applied) for ``model``; see :func:`shrink_channels`."""
    if (ratio is None) == (target_macs is None) and not ratios:
        raise NetslimError(
            "plan_channels: give exactly one of 'ratio' (share of channels removed) "
            f"or 'target_macs' (share of MACs kept); got ratio={ratio!r}, target_macs={target_macs!r}."
        )
    if ratio is not None and not 0 <= ratio < 1:
        raise bad_param("plan_channels", "ratio", "a float in [0, 1)", ratio)
    if target_macs is not None and not 0 < target_macs < 1:
        raise bad_param("plan_channels", "target_macs", "a float in (0, 1)", target_macs)
    check_exclude(model, exclude)
    graph = structured_graph(model, example_inputs, exclude)
    scores = group_scores(model, graph, criterion, batches=batches, loss_fn=loss_fn, seed=seed)
    only = {g.id for g in graph.prunable()} - excluded_groups(model, graph, exclude)

    def plan_for(r: float) -> PrunePlan:
        keep = choose_keep(
            model,
            graph,
            scores,
            r,
            scope=scope,
            ratios=ratios,
            min_keep_ratio=min_keep_ratio,
            round_to=round_to,
            on_empty=on_empty,
            only=only,
        )
        return plan_from_keep(graph, keep)

    info: dict[str, Any] = {}
    if target_macs is None:
        plan = plan_for(ratio or 0.0)
    else:
        if ratios:
            raise NetslimError(
                "plan_channels: 'target_macs' sets one global ratio; it cannot be combined with per-layer 'ratios'."
            )
        layer_macs = macs_per_layer(model, example_inputs)
        base = sum(layer_macs.values())
        lo, hi, plan = 0.0, 0.99, plan_for(0.0)
        for _ in range(14):  # bisection on the removed share; MACs fall monotonically with it
            mid = (lo + hi) / 2
            cand = plan_for(mid)
            macs = estimate_macs(model, layer_macs, cand)
            if macs <= target_macs * base:
                hi, plan = mid, cand
            else:
                lo = mid
        info = {"ratio": hi, "macs_before": base}
        if hi >= 0.99:
            log.warning("target_macs %.3f not reachable within the minimum keep ratios", target_macs)
    return plan, graph, info


def shrink_channels(model: nn.Module, example_inputs: Any, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Prune coupled channel groups of a traceable CNN physically; returns ``(model, report)``.

    Keyword arguments: ``ratio`` (share of channels removed) or ``target_macs`` (share of
    MACs kept), ``criterion`` (l1, l2, l2_bn, bn_scale, taylor, activation, random), ``scope`` (global,
    uniform), ``ratios`` ({selector: ratio}, per layer), ``min_keep_ratio``, ``round_to``,
    ``on_empty`` (clamp, fail), ``exclude`` (selectors), ``batches`` + ``loss_fn`` (taylor).
    """
    params_before = count_params(model)
    plan, graph, info = plan_channels(model, example_inputs, **kwargs)
    skipped = list(graph.skipped)
    if plan.empty:  # no silent no-op: say which groups were locked or excluded, and why
        why = nothing_removed(
            graph,
            "channels",
            None,
            kwargs.get("ratio") or 0.0,
            excluded_groups(model, graph, kwargs.get("exclude", ())),
        )
        report_empty(why, kwargs.get("on_empty", "clamp"), "channels")
        skipped += why
    apply_plan(model, plan, "shrink")
    report = {
        **info,
        "params_before": params_before,
        "params_after": count_params(model),
        "macs_after": total_macs(model, example_inputs),
        "groups": plan.groups,
        "locked": [{"group": g.name, "reason": g.locked} for g in graph.groups if not g.prunable],
        "skipped": skipped,
        "plan": plan.to_dict(),
    }
    return model, report
