"""Budgeted per-layer allocation from sensitivity curves.

Every layer (or channel group) has options ``(cost, loss)``: the cost it contributes (params,
MACs, bytes, latency) and the metric lost when only that layer takes the option. Assuming
losses add up (the usual first-order assumption of sensitivity-based allocation), the
allocation is a *multiple-choice knapsack*: one option per layer, total cost <= budget,
minimum total loss.

* :func:`knapsack`: exact dynamic programme over a discretised cost axis. Costs are rounded
  *up* to the grid, so the result always fits the true budget; with integer costs and
  ``resolution >= budget`` the grid is the integers and the answer is the exact optimum.
* :func:`greedy_allocate`: for costs that do not add up over layers (channel counts are
  shared by a producer and its consumers; latency of a conv depends on both its channel
  counts): start from the least compressed policy, repeatedly take the step with the least
  loss per unit of *exactly evaluated* cost saved until the budget is met, then spend what
  is left on the steps back that fit best.

Both raise :class:`UnreachableBudget` when even the most compressed option of every layer
costs more than the budget, and :class:`NetslimError` for an empty option list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence

from netslim.core.errors import NetslimError

Option = tuple[float, float]  # (cost, loss)


class UnreachableBudget(NetslimError):
    """No policy of the search space meets the budget."""


def _check(options: Mapping[str, Sequence[Option]]) -> None:
    if not options:
        raise NetslimError("The search space is empty: no layer to allocate (check 'include' / 'exclude').")
    for name, opts in options.items():
        if not opts:
            raise NetslimError(f"The search space of layer {name!r} is empty: give at least one option.")


def unreachable(budget: float, lowest: float, what: str = "cost") -> UnreachableBudget:
    return UnreachableBudget(
        f"The budget cannot be met by any policy in the search space: {what} budget {budget:,.6g} is below "
        f"{lowest:,.6g}, the {what} of the most compressed policy; raise the budget or widen the ranges."
    )


def knapsack(
    options: Mapping[str, Sequence[Option]], budget: float, *, fixed: float = 0.0, resolution: int = 4000
) -> dict[str, int]:
    """Exact multiple-choice knapsack on a grid of ``resolution`` cost steps.

    ``fixed``: cost outside the allocated layers (counted against the budget). Returns the
    chosen option index per layer; minimises the summed loss with summed cost <= budget.
    """
    _check(options)
    names = list(options)
    lowest = fixed + sum(min(c for c, _ in options[n]) for n in names)
    if lowest > budget * (1 + 1e-12):
        raise unreachable(budget, lowest)
    room = budget - fixed
    if resolution < 1:
        raise NetslimError(f"The 'resolution' parameter of knapsack must be an int >= 1; got {resolution!r}.")
    integral = all(float(c).is_integer() for n in names for c, _ in options[n]) and room <= resolution
    unit = 1.0 if integral else room / resolution
    cap = int(math.floor(room / unit + 1e-9))
    # Weights rounded up: a policy that fits on the grid fits for real.
    weights = {n: [int(math.ceil(c / unit - 1e-9)) for c, _ in options[n]] for n in names}
    inf = float("inf")
    best = [0.0] + [inf] * cap  # best[w]: min loss with grid cost exactly w (so far)
    choice: list[list[int]] = []
    for n in names:
        new = [inf] * (cap + 1)
        pick = [-1] * (cap + 1)
        for k, ((_, loss), w) in enumerate(zip(options[n], weights[n])):
            if w > cap:
                continue
            for u in range(cap - w + 1):
                if best[u] < inf and best[u] + loss < new[u + w]:
                    new[u + w], pick[u + w] = best[u] + loss, k
        best = new
        choice.append(pick)
    if all(v == inf for v in best):
        # Fits for real but not once rounded up to the grid: the greedy path handles it.
        raise UnreachableBudget(
            f"knapsack: budget too tight for the cost grid (resolution {resolution}); "
            "raise 'resolution' or use the greedy allocation."
        )
    w = min(range(cap + 1), key=lambda u: (best[u], u))
    out: dict[str, int] = {}
    for n, pick in zip(reversed(names), reversed(choice)):
        k = pick[w]
        out[n] = k
        w -= weights[n][k]
    return {n: out[n] for n in names}


def brute_force(options: Mapping[str, Sequence[Option]], budget: float, fixed: float = 0.0) -> dict[str, int]:
    """Enumerate every policy (tests and tiny spaces only)."""
    import itertools

    _check(options)
    names = list(options)
    best, arg = float("inf"), None
    for combo in itertools.product(*(range(len(options[n])) for n in names)):
        cost = fixed + sum(options[n][k][0] for n, k in zip(names, combo))
        loss = sum(options[n][k][1] for n, k in zip(names, combo))
        if cost <= budget + 1e-9 and loss < best:
            best, arg = loss, combo
    if arg is None:
        raise unreachable(budget, fixed + sum(min(c for c, _ in options[n]) for n in names))
    return dict(zip(names, arg))


def greedy_allocate(
    losses: Mapping[str, Sequence[float]],
    cost: Callable[[dict[str, int]], float],
    budget: float,
    *,
    start: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Greedy allocation with an exact (possibly non-additive) ``cost(policy)``.

    ``losses[name][k]``: loss of option k of that layer, options ordered from least to most
    compressed (cost non-increasing in k). Starts from ``start`` (default: option 0 everywhere).
    """
    _check({n: list(v) for n, v in losses.items()})
    names = list(losses)
    most = {n: len(losses[n]) - 1 for n in names}
    lowest = cost(most)
    if lowest > budget * (1 + 1e-12):
        raise unreachable(budget, lowest)
    pol = dict(start) if start else {n: 0 for n in names}
    cur = cost(pol)
    while cur > budget:  # shrink: least loss per unit of cost saved
        best: tuple[float, Hashable] | None = None
        for n in names:
            if pol[n] >= most[n]:
                continue
            k = pol[n] + 1
            saved = cur - cost({**pol, n: k})
            if saved <= 0:
                continue
            rate = (losses[n][k] - losses[n][pol[n]]) / saved
            if best is None or rate < best[0]:
                best = (rate, n)
        if best is None:  # only steps that save nothing are left, yet the most compressed policy fits
            pol = dict(most)
            break
        pol[best[1]] += 1
        cur = cost(pol)
    return fill_slack(pol, losses, cost, budget)


