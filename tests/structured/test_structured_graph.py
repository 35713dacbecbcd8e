"""Dependency graph + prune plans on CNNs: masked model == physically shrunk model."""

from __future__ import annotations

import copy

import pytest
import torch
from structured_helpers import X, half_plan, n_params, randomize_bn
from torch import nn

import netslim
from netslim.core.graph import trace_graph
from netslim.models import build_model
from netslim.prune.structured import PrunePlan, apply_plan, plan_from_keep, replay


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet20", "mobilenetv2", "vgg11bn"])
def test_zoo_masked_equals_shrunk_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_model(name))
    graph = trace_graph(model, X)
    assert graph.prunable() and not graph.skipped
    plan = half_plan(graph)
    masked = apply_plan(copy.deepcopy(model), plan, "mask")
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    with torch.no_grad():
        y_mask, y_shrunk = masked(X), shrunk(X)
    assert y_shrunk.shape == model(X).shape
    torch.testing.assert_close(y_shrunk, y_mask, atol=1e-5, rtol=1e-5)
    assert n_params(shrunk) < 0.6 * n_params(model)
    path = netslim.save(shrunk, tmp_path / "m.safetensors", info={"prune_plans": [plan.to_dict()]})
    back = netslim.load(path)
    with torch.no_grad():
        assert torch.equal(back(X), y_shrunk)
    # the stored plan replays on a fresh copy of the original
    desc = netslim.core.serialize.read_description(path)
    again = replay(copy.deepcopy(model), desc["info"]["prune_plans"])
    with torch.no_grad():
        assert torch.equal(again(X), y_shrunk)


def test_residual_members_share_one_group():
    model = build_model("resnet20")
    graph = trace_graph(model, X)
    stem = next(g for g in graph.groups if g.name == "conv1")
    members = {(s.module, s.param, s.dim) for s, _ in stem.slots}
    # stem conv, its BN, and every stage-1 block's conv2/bn2 output all carry the same channels
    for m in ("conv1", "bn1", "layer1.0.bn2", "layer1.1.conv2", "layer1.2.bn2"):
        assert any(mod == m and d == 0 for mod, _, d in members), m
    # ... and the consumers see them as input channels, stage 2's shortcut included
    assert ("layer2.0.shortcut.0", "weight", 1) in members and ("layer1.0.conv1", "weight", 1) in members
    plan = plan_from_keep(graph, {stem.id: torch.tensor([0, 3, 5])})
    keeps = {(e["module"], e["param"], e["dim"]): e["keep"] for e in plan.entries}
    assert keeps[("bn1", "weight", 0)] == keeps[("layer1.2.bn2", "weight", 0)] == [0, 3, 5]


def test_depthwise_conv_follows_its_input_channels():
    model = randomize_bn(build_model("mobilenetv2"))
    graph = trace_graph(model, X)
    g = next(g for g in graph.groups if g.name == "blocks.1.conv.0")  # expand 1x1 -> depthwise -> project
    mods = {s.module for s, _ in g.slots}
    assert {"blocks.1.conv.0", "blocks.1.conv.3", "blocks.1.conv.6"} <= mods
    plan = plan_from_keep(graph, {g.id: torch.arange(0, g.size, 3)})
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    dw = shrunk.blocks[1].conv[3]
    assert dw.groups == dw.in_channels == dw.out_channels == len(range(0, g.size, 3))


def test_flatten_to_linear_maps_each_channel_to_its_positions():
    model = build_model("lenet5").eval()
    graph = trace_graph(model, X)
    g = next(g for g in graph.groups if g.name == "conv2")
    plan = plan_from_keep(graph, {g.id: torch.tensor([1, 7])})
    fc1 = next(e for e in plan.entries if e["module"] == "fc1")
    assert fc1["keep"] == list(range(16, 32)) + list(range(7 * 16, 8 * 16))  # 4x4 map per channel
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    assert shrunk.fc1.in_features == 32


class DenseBlock(nn.Module):
    """DenseNet-style: each layer sees the concatenation of all earlier feature maps."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(10, 5, 3, padding=1)
        self.head = nn.Conv2d(15, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x0 = torch.relu(self.stem(x))
        x1 = torch.cat([x0, torch.relu(self.bn_a(self.a(x0)))], 1)
        x2 = torch.cat([x1, torch.relu(self.b(x1))], dim=1)
        return self.fc(self.head(x2).mean((2, 3)))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped, not depthwise
        self.c2 = nn.Conv2d(8, 12, 1)
        self.c3 = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6 * 28 * 28, 2)

    def forward(self, x):
        x = self.c3(torch.relu(self.c2(self.g(torch.relu(self.c1(x))))))
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("cls", [DenseBlock, GroupedNet])
def test_concat_and_grouped_conv(cls):
    torch.manual_seed(0)
    model = randomize_bn(cls())
    graph = trace_graph(model, X)
    plan = half_plan(graph)
    assert not plan.empty
    masked = apply_plan(copy.deepcopy(model), plan, "mask")
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    with torch.no_grad():
        torch.testing.assert_close(shrunk(X), masked(X), atol=1e-5, rtol=1e-5)
    assert n_params(shrunk) < n_params(model)
    if cls is GroupedNet:
        # the grouped conv's channels are pruned alike in both of its groups, through the
        # flatten into the Linear as well (each channel = a 28x28 block of features)
        assert not graph.skipped and shrunk.g.groups == 2 and shrunk.g.out_channels == 4
        assert shrunk.c1.out_channels == 4 and shrunk.fc.in_features == 3 * 28 * 28
    else:
        assert shrunk.head.in_channels < 15


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.c(x)
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            y = y * 2
        return self.fc(y.mean((2, 3)))


class Gate(nn.Module):
    def forward(self, y):
        return y * 2 if y.sum() > 0 else y  # data-dependent control flow


class UntraceableInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.gate, self.c2, self.fc = nn.Conv2d(1, 4, 3), Gate(), nn.Conv2d(4, 6, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.c2(self.gate(self.c(x))).mean((2, 3)))


def test_untraceable_model_says_which_module_stopped_the_trace():
    with pytest.raises(netslim.NetslimError, match="its own forward stopped the trace"):
        trace_graph(Untraceable(), X)
    with pytest.raises(netslim.NetslimError, match=r"module 'gate' \(Gate\) stopped the trace.*exclude: \['gate'\]"):
        trace_graph(UntraceableInside(), X)
    # excluded, it is one opaque layer: the channels around it are kept, the rest prunes
    graph = trace_graph(UntraceableInside(), X, leaves=("gate",))
    assert [g.name for g in graph.prunable()] == ["c2"]
    assert any(s["name"] == "gate" for s in graph.skipped)


def test_plan_is_plain_json_and_rejects_a_foreign_model():
    model = build_model("resnet20")
    plan = half_plan(trace_graph(model, X))
    import json

    again = PrunePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.entries == plan.entries
    with pytest.raises(netslim.NetslimError, match="does not fit|no parameter"):
        apply_plan(build_model("lenet5"), again, "shrink")
