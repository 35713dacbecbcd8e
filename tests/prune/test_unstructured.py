"""Magnitude / random pruning: exact counts, clamps, masks that survive training, bad input."""

import math

import pytest
import torch
import yaml
from torch import nn

from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.masks import get_mask, make_permanent
from netslim.prune import (
    MagnitudePruneConfig,
    apply_masks,
    magnitude_prune,
    masks_from_scores,
    prunable_layers,
    sparsity_report,
)


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10)
    )


@pytest.fixture
def mlp():
    return small_mlp()


@pytest.fixture
def cnn():
    return small_cnn()


N_MLP = 64 * 48 + 48 * 32 + 32 * 10


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.95, 0.999])
def test_layer_scope_prunes_exactly_round_s_n_per_layer(cnn, sparsity):
    magnitude_prune(cnn, sparsity=sparsity, scope="layer")
    for name, m in prunable_layers(cnn):
        assert int((m.weight == 0).sum()) == round(sparsity * m.weight.numel()), name


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.95])
def test_global_scope_prunes_exactly_and_keeps_the_largest(mlp, sparsity):
    before = {n: m.weight.detach().abs().clone() for n, m in prunable_layers(mlp)}
    magnitude_prune(mlp, sparsity=sparsity)
    total = sum(w.numel() for w in before.values())
    rep = sparsity_report(mlp)["global"]
    assert rep["zeros"] == round(sparsity * total) and rep["params"] == total
    # Oracle: every pruned |w| <= every kept |w|, across all layers.
    pruned = torch.cat([before[n][m.weight == 0] for n, m in prunable_layers(mlp)])
    kept = torch.cat([before[n][m.weight != 0] for n, m in prunable_layers(mlp)])
    assert pruned.max() <= kept.min()


def test_global_bounds_are_honoured(mlp):
    magnitude_prune(mlp, sparsity=0.9, min_sparsity=0.5, max_sparsity=0.93)
    for name, layer in sparsity_report(mlp)["layers"].items():
        n = layer["params"]
        assert math.ceil(0.5 * n) <= layer["zeros"] <= math.floor(0.93 * n), name
    assert sparsity_report(mlp)["global"]["zeros"] == round(0.9 * N_MLP)


def test_masks_from_scores_ties_and_exact_counts():
    scores = {"a": torch.zeros(10), "b": torch.ones(7)}  # all tied inside each layer
    masks = masks_from_scores(scores, 0.5, scope="global")
    assert int((~masks["a"]).sum()) + int((~masks["b"]).sum()) == round(0.5 * 17)
    assert masks["b"].all()  # the lower scores go first


def test_unreachable_global_target_says_why():
    with pytest.raises(NetslimError, match="cannot be reached within the per-layer bounds"):
        masks_from_scores({"a": torch.rand(10), "b": torch.rand(10)}, 0.9, max_sparsity=0.5)


def test_threshold_prunes_exactly_below_t(mlp):
    before = {n: m.weight.detach().abs().clone() for n, m in prunable_layers(mlp)}
    magnitude_prune(mlp, threshold=0.02)
    for name, m in prunable_layers(mlp):
        assert torch.equal(m.weight == 0, before[name] < 0.02), name


def test_exclude_and_include_selectors(tiny_cnn):
    magnitude_prune(tiny_cnn, sparsity=0.8, scope="layer", exclude=["fc2", "type:Conv2d"])
    assert get_mask(tiny_cnn.fc2) is None and get_mask(tiny_cnn.conv1) is None
    assert get_mask(tiny_cnn.fc1) is not None


def test_random_criterion_is_seeded_and_exact(mlp):
    a = magnitude_prune(mlp, sparsity=0.7, criterion="random", seed=3)
    first = {n: get_mask(m).clone() for n, m in prunable_layers(a)}
    b = magnitude_prune(small_mlp(), sparsity=0.7, criterion="random", seed=3)
    assert all(torch.equal(first[n], get_mask(m)) for n, m in prunable_layers(b))
    assert sparsity_report(b)["global"]["zeros"] == round(0.7 * N_MLP)