def fill_slack(
    pol: dict[str, int], losses: Mapping[str, Sequence[float]], cost: Callable[[dict[str, int]], float], budget: float
) -> dict[str, int]:
    """Spend the slack: undo the compression steps that gain most per unit of cost and still fit.

    Stops when no single step back (one option of one layer) fits the budget, so the slack left
    is smaller than the cost of the cheapest remaining step back. ``losses`` gives the gain of a
    step (the sensitivity curves); layers where it measured none are restored last.
    """
    cur = cost(pol)
    while True:
        best = None
        for n in pol:
            if pol[n] == 0:
                continue
            k = pol[n] - 1
            c = cost({**pol, n: k})
            if c > budget:
                continue
            # A step back that measured no gain still costs nothing in metric and gives the
            # fine-tuning more capacity: take it too, after every step that measured a gain.
            gain = max(losses[n][pol[n]] - losses[n][k], 0.0) + 1e-9
            rate = gain / max(c - cur, 1e-12)
            if best is None or rate > best[0]:
                best = (rate, n, c)
        if best is None:
            return pol
        pol[best[1]] -= 1
        cur = best[2]


def repair(
    pol: dict[str, int], losses: Mapping[str, Sequence[float]], cost: Callable[[dict[str, int]], float], budget: float
) -> dict[str, int]:
    """Make a policy found on a surrogate cost fit the exact cost, then spend any slack."""
    if cost(pol) > budget:
        return greedy_allocate(losses, cost, budget, start=pol)
    return fill_slack(dict(pol), losses, cost, budget)
