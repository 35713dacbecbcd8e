"""Rank selection: energy threshold and a global budget allocated across layers.

Each candidate layer is a matrix (m×n) factorized as A (m×r) · B (r×n), so its cost is
linear in the rank: ``r × per_rank`` (params: m + n; MACs: positions × (m + n)) against
``dense`` for the original layer. Its error-versus-rank curve is the tail of its
normalised spectrum ``σ_i² / Σσ²`` (for data-aware SVD, the spectrum of W·L, i.e. the
share of the layer's output energy lost).

:func:`allocate_ranks` is the greedy solution of that knapsack: every layer starts at
rank 1, then the unit (one more rank, or going back to dense once the rank reaches the
break-even point) with the largest error reduction per unit of cost is bought while it
fits. The result never exceeds the budget, and no further unit fits in what is left
(the slack is below the cost of every layer's next unit). It raises when rank 1
everywhere already exceeds the budget.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from netslim.core.errors import NetslimError, bad_param


def energy_rank(sigma: torch.Tensor, energy: float) -> int:
    """Smallest r whose leading σ² cover ``energy`` (a fraction in (0, 1]) of Σσ²."""
    if not 0 < energy <= 1:
        raise bad_param("energy_rank", "energy", "a float in (0, 1]", energy)
    e = sigma.double() ** 2
    total = float(e.sum())
    if total == 0:
        return 1
    cum = torch.cumsum(e, 0) / total
    # A tiny tolerance: energy=1.0 must give full rank, not fail on rounding.
    return min(int((cum < energy - 1e-12).sum()) + 1, len(sigma))


def energy_share(sigma: torch.Tensor) -> list[float]:
    """Normalised σ² (descending), summing to 1 (all zeros for a zero matrix)."""
    e = sigma.double() ** 2
    total = float(e.sum())
    return (e / total).tolist() if total > 0 else [0.0] * len(sigma)


@dataclass(frozen=True)
class LayerBudget:
    """One layer's cost model and error curve for :func:`allocate_ranks`."""

    share: tuple[float, ...]  # normalised σ², descending
    per_rank: float  # cost of one rank unit
    dense: float  # cost of the dense layer
    max_rank: int  # largest rank that still costs less than dense (>= 1)


def break_even_rank(per_rank: float, dense: float, top: int) -> int:
    """Largest r <= top with r·per_rank < dense (0 if even rank 1 does not save)."""
    r = int(dense // per_rank)
    if r * per_rank >= dense:
        r -= 1
    return max(0, min(r, top))


def _next_unit(layer: LayerBudget, rank: int | None) -> tuple[float, float] | None:
    """(gain, cost) of the layer's next unit, or None when it is dense already."""
    if rank is None:
        return None
    if rank < layer.max_rank:
        return layer.share[rank], layer.per_rank
    return sum(layer.share[rank:]), layer.dense - rank * layer.per_rank


def allocate_ranks(layers: Mapping[str, LayerBudget], budget: float) -> dict[str, int | None]:
    """Ranks (None: keep dense) whose total cost is <= ``budget``; greedy by gain per cost."""
    need = sum(lay.per_rank for lay in layers.values())
    if need > budget:
        raise NetslimError(
            f"The budget cannot be met: rank 1 in each of the {len(layers)} selected layers already costs "
            f"{need:,.0f}, more than the {max(budget, 0):,.0f} left for them; raise 'target' or exclude layers."
        )
    ranks: dict[str, int | None] = {n: 1 for n in layers}
    spent = need
    heap: list[tuple[float, int, str]] = []
    order = {n: i for i, n in enumerate(layers)}

    def push(name: str) -> None:
        unit = _next_unit(layers[name], ranks[name])
        if unit is not None:
            gain, cost = unit
            heapq.heappush(heap, (-gain / cost, order[name], name))

    for n in layers:
        push(n)
    while heap:
        _, _, name = heapq.heappop(heap)
        lay, r = layers[name], ranks[name]
        cost = lay.per_rank if r < lay.max_rank else lay.dense - r * lay.per_rank
        if spent + cost > budget:
            continue  # this layer's later units cost at least as much per step: drop it
        spent += cost
        ranks[name] = r + 1 if r < lay.max_rank else None
        push(name)
    return ranks


def allocation_cost(layers: Mapping[str, LayerBudget], ranks: Mapping[str, int | None]) -> float:
    return sum(layers[n].dense if r is None else r * layers[n].per_rank for n, r in ranks.items())