def test_pruning_again_never_revives_pruned_weights(mlp):
    magnitude_prune(mlp, sparsity=0.5)
    first = {n: get_mask(m).clone() for n, m in prunable_layers(mlp)}
    magnitude_prune(mlp, sparsity=0.8, criterion="random", seed=1)
    for n, m in prunable_layers(mlp):
        assert not (get_mask(m) & ~first[n]).any(), n


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_zeros_stay_zero_through_optimizer_steps(mlp, opt):
    magnitude_prune(mlp, sparsity=0.9)
    zeros = {n: m.weight == 0 for n, m in prunable_layers(mlp)}
    if opt == "sgd":  # momentum and weight decay: the two ways a masked entry could come back
        optim = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    else:
        optim = torch.optim.AdamW(mlp.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(5):
        loss = mlp(torch.randn(16, 1, 8, 8)).square().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    for n, m in prunable_layers(mlp):
        assert (m.weight[zeros[n]] == 0).all(), n
    make_permanent(mlp)
    for n, m in prunable_layers(mlp):
        assert (m.weight[zeros[n]] == 0).all(), n


def test_apply_masks_rolls_back_on_a_bad_mask(mlp):
    magnitude_prune(mlp, sparsity=0.5)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    good = torch.zeros_like(mlp[1].weight, dtype=torch.bool)
    with pytest.raises(NetslimError, match="shape"):
        apply_masks(mlp, {"1": good, "3": torch.ones(3, 3, dtype=torch.bool)})
    after = mlp.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_apply_masks_restores_state_when_set_mask_fails_midway(mlp, monkeypatch):
    import netslim.prune.criteria as crit

    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    real, calls = crit.set_mask, []

    def flaky(module, mask):
        calls.append(module)
        if len(calls) == 2:
            raise RuntimeError("boom")
        real(module, mask)

    monkeypatch.setattr(crit, "set_mask", flaky)
    masks = {n: torch.rand_like(m.weight) > 0.5 for n, m in prunable_layers(mlp)}
    with pytest.raises(RuntimeError, match="boom"):
        apply_masks(mlp, masks)
    assert get_mask(mlp[1]) is None
    assert set(mlp.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity": 0.5, "min_sparsity": 1.0}, "min_sparsity"),
        ({"sparsity": 0.5, "max_sparsity": 1.2}, "max_sparsity"),
        ({"sparsity": 0.5, "scope": "row"}, "scope"),
        ({}, "threshold"),
        ({"sparsity": 0.5, "threshold": 0.1}, "threshold"),
    ],
)
def test_bad_parameters_name_the_field(bad, field, mlp):
    with pytest.raises(NetslimError, match=field):
        make_config({"method": "magnitude", **bad}, "step 1")
    with pytest.raises(NetslimError, match=field):
        magnitude_prune(mlp, **bad)


def test_selector_matching_nothing_and_model_without_layers(mlp):
    with pytest.raises(NetslimError, match="'nope'"):
        magnitude_prune(mlp, sparsity=0.5, include="nope")
    with pytest.raises(NetslimError, match="leave no prunable layer"):
        magnitude_prune(mlp, sparsity=0.5, exclude="type:Linear")
    with pytest.raises(NetslimError, match="no prunable layers"):
        magnitude_prune(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), sparsity=0.5)


def test_recipe_step_reports_sparsity(tiny_cnn, fmnist_small, tmp_path):
    cfg = make_config(yaml.safe_load("method: magnitude\nsparsity: 0.9\nscope: layer\nexclude: [conv1]"))
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    out = apply(tiny_cnn, cfg, ctx)
    assert out(fmnist_small.example_inputs(2)).shape == (2, 10)
    assert ctx.notes["magnitude"]["layers"]["fc1"]["sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert ctx.notes["magnitude"]["layers"]["conv1"]["zeros"] == 0


def test_config_round_trips_through_yaml():
    cfg = MagnitudePruneConfig(sparsity=0.9, scope="layer", exclude=("fc3", "type:Conv2d"), max_sparsity=0.99)
    again = make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


MY_METHODS = ["magnitude", "nm", "imp", "gradual", "lottery", "sparsify"]


@pytest.mark.parametrize("method", MY_METHODS)
def test_contract_yaml_round_trip_and_output_shape(method, fmnist_small, tmp_path):
    from netslim.core.config import methods

    cfg = methods()[method].config_cls.example()
    assert make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    for build in (
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)),
        lambda: nn.Sequential(nn.Conv2d(1, 4, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)),
    ):
        torch.manual_seed(0)
        out = apply(build(), cfg, StepContext(task=fmnist_small, out_dir=tmp_path))
        assert out(fmnist_small.example_inputs(3)).shape == (3, 10)
