import random

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.measure.counts import count_params
from netslim.prune.structured import total_macs
from netslim.search.allocate import UnreachableBudget
from netslim.search.api import allocate_from_sensitivity
from netslim.search.channels import ChannelSpace
from netslim.search.sensitivity import SensitivityTable

X = torch.randn(2, 1, 28, 28)
OPTS = (0.0, 0.25, 0.5, 0.75)


def _random_policies(space, n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        yield {g: rng.choice(OPTS) for g in space.names}


@pytest.mark.parametrize("arch", ["resnet", "lenet5"])
def test_exact_cost_equals_the_shrunk_model(arch, tiny_resnet, tiny_cnn):
    model = tiny_resnet if arch == "resnet" else tiny_cnn
    for metric, measure in (("macs", lambda m: total_macs(m, X[:1])), ("params", count_params)):
        space = ChannelSpace(model, X[:1], options=OPTS, metric=metric)
        for pol in _random_policies(space, 4):
            pruned = space.apply(pol)
            assert pruned(X).shape == (2, 10)
            assert space.cost(pol) == pytest.approx(measure(pruned), rel=1e-9)


def test_separable_cost_is_an_upper_bound_tight_for_uniform(tiny_resnet):
    space = ChannelSpace(tiny_resnet, X[:1], options=OPTS, metric="macs")
    sep, fixed = space.separable_options()
    for pol in _random_policies(space, 20, seed=1):
        idx = {n: OPTS.index(r) for n, r in pol.items()}
        bound = fixed + sum(sep[n][k] for n, k in idx.items())
        assert bound >= space.cost(pol) - 1e-6
    uniform = {n: 0.5 for n in space.names}
    assert fixed + sum(sep[n][2] for n in space.names) == pytest.approx(space.cost(uniform), rel=1e-9)


def _fake_table(space, seed=0):
    rng = random.Random(seed)
    curves = {
        n: [0.9 - sum(rng.uniform(0, 0.1) for _ in range(k)) for k in range(len(space.options))] for n in space.names
    }
    return SensitivityTable("channels", "accuracy", True, 0.9, list(space.options), curves)


@pytest.mark.parametrize("strategy", ["knapsack", "greedy"])
@pytest.mark.parametrize("share", [0.3, 0.5, 0.8])
def test_allocation_meets_budget_and_uses_it(strategy, share, tiny_resnet):
    space = ChannelSpace(tiny_resnet, X[:1], options=OPTS, metric="macs")
    budget = share * space.dense_cost()
    choice = allocate_from_sensitivity(space, _fake_table(space), budget, strategy)
    cost = space.cost(space.policy(choice))
    assert cost <= budget
    assert total_macs(space.apply(space.policy(choice)), X[:1]) <= budget
    for n, k in choice.items():  # no single step back fits: the budget is used
        if k > 0:
            assert space.cost(space.policy({**choice, n: k - 1})) > budget


def test_unreachable_and_empty_spaces(tiny_resnet):
    space = ChannelSpace(tiny_resnet, X[:1], options=OPTS, metric="macs")
    lowest = space.cost({n: 0.75 for n in space.names})
    with pytest.raises(UnreachableBudget, match="cannot be met by any policy"):
        allocate_from_sensitivity(space, _fake_table(space), 0.9 * lowest, "knapsack")
    with pytest.raises(NetslimError, match="'ratios' search range is empty"):
        ChannelSpace(tiny_resnet, X[:1], options=[])
    with pytest.raises(NetslimError, match="values in \\[0, 1\\)"):
        ChannelSpace(tiny_resnet, X[:1], options=[0.0, 1.0])
    with pytest.raises(NetslimError, match="no prunable group is left"):
        ChannelSpace(tiny_resnet, X[:1], options=OPTS, exclude=["type:Conv2d", "type:Linear"])
    with pytest.raises(NetslimError, match="metric"):
        ChannelSpace(tiny_resnet, X[:1], options=OPTS, metric="flops")
