"""Importance criteria, selection rules, MAC targets and the recipe steps."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.graph import trace_graph
from netslim.models import build_model
from netslim.prune.structured import (
    ChannelsConfig,
    choose_keep,
    group_scores,
    plan_channels,
    replay,
    shrink_channels,
    total_macs,
)

X = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_l1_score_is_the_sum_of_row_and_column_norms():
    model = build_model("lenet300")
    graph = trace_graph(model, X)
    g = next(g for g in graph.groups if g.name == "fc1")
    s = group_scores(model, graph, "l1")[g.id]
    oracle = model.fc1.weight.abs().sum(1) + model.fc2.weight.abs().sum(0)
    torch.testing.assert_close(s, oracle.detach())


def test_bn_scale_prunes_the_channels_with_small_gamma_first():
    model = build_model("vgg11bn").eval()
    with torch.no_grad():
        model.features[1].weight.copy_(torch.linspace(1, 2, 32))
        model.features[1].weight[[3, 9]] = 0.0
    graph = trace_graph(model, X)
    g = next(g for g in graph.groups if g.name == "features.0")
    keep = choose_keep(model, graph, group_scores(model, graph, "bn_scale"), 2 / 32, scope="uniform")
    assert set(range(32)) - set(keep[g.id].tolist()) == {3, 9}


def test_l2_bn_adds_the_squared_bn_scales_to_the_weight_norms():
    # oracle: conv0 rows, BN gamma^2, conv1 columns (the next conv reads the group's channels)
    model = build_model("vgg11bn").eval()
    graph = trace_graph(model, X)
    g = next(g for g in graph.groups if g.name == "features.0")
    conv0, bn, conv1 = model.features[0], model.features[1], model.features[4]
    weights = conv0.weight.flatten(1).pow(2).sum(1) + conv1.weight.transpose(0, 1).flatten(1).pow(2).sum(1)
    l2, l2_bn = (group_scores(model, graph, c)[g.id] for c in ("l2", "l2_bn"))
    torch.testing.assert_close(l2_bn - l2, bn.weight.detach().pow(2))
    torch.testing.assert_close(l2, weights.detach(), rtol=1e-5, atol=1e-6)


def test_taylor_scores_zero_for_dead_units():
    model = build_model("lenet300")
    with torch.no_grad():
        model.fc1.weight[5].zero_()
        model.fc1.bias[5] = 0.0
        model.fc2.weight[:, 5] = 0.0
    graph = trace_graph(model, X)
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(2)]
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    g = next(g for g in graph.groups if g.name == "fc1")
    s = group_scores(model, graph, "taylor", batches=batches, loss_fn=loss)[g.id]
    assert s[5] == 0 and (s >= 0).all() and s.sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_min_keep_round_to_and_on_empty():
    model = build_model("resnet20")
    graph = trace_graph(model, X)
    scores = group_scores(model, graph, "l2")
    keep = choose_keep(model, graph, scores, 0.9, scope="global", min_keep_ratio=0.25)
    for g in graph.prunable():
        assert len(keep.get(g.id, range(g.size))) >= g.size // 4
    keep = choose_keep(model, graph, scores, 0.4, scope="uniform", round_to=8)
    assert all(len(k) % 8 == 0 for k in keep.values())
    with pytest.raises(netslim.NetslimError, match="every unit"):
        choose_keep(model, graph, scores, 0.0, ratios={"layer3.*": 1.0}, on_empty="fail")
    keep = choose_keep(model, graph, scores, 0.0, ratios={"layer3.*": 1.0}, min_keep_ratio=0.1)
    assert keep and all(len(k) == 7 for k in keep.values())  # ceil(0.1 * 64): clamped, not emptied


def test_target_macs_is_met_closely():
    model = build_model("mobilenetv2").eval()
    base = total_macs(model, X[:1])
    shrunk, report = shrink_channels(copy.deepcopy(model), X[:1], target_macs=0.5)
    after = total_macs(shrunk, X[:1])
    assert 0.45 * base <= after <= 0.5 * base
    # the bisection's analytic estimate is exact for the pruned layers
    from netslim.measure import macs_per_layer
    from netslim.prune.structured import PrunePlan
    from netslim.prune.structured.channels import estimate_macs

    estimate = estimate_macs(model, macs_per_layer(model, X[:1]), PrunePlan.from_dict(report["plan"]))
    assert estimate == pytest.approx(after, rel=1e-9)
    assert report["params_after"] < report["params_before"]


def test_bad_arguments_are_named():
    model = build_model("lenet300")
    with pytest.raises(netslim.NetslimError, match="ratio"):
        plan_channels(model, X, ratio=1.5)
    with pytest.raises(netslim.NetslimError, match="criterion"):
        group_scores(model, trace_graph(model, X), "l3")
    with pytest.raises(netslim.NetslimError, match="exactly one"):
        make_config({"method": "channels", "ratio": 0.2, "target_macs": 0.5})


def test_channels_step_iterates_finetunes_and_stores_a_replayable_plan(fmnist_small, tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5")
    original = copy.deepcopy(model)
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    cfg = make_config(
        {
            "method": "channels",
            "ratio": 0.5,
            "criterion": "taylor",
            "iterations": 2,
            "calibration_batches": 2,
            "finetune": {"epochs": 1, "max_steps": 2, "batch_size": 32},
        }
    )
    model = apply(model, cfg, ctx)
    assert isinstance(cfg, ChannelsConfig) and len(ctx.info["prune_plans"]) == 2
    assert [n["iteration"] for n in ctx.notes["channels"]] == [1, 2] and "finetune" in ctx.notes["channels"][0]
    kept = model.conv1.out_channels + model.conv2.out_channels + model.fc1.out_features
    assert 0.45 <= kept / (20 + 50 + 500) <= 0.55  # (1 - 0.5) overall, in two steps
    path = netslim.save(model, tmp_path / "m.safetensors", info=ctx.info)
    plans = netslim.core.serialize.read_description(path)["info"]["prune_plans"]
    replayed = replay(original, plans)
    assert [p.shape for p in replayed.parameters()] == [p.shape for p in model.parameters()]


def test_transformer_steps_skip_cnns(fmnist_small, tmp_path, caplog):
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    model = build_model("lenet300")
    with caplog.at_level(logging.WARNING):
        out = apply(model, make_config({"method": "heads", "ratio": 0.3}), ctx)
    assert out is model and "not a Hugging Face" in ctx.skipped[0]["reason"]


def test_bn_sparsity_penalty_is_l1_of_the_scales():
    from types import SimpleNamespace

    from netslim.prune.structured.importance import BNSparsity

    model = build_model("resnet20")
    gammas = sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    extra = BNSparsity(1e-4).extra_loss(SimpleNamespace(model=model))
    torch.testing.assert_close(extra, 1e-4 * gammas)
    assert BNSparsity(0.0).extra_loss(SimpleNamespace(model=model)) is None


def test_activation_score_is_column_norm_times_input_rms():
    model = build_model("lenet300").eval()
    graph = trace_graph(model, X)
    g = next(g for g in graph.groups if g.name == "fc2")  # fc2 rows, fc3 columns
    batch = (torch.randn(16, 1, 28, 28), torch.zeros(16, dtype=torch.long))  # (inputs, target) pairs work
    s = group_scores(model, graph, "activation", batches=[batch])[g.id]
    with torch.no_grad():
        h = model.relu2(model.fc2(model.relu1(model.fc1(model.flatten(batch[0])))))  # fc3's input (16, 100)
    oracle = model.fc3.weight.norm(dim=0) * h.pow(2).mean(0).sqrt()
    torch.testing.assert_close(s, oracle.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_finetune_with_distillation_uses_the_unpruned_teacher(fmnist_small, tmp_path, distill):
    # oracle: nothing pruned (ratio 0), so the student starts equal to its teacher; with the soft
    # loss alone (weight 1) every gradient is zero and the weights stay put, while plain
    # fine-tuning (weight 0) moves them
    torch.manual_seed(0)
    model = build_model("lenet300")  # no BatchNorm, no dropout: train and eval outputs agree
    before = copy.deepcopy(model)
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    cfg = make_config(
        {
            "method": "channels",
            "ratio": 0.0,
            "distill": distill,
            "finetune": {"epochs": 1, "max_steps": 3, "batch_size": 32, "lr": 0.1, "amp": "none", "weight_decay": 0.0},
        }
    )
    model = apply(model, cfg, ctx)
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(model.parameters(), before.parameters()))
    assert (moved < 1e-6) if distill == 1.0 else (moved > 1e-3)
