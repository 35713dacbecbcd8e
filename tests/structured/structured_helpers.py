"""Helpers shared by the structured-pruning tests.

A plain module, imported as ``from structured_helpers import ...``: pytest's default
(prepend) import mode puts this folder on ``sys.path`` for the test modules in it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import netslim
from netslim.core.serialize import read_description
from netslim.prune.structured import apply_plan, plan_from_keep, replay

X = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so that a wrongly sliced BN changes the
    output; returns the model in eval mode."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def half_plan(graph, seed: int = 0):
    """A plan keeping a random half (at least one) of the units of every prunable group."""
    gen = torch.Generator().manual_seed(seed)
    return plan_from_keep(
        graph, {g.id: torch.randperm(g.size, generator=gen)[: max(1, g.size // 2)] for g in graph.prunable()}
    )


def check_mask_equals_shrink(model, plan, x, tmp_path, out=lambda m, x: m(x)):
    """The five properties of the issue's coverage list, for one plan: forward works, output
    shape kept, params fewer, masked == shrunk (1e-5), save/load and plan replay round-trip.
    Returns the shrunk model."""
    masked = apply_plan(copy.deepcopy(model), plan, "mask")
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    with torch.no_grad():
        y, y_mask, y_ref = out(shrunk, x), out(masked, x), out(model, x)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_mask, atol=1e-5, rtol=1e-5)
    assert n_params(shrunk) < n_params(model)
    path = netslim.save(shrunk, tmp_path / "m.safetensors", info={"prune_plans": [plan.to_dict()]})
    back = netslim.load(path)
    with torch.no_grad():
        torch.testing.assert_close(out(back, x), y, atol=1e-6, rtol=1e-6)
    again = replay(copy.deepcopy(model), read_description(path)["info"]["prune_plans"])
    with torch.no_grad():
        torch.testing.assert_close(out(again, x), y, atol=0, rtol=0)
    return shrunk
