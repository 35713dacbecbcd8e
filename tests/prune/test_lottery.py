"""Lottery tickets: rewinding restores the exact early values of the surviving weights."""

import pytest
import torch
import yaml
from torch import nn

from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.masks import get_mask
from netslim.prune import LotteryConfig, lottery_ticket, magnitude_prune, rewind, snapshot_weights, sparsity_report
from netslim.prune.lottery import RecordAt
from netslim.train.loop import FinetuneConfig, fit


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def test_rewind_restores_exact_initial_values_of_survivors(fmnist_small):
    model = net()
    init = snapshot_weights(model)
    fit(model, fmnist_small, FinetuneConfig(epochs=1, max_steps=4, lr=0.1))
    assert not torch.equal(model[1].weight, init["1.weight"])  # training moved it
    magnitude_prune(model, sparsity=0.7)
    mask = get_mask(model[1]).clone()
    rewind(model, init)
    w = model[1].weight
    assert torch.equal(w[mask], init["1.weight"][mask])  # survivors: bit-exact initial values
    assert (w[~mask] == 0).all()  # pruned: still zero
    assert torch.equal(model[2].running_mean, init["2.running_mean"])  # buffers rewound too
    assert torch.equal(model[4].bias, init["4.bias"])


def test_record_at_step_k_is_the_weights_before_that_step(fmnist_small):
    model = net()
    recorder = RecordAt(2)
    seen = []

    class Spy(RecordAt):
        def on_step_begin(self, state):
            seen.append(state.model[1].weight.detach().clone())

    fit(
        model,
        fmnist_small,
        FinetuneConfig(epochs=1, max_steps=4, lr=0.1, select_best=False),
        callbacks=[recorder, Spy(0)],
    )
    assert torch.equal(recorder.weights["1.weight"], seen[2])
    assert not torch.equal(seen[2], seen[0])


def test_lottery_step_prunes_rewinds_and_retrains(fmnist_small, tmp_path):
    model = net()
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    cfg = LotteryConfig(sparsity=0.75, rounds=2, finetune={"epochs": 1, "max_steps": 3}, rewind_step=1, init="reset")
    apply(model, cfg, ctx)
    notes = ctx.notes["lottery"]
    assert [t["run"] for t in notes["trainings"]] == ["dense", "round 1", "round 2"]
    assert notes["trainings"][-1]["sparsity"] == pytest.approx(0.75)
    n = 784 * 32 + 32 * 10
    assert sparsity_report(model)["global"]["zeros"] == round(0.75 * n)


def test_reset_init_reinitialises(fmnist_small):
    model = net()
    with torch.no_grad():
        model[1].weight.fill_(0.5)
    lottery_ticket(model, fmnist_small, sparsity=0.5, finetune={"epochs": 1, "max_steps": 1}, init="reset")
    assert not (model[1].weight == 0.5).any()


def test_bad_input(fmnist_small):
    with pytest.raises(NetslimError, match="rewind_step"):
        lottery_ticket(net(), fmnist_small, sparsity=0.5, finetune={"epochs": 1, "max_steps": 3}, rewind_step=3)
    with pytest.raises(NetslimError, match="sparsity"):
        make_config({"method": "lottery", "sparsity": 1.0})
    with pytest.raises(NetslimError, match="init"):
        make_config({"method": "lottery", "init": "random"})
    with pytest.raises(NetslimError, match="'nope'"):
        lottery_ticket(net(), fmnist_small, sparsity=0.5, finetune={"epochs": 1, "max_steps": 3}, include="nope")


def test_config_round_trips_through_yaml():
    cfg = LotteryConfig(
        sparsity=0.95, rounds=3, finetune={"epochs": 10}, init="reset", rewind_step=200, exclude=("fc3",)
    )
    assert make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
