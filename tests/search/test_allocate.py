import itertools
import random

import pytest

from netslim.core.errors import NetslimError
from netslim.search.allocate import UnreachableBudget, brute_force, greedy_allocate, knapsack


def _instance(rng: random.Random, layers: int, options: int, int_costs: bool = True):
    opts = {}
    for i in range(layers):
        costs = sorted((rng.randint(1, 20) if int_costs else rng.uniform(1, 20)) for _ in range(options))
        losses = sorted((rng.uniform(0, 5) for _ in range(options)), reverse=True)  # cheaper = worse
        opts[f"l{i}"] = list(zip(costs, losses))
    return opts


def _value(opts, choice):
    return sum(opts[n][k][1] for n, k in choice.items()), sum(opts[n][k][0] for n, k in choice.items())


@pytest.mark.parametrize("seed", range(25))
def test_knapsack_matches_brute_force_on_integer_costs(seed):
    rng = random.Random(seed)
    opts = _instance(rng, rng.randint(1, 5), rng.randint(1, 4))
    lo = sum(min(c for c, _ in o) for o in opts.values())
    hi = sum(max(c for c, _ in o) for o in opts.values())
    budget = rng.randint(lo, hi)
    got, ref = knapsack(opts, budget), brute_force(opts, budget)
    (v_got, c_got), (v_ref, _) = _value(opts, got), _value(opts, ref)
    assert c_got <= budget
    assert v_got == pytest.approx(v_ref, abs=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_knapsack_float_costs_always_fit_and_are_near_optimal(seed):
    rng = random.Random(100 + seed)
    opts = _instance(rng, 4, 4, int_costs=False)
    lo = sum(min(c for c, _ in o) for o in opts.values())
    hi = sum(max(c for c, _ in o) for o in opts.values())
    budget = lo + rng.uniform(0.2, 0.9) * (hi - lo)
    got = knapsack(opts, budget, resolution=20000)
    v_got, c_got = _value(opts, got)
    assert c_got <= budget + 1e-9  # rounded-up grid: never over budget
    # Optimal for costs shrunk by one grid step per layer: bounded by brute force there and here.
    v_ref, _ = _value(opts, brute_force(opts, budget))
    v_relaxed, _ = _value(opts, brute_force(opts, budget - 4 * budget / 20000))
    assert v_ref - 1e-9 <= v_got <= v_relaxed + 1e-9


def test_knapsack_budget_met_exactly_when_the_optimum_needs_all_of_it():
    opts = {"a": [(1, 10.0), (5, 0.0)], "b": [(1, 10.0), (4, 0.0)]}
    got = knapsack(opts, 9)
    assert got == {"a": 1, "b": 1} and _value(opts, got)[1] == 9
    assert knapsack(opts, 8) in ({"a": 1, "b": 0}, {"a": 0, "b": 1})


def test_knapsack_respects_fixed_cost():
    opts = {"a": [(1, 1.0), (3, 0.0)]}
    assert knapsack(opts, 5, fixed=2) == {"a": 1}
    assert knapsack(opts, 4, fixed=2) == {"a": 0}


def test_unreachable_budget_is_a_clear_error():
    opts = {"a": [(3, 0.0), (5, 0.0)], "b": [(2, 1.0)]}
    with pytest.raises(UnreachableBudget, match="cannot be met by any policy.*below 5"):
        knapsack(opts, 4.5)
    with pytest.raises(UnreachableBudget, match="cannot be met"):
        greedy_allocate({"a": [0.0, 1.0]}, lambda c: 10 - c["a"], 5)


def test_empty_ranges_are_clear_errors():
    with pytest.raises(NetslimError, match="layer 'b' is empty"):
        knapsack({"a": [(1, 0.0)], "b": []}, 10)
    with pytest.raises(NetslimError, match="search space is empty"):
        knapsack({}, 10)
    with pytest.raises(NetslimError, match="layer 'a' is empty"):
        greedy_allocate({"a": []}, lambda c: 0.0, 1)


def test_knapsack_equals_mixed_precision_allocation_oracle():
    """Bit allocation is a knapsack too: the exact frontier DP of quantize.mixed is the oracle."""
    from netslim.quantize.mixed import allocate_bits

    rng = random.Random(7)
    for _ in range(10):
        sizes = {f"l{i}": rng.randint(10, 200) for i in range(5)}
        sens = {n: {b: rng.uniform(0, 1) / b for b in (2, 4, 8)} for n in sizes}
        avg = rng.uniform(2.5, 7.5)
        ref = allocate_bits(sens, sizes, avg)
        opts = {n: [(b * sizes[n], sens[n][b]) for b in (2, 4, 8)] for n in sizes}
        budget = avg * sum(sizes.values())
        got = knapsack(opts, int(budget), resolution=int(budget) + 1)
        assert sum(sens[n][(2, 4, 8)[k]] for n, k in got.items()) == pytest.approx(
            sum(sens[n][b] for n, b in ref.items()), abs=1e-12
        )


def test_greedy_meets_budget_on_a_non_additive_cost():
    # cost with an interaction term (like a conv between two pruned groups)
    keep = [1.0, 0.75, 0.5, 0.25]
    cost = lambda c: 100 * keep[c["a"]] * keep[c["b"]] + 20 * keep[c["a"]]  # noqa: E731
    losses = {"a": [0, 1, 3, 9], "b": [0, 0.5, 1, 2]}
    for budget in (30, 50, 70, 110):
        pol = greedy_allocate(losses, cost, budget)
        assert cost(pol) <= budget
        # no single step back still fits with a lower loss (slack is spent)
        for n in pol:
            if pol[n] > 0:
                assert cost({**pol, n: pol[n] - 1}) > budget
    best = min(
        (sum(losses[n][k] for n, k in zip("ab", ks)), ks)
        for ks in itertools.product(range(4), repeat=2)
        if cost(dict(zip("ab", ks))) <= 50
    )
    assert sum(losses[n][k] for n, k in greedy_allocate(losses, cost, 50).items()) <= best[0] + 1.0
