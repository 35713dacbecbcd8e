"""Pruning schedules: cubic values, IMP rounds, gradual pruning inside the training loop."""

import pytest
import torch
import yaml
from torch import nn

from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.prune import (
    GradualConfig,
    IMPConfig,
    cubic_sparsity,
    gradual_prune,
    imp_prune,
    imp_sparsities,
    sparsity_report,
)
from netslim.prune.schedules import CubicPruning, gradual_schedule
from netslim.train.loop import FinetuneConfig, TrainState, fit


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


N = 784 * 32 + 32 * 10


def test_cubic_values_at_known_steps():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i=0, s_f=0.8, t0=100, n=10, dt=10
    f = lambda t: cubic_sparsity(t, 0.0, 0.8, 100, 10, 10)  # noqa: E731
    assert f(0) == 0.0 and f(100) == 0.0
    assert f(150) == pytest.approx(0.8 - 0.8 * 0.5**3)  # half way: 0.7
    assert f(125) == pytest.approx(0.8 - 0.8 * 0.75**3)
    assert f(200) == pytest.approx(0.8) and f(10_000) == pytest.approx(0.8)
    assert cubic_sparsity(50, 0.2, 0.9, 0, 5, 20) == pytest.approx(0.9 - 0.7 * 0.5**3)
    values = [f(t) for t in range(100, 201, 10)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone
    gaps = [b - a for a, b in zip(values, values[1:])]
    assert all(b <= a + 1e-12 for a, b in zip(gaps, gaps[1:]))  # prunes fast first, then slows


def test_imp_rounds_are_geometric():
    s = imp_sparsities(0.96, 2)
    assert s == pytest.approx([0.8, 0.96])  # keep 0.2, then 0.04
    s = imp_sparsities(0.875, 3)
    assert s == pytest.approx([0.5, 0.75, 0.875])


def test_gradual_reaches_final_sparsity_exactly_and_checkpoints_only_after(fmnist_small):
    model = mlp()
    ctx = StepContext(task=fmnist_small, out_dir=None)
    cfg = GradualConfig(sparsity=0.9, finetune={"epochs": 1, "lr": 0.05}, frequency=3, start_step=1, end_step=13)
    apply(model, cfg, ctx)
    events = ctx.notes["gradual"]["events"]
    assert [t for t, _ in events] == [1, 4, 7, 10, 13]
    assert events[0][1] == 0.0 and events[-1][1] == pytest.approx(0.9)
    assert sparsity_report(model)["global"]["zeros"] == round(0.9 * N)


def test_gradual_callback_blocks_checkpoints_until_final():
    cfg = GradualConfig(sparsity=0.5, frequency=2, end_step=4)
    model = mlp()
    state = TrainState(model, None, None, total_steps=10)
    cb = CubicPruning(cfg, 0, 2, 2)
    cb.on_train_begin(state)
    seen = []
    for step in range(6):
        state.step = step
        cb.on_step_begin(state)
        seen.append(state.can_checkpoint)
    assert seen == [False, False, False, False, True, True]
    assert sparsity_report(model)["global"]["zeros"] == round(0.5 * N)


def test_imp_applies_rounds_and_ends_at_target(fmnist_small):
    model = mlp()
    imp_prune(model, fmnist_small, sparsity=0.75, rounds=2, finetune={"epochs": 1, "max_steps": 3})
    rep = sparsity_report(model)
    assert rep["global"]["zeros"] == round(0.75 * N)


def test_schedule_ending_before_it_starts_is_rejected(fmnist_small):
    with pytest.raises(NetslimError, match="end_step"):
        make_config({"method": "gradual", "sparsity": 0.9, "start_step": 100, "end_step": 50})
    with pytest.raises(NetslimError, match="end_step"):
        gradual_prune(mlp(), fmnist_small, sparsity=0.9, start_step=10, end_step=10, frequency=1)
    # end_step past the run: the final sparsity would never be reached
    with pytest.raises(NetslimError, match="'end_step'.*number of training steps"):
        gradual_schedule(GradualConfig(sparsity=0.9, end_step=500, finetune={"epochs": 1}), steps=100)
    # default end (75 % of the run) before start_step + frequency
    with pytest.raises(NetslimError, match="'start_step'.*ends before it starts"):
        gradual_schedule(GradualConfig(sparsity=0.9, start_step=70, frequency=10), steps=100)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": 0.5, "initial_sparsity": 0.6}, "initial_sparsity"),
        ({"frequency": 0}, "frequency"),
        ({"finetune": {"epochs": 0}}, "finetune.epochs"),
    ],
)
def test_bad_gradual_input(bad, field):
    with pytest.raises(NetslimError, match=field):
        make_config({"method": "gradual", **bad})


@pytest.mark.parametrize(
    "bad, field",
    [({"sparsity": -0.5}, "sparsity"), ({"rounds": 0}, "rounds"), ({"finetune": {"lr": 0}}, "finetune.lr")],
)
def test_bad_imp_input(bad, field):
    with pytest.raises(NetslimError, match=field):
        make_config({"method": "imp", **bad})


def test_training_needs_a_task():
    with pytest.raises(NetslimError, match="needs a task"):
        apply(mlp(), IMPConfig(), StepContext(task=None, out_dir=None))


@pytest.mark.parametrize(
    "cfg",
    [
        IMPConfig(sparsity=0.8, rounds=4, exclude=("fc3",), finetune={"lr": 0.02}),
        GradualConfig(sparsity=0.95, end_step=400, frequency=50, finetune={"amp": "bf16"}),
    ],
)
def test_configs_round_trip_through_yaml(cfg):
    assert make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_finetune_keeps_masked_zeros(fmnist_small):
    model = mlp()
    from netslim.prune import magnitude_prune

    magnitude_prune(model, sparsity=0.8)
    zeros = model[1].weight == 0
    fit(model, fmnist_small, FinetuneConfig(epochs=1, max_steps=5, weight_decay=0.1, momentum=0.9))
    assert (model[1].weight[zeros] == 0).all()


def test_default_end_is_a_fraction_of_the_run():
    assert gradual_schedule(GradualConfig(sparsity=0.9, frequency=10), steps=1000) == (0, 75, 10)
    assert gradual_schedule(
        GradualConfig(sparsity=0.9, frequency=10, end_fraction=0.6, start_step=100), steps=1000
    ) == (100, 50, 10)
    with pytest.raises(NetslimError, match="end_fraction"):
        make_config({"method": "gradual", "end_fraction": 1.0})
