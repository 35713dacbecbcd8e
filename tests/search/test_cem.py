"""CEM (AMC-style) agent: projection onto the budget and the fill-back that gives the slack back."""

import random

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.prune.structured import total_macs
from netslim.search.cem import cem_search, fit_budget, project
from netslim.search.channels import ChannelSpace

X = torch.randn(1, 1, 28, 28)
OPTS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


def _losses(space, seed=0):
    rng = random.Random(seed)
    out = {}
    for n in space.names:
        acc, curve = 0.0, []
        for _ in space.options:
            curve.append(acc)
            acc += rng.uniform(0, 0.2)
        out[n] = curve  # loss grows with compression, steepness differs per group
    return out


def _step_backs(space, choice):
    """Cost of every single one-option step back (less compression) of ``choice``."""
    return {n: space.cost(space.policy({**choice, n: k - 1})) for n, k in choice.items() if k > 0}


@pytest.mark.parametrize("share", [0.3, 0.5, 0.7])
def test_fill_back_meets_the_budget_within_one_step(share, tiny_resnet):
    space = ChannelSpace(tiny_resnet, X, options=OPTS, metric="macs")
    budget = share * space.dense_cost()
    losses = _losses(space)
    rng = random.Random(1)
    for _ in range(8):
        action = {n: rng.randrange(len(OPTS)) for n in space.names}
        clipped = project(space, action, budget)
        filled = fit_budget(space, action, budget, losses)
        cost = space.cost(space.policy(filled))
        assert cost <= budget
        assert total_macs(space.apply(space.policy(filled)), X) <= budget  # the built model, not the estimate
        assert cost >= space.cost(space.policy(clipped))
        backs = _step_backs(space, filled)
        assert all(c > budget for c in backs.values())  # no single step back still fits
        if backs:  # so the slack is smaller than the cheapest step back of any group
            assert budget - cost < min(c - cost for c in backs.values())


class _AdditiveSpace:
    """Two groups with additive costs: the choice the fill-back makes is checkable by hand."""

    names = ["a", "b"]
    options = (0.0, 0.5)
    metric = "macs"
    step_cost = {"a": 10.0, "b": 10.0}

    def policy(self, choice):
        return {n: self.options[k] for n, k in choice.items() if self.options[k] > 0}

    def cost(self, policy):
        return 40.0 - sum(self.step_cost[n] for n in policy)


def test_fill_back_restores_the_most_sensitive_group_first():
    space = _AdditiveSpace()
    # Both compressed costs 20; budget 30 leaves room for exactly one group's step back.
    for sensitive, other in (("a", "b"), ("b", "a")):
        losses = {sensitive: [0.0, 0.3], other: [0.0, 0.01]}
        assert fit_budget(space, {"a": 1, "b": 1}, 30.0, losses) == {sensitive: 0, other: 1}
    assert fit_budget(space, {"a": 1, "b": 1}, 30.0, None) == {"a": 1, "b": 1}  # projection alone keeps the slack
    assert fit_budget(space, {"a": 1, "b": 1}, 45.0, {"a": [0, 0.3], "b": [0, 0.01]}) == {"a": 0, "b": 0}


class _Runner:
    """Reward without a model: fewer channels removed in the early groups is better."""

    def __init__(self, names):
        self.weights = {n: 1.0 / (i + 1) for i, n in enumerate(names)}

    def run(self, params):
        return [{"accuracy": 1.0 - sum(self.weights[n] * r for n, r in p["policy"].items())} for p in params]


def test_cem_with_fill_back_uses_the_budget_and_without_it_undershoots(tiny_resnet):
    space = ChannelSpace(tiny_resnet, X, options=OPTS, metric="macs")
    budget = 0.5 * space.dense_cost()
    losses = _losses(space, seed=2)
    runner = _Runner(space.names)
    filled = cem_search(space, runner, budget, generations=3, population=6, seed=0, fill_back=losses)
    clipped = cem_search(space, runner, budget, generations=3, population=6, seed=0)
    for h in filled.history:
        for pol, cost in zip(h["policies"], h["costs"]):
            assert cost <= budget
            assert all(c > budget for c in _step_backs(space, space.indices(pol)).values())
    mean = lambda r: sum(c for h in r.history for c in h["costs"]) / sum(len(h["costs"]) for h in r.history)  # noqa: E731
    assert mean(filled) > mean(clipped)
    assert space.cost(filled.best) <= budget
    # Same first-generation actions: each filled-back policy keeps a superset of the clipped one's channels.
    assert all(f >= c for f, c in zip(filled.history[0]["rewards"], clipped.history[0]["rewards"]))
    assert filled.history[0]["rewards"] != clipped.history[0]["rewards"]


def test_fill_back_table_must_cover_every_group(tiny_resnet):
    space = ChannelSpace(tiny_resnet, X, options=OPTS, metric="macs")
    budget = 0.5 * space.dense_cost()
    action = {n: 0 for n in space.names}
    losses = _losses(space)
    with pytest.raises(NetslimError, match="fill_back"):
        fit_budget(space, action, budget, {n: v for n, v in list(losses.items())[1:]})
    with pytest.raises(NetslimError, match="fill_back"):
        fit_budget(space, action, budget, {n: v[:2] for n, v in losses.items()})
