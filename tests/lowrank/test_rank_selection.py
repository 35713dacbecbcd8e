"""Rank selection: energy threshold and budgets met exactly (or refused)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netslim.core.errors import NetslimError
from netslim.lowrank.rank import (
    LayerBudget,
    allocate_ranks,
    allocation_cost,
    break_even_rank,
    energy_rank,
    energy_share,
)


def test_energy_rank():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # σ² = 9, 4, 1 of 14
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.65) == 2
    assert energy_rank(s, 1.0) == 3
    with pytest.raises(NetslimError, match="'energy'"):
        energy_rank(s, 1.5)


def test_break_even_rank():
    assert break_even_rank(110, 1000, 10) == 9  # 9·110 = 990 < 1000
    assert break_even_rank(100, 1000, 50) == 9  # 10·100 = 1000 is not a saving
    assert break_even_rank(2000, 1000, 5) == 0


def _layers(seed: int, count: int) -> dict[str, LayerBudget]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(count):
        m, n = (int(v) for v in torch.randint(4, 60, (2,), generator=g))
        sigma = torch.rand(min(m, n), generator=g).sort(descending=True).values
        top = min(m, n)
        out[f"l{i}"] = LayerBudget(tuple(energy_share(sigma)), m + n, m * n, max(1, break_even_rank(m + n, m * n, top)))
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 6), frac=st.floats(0.0, 1.2))
def test_budget_is_met_exactly(seed, count, frac):
    layers = _layers(seed, count)
    low = sum(lay.per_rank for lay in layers.values())
    high = sum(lay.dense for lay in layers.values())
    budget = low + frac * (high - low)
    ranks = allocate_ranks(layers, budget)
    cost = allocation_cost(layers, ranks)
    assert cost <= budget
    # Exact in the discrete sense: no layer's next unit fits in what is left.
    for name, r in ranks.items():
        lay = layers[name]
        if r is not None:
            nxt = lay.per_rank if r < lay.max_rank else lay.dense - r * lay.per_rank
            assert cost + nxt > budget


def test_budget_below_rank_one_everywhere_is_refused():
    layers = _layers(0, 3)
    need = sum(lay.per_rank for lay in layers.values())
    with pytest.raises(NetslimError, match="budget cannot be met.*rank 1"):
        allocate_ranks(layers, need - 1)


def test_greedy_prefers_the_layer_with_more_energy_per_cost():
    flat = LayerBudget((0.25, 0.25, 0.25, 0.25), 10, 100, 4)
    steep = LayerBudget((0.9, 0.05, 0.03, 0.02), 10, 100, 4)
    ranks = allocate_ranks({"flat": flat, "steep": steep}, 40)
    assert ranks == {"flat": 3, "steep": 1}
