"""Grouped convolutions (groups > 1, not depthwise): their own channels and their inputs are
pruned as positions within a group, alike in every group, so the conv stays a valid G-group
conv. Oracle: the shrunk model's output equals the dense model's with the removed channels
zeroed (by a forward hook on the activation, independent of the plan's mask mode)."""

from __future__ import annotations

import copy

import pytest
import torch
from structured_helpers import X, check_mask_equals_shrink, half_plan, randomize_bn
from torch import nn

from netslim.core.graph import GraphBuilder, Segment, trace_graph
from netslim.models import build_model
from netslim.models.registry import ModelEntry, register_model
from netslim.prune.structured import apply_plan, plan_from_keep, shrink_channels, total_macs


class ResNeXtNet(nn.Module):
    """Stem -> a ResNeXt bottleneck (1x1 -> 3x3 with ``groups`` -> 1x1, identity shortcut) -> a
    second grouped conv with other ``groups2`` -> pooled Linear."""

    def __init__(self, groups: int = 4, groups2: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.conv4 = nn.Conv2d(16, 8, 3, padding=1, groups=groups2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        x = torch.relu(x + self.bn3(self.conv3(y)))
        return self.fc(torch.relu(self.conv4(x)).mean((2, 3)))


def _group(graph, name):
    return next(g for g in graph.groups if g.name == name)


def _zeroed(model, module: str, keep: list[int]):
    """The dense model with every channel of ``module``'s output outside ``keep`` set to zero."""
    dense = copy.deepcopy(model)

    def hook(_, __, y):
        drop = torch.ones(y.shape[1], dtype=torch.bool)
        drop[keep] = False
        return y.masked_fill(drop.view(1, -1, 1, 1), 0.0)

    dense.get_submodule(module).register_forward_hook(hook)
    return dense


@pytest.mark.parametrize("which, zero_at", [("conv2", "bn2"), ("conv1", "bn1")])
def test_pruned_grouped_conv_equals_dense_with_channels_zeroed(which, zero_at):
    """``conv2`` (groups=4): its own output channels; ``conv1``: the channels it reads."""
    torch.manual_seed(0)
    model = randomize_bn(ResNeXtNet())
    graph = trace_graph(model, X)
    g = _group(graph, which)
    assert g.prunable and g.size == 4  # 16 channels = 4 positions x 4 groups
    plan = plan_from_keep(graph, {g.id: torch.tensor([1, 2])})
    kept = next(e["keep"] for e in plan.entries if e["module"] == which and e["param"] == "weight" and e["dim"] == 0)
    assert kept == [1, 2, 5, 6, 9, 10, 13, 14]  # positions 1 and 2 of each group of 4
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    assert shrunk.conv2.groups == 4 and shrunk.conv2.weight.shape[:2] == ((8, 4) if which == "conv2" else (16, 2))
    with torch.no_grad():
        torch.testing.assert_close(shrunk(X), _zeroed(model, zero_at, kept)(X), atol=1e-5, rtol=1e-5)


def test_resnext_block_and_groups_of_different_counts(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_model("test-resnext", groups=4, groups2=2))
    graph = trace_graph(model, X)
    assert not graph.skipped
    sizes = {g.name: g.size for g in graph.prunable()}
    # residual stream (stem + conv3) read by conv4 (groups=2): 8 positions x 2; conv4's own
    # 8 channels in 2 groups: 4 positions
    assert sizes == {"stem.0": 8, "conv1": 4, "conv2": 4, "conv4": 4}
    shrunk = check_mask_equals_shrink(model, half_plan(graph), X, tmp_path)
    assert (shrunk.conv2.in_channels, shrunk.conv2.out_channels, shrunk.conv2.groups) == (8, 8, 4)
    assert (shrunk.conv4.in_channels, shrunk.conv4.out_channels, shrunk.conv4.groups) == (8, 4, 2)


class Chain(nn.Module):
    """groups=2 feeding groups=4: the middle channels must be tiled by lcm(2, 4) = 4."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.g2 = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.g4 = nn.Conv2d(16, 8, 3, padding=1, groups=4)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.g2(torch.relu(self.c1(x))))
        return self.fc(torch.relu(self.g4(x)).amax((2, 3)))


def test_grouped_conv_feeding_another_with_more_groups(tmp_path):
    torch.manual_seed(0)
    model = build_model("test-grouped-chain").eval()
    graph = trace_graph(model, X)
    sizes = {g.name: g.size for g in graph.prunable()}
    assert sizes == {"c1": 8, "g2": 4, "g4": 2}
    plan = plan_from_keep(graph, {_group(graph, "g2").id: torch.tensor([0, 3])})
    keep = {(e["module"], e["dim"]): e["keep"] for e in plan.entries if e["param"] == "weight"}
    assert keep[("g2", 0)] == [0, 3, 4, 7, 8, 11, 12, 15]
    assert keep[("g4", 1)] == [0, 3]  # g4 reads 4 channels per group: positions 0 and 3 of each
    shrunk = check_mask_equals_shrink(model, plan, X, tmp_path)
    assert (shrunk.g2.out_channels, shrunk.g4.in_channels, shrunk.g4.groups) == (8, 8, 4)
    check_mask_equals_shrink(model, half_plan(graph, seed=3), X, tmp_path)


class CatIntoGrouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.relu(self.g(y)).mean((2, 3)))


def test_grouped_conv_reading_a_concatenation_keeps_its_inputs(tmp_path):
    model = build_model("test-cat-grouped").eval()
    graph = trace_graph(model, X)
    assert graph.skipped == [
        {"name": "g", "reason": "grouped conv (groups=2) reads a concatenation: its input channels are kept"}
    ]
    assert _group(graph, "a").locked and _group(graph, "b").locked
    assert [g.name for g in graph.prunable()] == ["g"]
    shrunk = check_mask_equals_shrink(model, half_plan(graph), X, tmp_path)
    assert (shrunk.g.in_channels, shrunk.g.out_channels, shrunk.g.groups) == (8, 4, 2)


# registered as zoo models (as a user would) so that save/load can rebuild their base
register_model(ModelEntry("test-resnext", ResNeXtNet, "classification", "fashion-mnist", "test"))
register_model(ModelEntry("test-grouped-chain", Chain, "classification", "fashion-mnist", "test"))
register_model(ModelEntry("test-cat-grouped", CatIntoGrouped, "classification", "fashion-mnist", "test"))


def test_uneven_tiling_locks_the_group():
    b = GraphBuilder()
    s = b.space(6, "m")
    b.tile(s, 4)
    b.add("m", "weight", 0, (Segment(s, 6),))
    (g,) = b.build().groups
    assert not g.prunable and "unevenly" in g.locked


@pytest.mark.parametrize("criterion", ["l1", "bn_scale", "taylor", "activation", "random"])
def test_prune_channels_on_grouped_convs_meets_the_mac_target(criterion):
    torch.manual_seed(0)
    model = randomize_bn(ResNeXtNet())
    batches = [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))) for _ in range(2)]
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    base = total_macs(model, X[:1])
    shrunk, report = shrink_channels(
        copy.deepcopy(model), X[:1], target_macs=0.5, criterion=criterion, batches=batches, loss_fn=loss
    )
    assert total_macs(shrunk, X[:1]) <= 0.5 * base and not report["skipped"]
    assert shrunk.conv2.groups == 4 and shrunk.conv2.out_channels % 4 == 0
    with torch.no_grad():
        assert shrunk(X).shape == model(X).shape
