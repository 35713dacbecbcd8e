"""SET / RigL: ERK densities, constant sparsity across updates, zero-initialised growth."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import netslim
from netslim.core.config import make_config
from netslim.core.errors import NetslimError
from netslim.core.masks import get_mask, set_mask
from netslim.prune.sparse_training import (
    DenseGradTap,
    DynamicSparsity,
    RigLConfig,
    SETConfig,
    dynamic_sparse_train,
    erk_densities,
    initial_masks,
    original,
    rigl_train,
    set_train,
)
from netslim.train.loop import Callback

LENET300 = {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)}


def small_train(steps=12):
    return {"finetune": {"epochs": 1, "max_steps": steps, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4}}


# ---------------------------------------------------------------------- ERK
def test_erk_matches_hand_computed_lenet300():
    # fc3's raw density (110/1000) is the largest: eps*raw > 1, so it goes dense. Then
    # eps = (kept budget of fc1+fc2 minus fc3's zeros) / (sum raw_l * n_l over fc1, fc2).
    s, n = 0.9, {k: math.prod(v) for k, v in LENET300.items()}
    eps = ((n["fc1"] + n["fc2"]) * (1 - s) - n["fc3"] * s) / (1084 + 400)
    got = erk_densities(LENET300, s)
    assert got["fc3"] == 1.0
    assert got["fc1"] == pytest.approx(eps * 1084 / 235200, rel=1e-12)
    assert got["fc2"] == pytest.approx(eps * 400 / 30000, rel=1e-12)


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95, 0.99])
def test_erk_properties_on_resnet_like_shapes(sparsity):
    shapes = {
        "conv1": (16, 1, 3, 3),
        "a": (16, 16, 3, 3),
        "b": (32, 16, 3, 3),
        "c": (64, 64, 3, 3),
        "down": (64, 32, 1, 1),
        "fc": (10, 64),
    }
    d = erk_densities(shapes, sparsity)
    n = {k: math.prod(v) for k, v in shapes.items()}
    # total kept is exactly the budget, every density in (0, 1]
    assert sum(d[k] * n[k] for k in shapes) == pytest.approx((1 - sparsity) * sum(n.values()), rel=1e-9)
    assert all(0 < v <= 1 for v in d.values())
    # sparse layers share one eps: density / (sum(shape)/prod(shape)) is constant
    ratios = {k: d[k] / (sum(shapes[k]) / n[k]) for k in shapes if d[k] < 1}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-12)
    # and a dense layer is one whose raw density is at least that of every sparse one
    for k in shapes:
        if d[k] == 1.0 and ratios:
            assert sum(shapes[k]) / n[k] >= max(sum(shapes[j]) / n[j] for j in ratios)


def test_initial_masks_have_exact_counts_uniform_and_erk(tiny_mlp):
    layers = [(n, getattr(tiny_mlp, n)) for n in LENET300]
    for dist in ("uniform", "erk"):
        cfg = RigLConfig(sparsity=0.9, distribution=dist)
        dens = erk_densities(LENET300, 0.9) if dist == "erk" else {k: 0.1 for k in LENET300}
        masks = initial_masks(layers, cfg)
        for name, m in masks.items():
            assert int(m.sum()) == round(dens[name] * m.numel())


# ------------------------------------------------------------ update mechanics
def test_dense_grad_tap_gives_the_gradient_of_the_masked_weight():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5)
    mask = torch.rand(5, 7) > 0.6
    set_mask(lin, mask)
    x = torch.randn(4, 7)
    tap = DenseGradTap([("lin", lin)])
    tap.start()
    lin(x).pow(2).sum().backward()
    tap.stop()
    # oracle: the same loss as a function of W' = W * mask, differentiated directly
    w_eff = (original(lin).detach() * mask).requires_grad_()
    F.linear(x, w_eff, lin.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(tap.grads["lin"], w_eff.grad)
    assert (tap.grads["lin"][~mask] != 0).any()  # dense: masked entries have a gradient too


class _FakeTap:
    def __init__(self, grads):
        self.grads = grads


def test_rigl_update_drops_smallest_and_grows_largest_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(10, 6, bias=False)
    mask = torch.rand(6, 10) > 0.5
    set_mask(lin, mask)
    grad = torch.randn(6, 10)
    cb = DynamicSparsity([("lin", lin)], RigLConfig(sparsity=0.5))
    cb.tap = _FakeTap({"lin": grad})
    w = original(lin).detach().clone()
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    active = int(mask.sum())
    n = int(0.3 * active)
    cb.update_layer("lin", lin, 0.3, opt)
    new = get_mask(lin)
    assert int(new.sum()) == active
    # oracle: keep the (active - n) largest |w| among active, then the n largest |grad| elsewhere
    order = torch.argsort(torch.where(mask, w.abs(), torch.tensor(-1.0)).flatten(), descending=True)
    keep = torch.zeros(60, dtype=torch.bool)
    keep[order[: active - n]] = True
    grow_order = torch.argsort(torch.where(keep, torch.tensor(-1.0), grad.abs().flatten()), descending=True)
    expected = keep.clone()
    expected[grow_order[:n]] = True
    assert torch.equal(new.flatten(), expected)
    born = new & ~mask
    assert born.any() and torch.all(original(lin)[born] == 0)
    assert torch.all(original(lin)[~new] == 0)


class Spy(Callback):
    """Records per-layer mask counts and checks grown weights at every update."""

    def __init__(self, layers, dyn):
        self.layers, self.dyn = layers, dyn
        self.counts, self.born_total, self.before = [], 0, {}

    def on_step_begin(self, state):
        self.before = {n: get_mask(m).clone() for n, m in self.layers}

    def on_after_backward(self, state):  # runs after DynamicSparsity's (listed first)
        if self.dyn.is_update(state.step):
            self.counts.append({n: int(get_mask(m).sum()) for n, m in self.layers})
            self.born = {n: get_mask(m) & ~self.before[n] for n, m in self.layers}
            for n, m in self.layers:
                assert torch.all(original(m)[self.born[n]] == 0), "grown weights must start at zero"
                self.born_total += int(self.born[n].sum())

    def on_step_end(self, state):  # state.step was already advanced
        if self.dyn.is_update(state.step - 1):
            for n, m in self.layers:  # the optimizer step (momentum, weight decay) kept them at zero
                assert torch.all(original(m)[self.born[n]] == 0)
        for _n, m in self.layers:  # masked entries are zero in the stored weights, always
            assert torch.all(original(m)[~get_mask(m)] == 0)


@pytest.mark.parametrize("cls", [RigLConfig, SETConfig])
def test_sparsity_is_constant_per_layer_across_updates(cls, tiny_mlp, fmnist_small, monkeypatch):
    cfg = cls(sparsity=0.9, frequency=2, alpha=0.3, **small_train(12))
    spies = []

    # Put a Spy after the method's own callback in the training loop.
    import netslim.prune.sparse_training as dyn

    real_fit = dyn.fit

    def fit_with_spy(model, task, tcfg, callbacks):
        layers = callbacks[0].layers
        spies.append(Spy(layers, callbacks[0]))
        return real_fit(model, task, tcfg, [callbacks[0], spies[0]])

    monkeypatch.setattr(dyn, "fit", fit_with_spy)
    summary = dynamic_sparse_train(tiny_mlp, fmnist_small, cfg=cfg)
    spy = spies[0]
    expected = {n: round(d * math.prod(LENET300[n])) for n, d in erk_densities(LENET300, 0.9).items()}
    assert len(spy.counts) == len(summary["mask_updates"]) == 4  # steps 2, 4, 6, 8 (< 0.75 * 12)
    assert all(c == expected for c in spy.counts)
    assert spy.born_total > 0  # connections really moved
    assert {n: int(get_mask(getattr(tiny_mlp, n)).sum()) for n in LENET300} == expected


def test_update_fraction_decays_by_cosine():
    cb = DynamicSparsity([], RigLConfig(alpha=0.4, frequency=10))
    cb.end_step = 100
    assert cb.fraction(0) == pytest.approx(0.4)
    assert cb.fraction(50) == pytest.approx(0.2)
    assert cb.fraction(100) == pytest.approx(0.0, abs=1e-12)
    assert [s for s in range(0, 120) if cb.is_update(s)] == list(range(10, 100, 10))


def test_rigl_trains_and_round_trips_through_save_load(tiny_mlp, fmnist_small, tmp_path):
    rigl_train(tiny_mlp, fmnist_small, sparsity=0.8, frequency=3, **small_train(10))
    x = fmnist_small.example_inputs(8)
    path = netslim.save(tiny_mlp, tmp_path / "rigl.safetensors")
    again = netslim.load(path)
    torch.testing.assert_close(again(x), tiny_mlp.eval()(x), rtol=0, atol=0)
    assert torch.equal(get_mask(again.fc1), get_mask(tiny_mlp.fc1))


def test_from_scratch_reinitialises_and_dense_start_keeps_largest(tiny_mlp, fmnist_small):
    w0 = tiny_mlp.fc1.weight.detach().clone()
    cfg = SETConfig(sparsity=0.5, from_scratch=False, end_step=1, **small_train(1))
    set_train(tiny_mlp, fmnist_small, **cfg.model_dump())
    mask = get_mask(tiny_mlp.fc1)
    kept = w0.abs()[mask]
    assert kept.min() >= w0.abs()[~mask].max()  # magnitude start, per layer


# ------------------------------------------------------------ configs, errors
@pytest.mark.parametrize("cls", [RigLConfig, SETConfig])
def test_config_yaml_round_trip(cls):
    cfg = cls(
        sparsity=0.95,
        distribution="uniform",
        exclude=("fc3",),
        frequency=50,
        alpha=0.5,
        decay="constant",
        end_step=400,
        from_scratch=False,
        finetune={"epochs": 3, "lr": 0.02, "amp": "bf16"},
    )
    again = make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and type(again) is cls and again.finetune.epochs == 3


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("sparsity", 1.0, "[0, 1)"),
        ("sparsity", -0.1, "[0, 1)"),
        ("alpha", 0.0, "greater than 0"),
        ("frequency", 0, "greater than or equal to 1"),
        ("distribution", "er", "'erk' or 'uniform'"),
        ("end_step", 0, "greater than or equal to 1"),
        ("finetune.epochs", 0, "must be >= 1"),
    ],
)
def test_bad_config_values_name_the_field(field, value, needle):
    data = {"finetune": {field.split(".")[1]: value}} if field.startswith("finetune.") else {field: value}
    with pytest.raises(NetslimError) as e:
        make_config({"method": "rigl", **data}, "recipe step 1")
    assert repr(field) in str(e.value) and needle in str(e.value) and repr(value) in str(e.value)


def test_function_api_errors(tiny_mlp, fmnist_small):
    with pytest.raises(NetslimError, match="'sparsity'.*got 1.5"):
        rigl_train(tiny_mlp, fmnist_small, sparsity=1.5)
    with pytest.raises(NetslimError, match="'nope'"):
        rigl_train(tiny_mlp, fmnist_small, include="nope", **small_train(1))
    with pytest.raises(NetslimError, match="no prunable layers"):
        set_train(nn.Sequential(nn.Flatten(), nn.ReLU()), fmnist_small, **small_train(1))
    with pytest.raises(NetslimError, match="'end_step'.*<= the number of training steps.*got 50"):
        rigl_train(tiny_mlp, fmnist_small, end_step=50, **small_train(10))
    with pytest.raises(NetslimError, match=r"sparsity.*\[0, 1\)"):
        erk_densities(LENET300, 1.0)
