"""From scores to kept units: uniform, global or per-layer ratios; minimum keep; rounding.

``ratio`` is always the *fraction of units removed* (a float in [0, 1)); counts are never
passed through the same parameter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.graph import DependencyGraph, Group
from netslim.core.selectors import settings_for

log = logging.getLogger(__name__)


def _min_keep(g: Group, min_keep_ratio: float, round_to: int) -> int:
    return min(g.size, max(1, math.ceil(g.size * min_keep_ratio), min(round_to, g.size)))


def _round_up(n: int, g: Group, round_to: int) -> int:
    if round_to <= 1:
        return n
    return min(g.size, int(math.ceil(n / round_to) * round_to))


def _per_group_ratio(model: nn.Module, g: Group, ratio: float, ratios: Mapping[str, float] | None) -> float:
    if ratios:
        module = model.get_submodule(g.name) if g.name else model
        r = settings_for(g.name, module, ratios)
        if r is not None:
            return float(r)
    return ratio


def _clamp(g: Group, n_keep: int, floor: int, on_empty: str, ratio: float) -> int:
    if n_keep >= floor:
        return n_keep
    if on_empty == "fail" and n_keep < 1:
        raise NetslimError(
            f"Ratio {ratio} would remove every unit of group {g.name!r} ({g.size} units); "
            "lower it or set on_empty='clamp'."
        )
    if n_keep < 1:
        log.warning("ratio %.3f would empty group %s: keeping %d of %d units", ratio, g.name, floor, g.size)
    return floor


def choose_keep(
    model: nn.Module,
    graph: DependencyGraph,
    scores: dict[int, torch.Tensor],
    ratio: float,
    *,
    scope: str = "global",
    ratios: Mapping[str, float] | None = None,
    min_keep_ratio: float = 0.1,
    round_to: int = 1,
    on_empty: str = "clamp",
    only: set[int] | None = None,
) -> dict[int, torch.Tensor]:
    """Kept unit indices (sorted) per group id; groups left whole are omitted.

    ``scope="uniform"``: every group loses ``ratio`` of its units (or its entry in ``ratios``,
    selectors on the group's first producer module). ``scope="global"``: one threshold over
    all groups on per-group mean-normalised scores, so that the least important units of the
    whole network go first, never below ``min_keep_ratio`` of any group.
    """
    groups = [g for g in graph.prunable() if only is None or g.id in only]
    n_keep: dict[int, int] = {}
    if scope == "global" and not ratios:
        flat = []
        for g in groups:
            s = scores[g.id].float()
            s = s / s.mean().clamp_min(1e-12)
            order = torch.argsort(s)  # ascending: least important first
            removable = g.size - _min_keep(g, min_keep_ratio, round_to)
            flat += [(float(s[j]), g.id) for j in order[:removable].tolist()]
        total = sum(g.size for g in groups)
        flat.sort()
        removed: dict[int, int] = {}
        for _, gid in flat[: int(round(ratio * total))]:
            removed[gid] = removed.get(gid, 0) + 1
        for g in groups:
            n_keep[g.id] = _round_up(g.size - removed.get(g.id, 0), g, round_to)
    else:
        for g in groups:
            r = _per_group_ratio(model, g, ratio, ratios)
            floor = _min_keep(g, min_keep_ratio, round_to)
            n = _round_up(g.size - int(math.floor(r * g.size + 1e-9)), g, round_to)
            n_keep[g.id] = _clamp(g, n, floor, on_empty, r)
    keep = {}
    for g in groups:
        n = n_keep[g.id]
        if n < g.size:
            top = torch.argsort(scores[g.id].float(), descending=True, stable=True)[:n]
            keep[g.id] = top.sort().values
    return keep
