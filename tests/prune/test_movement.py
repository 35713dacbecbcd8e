"""Movement pruning: the scores are -sum_t W_t * dL/dW'_t, the schedule is the cubic one."""

import pytest
import torch
import yaml

import netslim
from netslim.core.config import make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.masks import get_mask
from netslim.prune.criteria import prunable_layers
from netslim.prune.movement import MovementConfig, movement_prune, movement_train, run_movement
from netslim.prune.schedules import cubic_sparsity
from netslim.prune.sparse_training import original
from netslim.train.loop import Callback


def short(steps):
    return {"finetune": {"epochs": 1, "max_steps": steps, "batch_size": 32, "lr": 0.05, "weight_decay": 1e-3}}


class Recorder(Callback):
    """Oracle: -sum w * grad from the optimizer's own view (stored weight and its .grad)."""

    def __init__(self, model):
        self.layers = prunable_layers(model)
        self.acc = {n: torch.zeros_like(m.weight) for n, m in self.layers}

    def on_after_backward(self, state):
        for n, m in self.layers:  # with an all-ones mask, original.grad == dL/dW'
            self.acc[n] -= original(m).detach() * original(m).grad


def test_scores_equal_minus_sum_w_times_grad_before_pruning(tiny_mlp, fmnist_small, monkeypatch):
    import netslim.prune.movement as mv

    recorders = []
    real_fit = mv.fit

    def fit_with_recorder(model, task, cfg, callbacks):
        recorders.append(Recorder(model))
        return real_fit(model, task, cfg, [recorders[0], *callbacks])

    monkeypatch.setattr(mv, "fit", fit_with_recorder)
    # Soft mode starting after the 5 steps run: no weight is pruned while scores accrue.
    cfg = MovementConfig(mode="soft", start_step=100, frequency=10, **short(5))
    out = movement_train(tiny_mlp, fmnist_small, cfg=cfg)
    for name, expected in recorders[0].acc.items():
        assert expected.abs().sum() > 0
        torch.testing.assert_close(out["scores"][name], expected, rtol=1e-5, atol=1e-9)


def test_hand_computed_two_steps_on_a_single_linear():
    """-sum_t w_t * g_t for plain SGD on a 1-layer model, computed by hand."""
    from torch import nn

    from netslim.core.masks import set_mask
    from netslim.prune.movement import MovementPruning

    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False)
    set_mask(lin, torch.ones(2, 3, dtype=torch.bool))
    cb = MovementPruning([("lin", lin)], MovementConfig(start_step=100, end_step=200, frequency=10), 100, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    x = torch.tensor([[1.0, -2.0, 0.5]])
    w = lin.weight.detach().clone()
    expected = torch.zeros(2, 3)
    state = type("S", (), {"step": 0, "optimizer": opt})()
    for _ in range(2):
        cb.on_step_begin(state)
        lin(x).sum().backward()  # dL/dW = ones(2, 1) @ x: every row equals x
        cb.on_after_backward(state)
        g = x.expand(2, 3)
        expected -= w * g
        opt.step()
        opt.zero_grad()
        w = w - 0.5 * g
    torch.testing.assert_close(cb.scores["lin"], expected)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_hard_movement_follows_the_cubic_schedule_exactly(scope, tiny_mlp, fmnist_small, tmp_path):
    cfg = MovementConfig(sparsity=0.8, scope=scope, start_step=2, end_step=10, frequency=2, **short(12))
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    run_movement(tiny_mlp, cfg, ctx)
    events = ctx.notes["movement"]["events"]
    assert [t for t, _ in events] == [2, 4, 6, 8, 10]
    for t, s in events:
        assert s == cubic_sparsity(t, 0.0, 0.8, 2, 4, 2)
    masks = [get_mask(m) for _, m in prunable_layers(tiny_mlp)]
    if scope == "layer":
        assert all(int((~m).sum()) == round(0.8 * m.numel()) for m in masks)
    else:
        assert sum(int((~m).sum()) for m in masks) == round(0.8 * sum(m.numel() for m in masks))
    for _, m in prunable_layers(tiny_mlp):  # pruned entries are zero in the stored weight
        assert torch.all(original(m)[~get_mask(m)] == 0)
    again = netslim.load(netslim.save(tiny_mlp, tmp_path / "mv.safetensors"))
    x = fmnist_small.example_inputs(4)
    torch.testing.assert_close(again(x), tiny_mlp.eval()(x), rtol=0, atol=0)


def test_hard_movement_keeps_the_highest_scores(tiny_mlp, fmnist_small):
    cfg = MovementConfig(sparsity=0.6, start_step=0, end_step=4, frequency=4, **short(5))
    out = movement_train(tiny_mlp, fmnist_small, cfg=cfg)
    # Last mask update at step 4; the oracle uses the scores then, which step 5 changed
    # only for kept weights (pruned weights are zero, so their scores froze).
    for name, module in prunable_layers(tiny_mlp):
        mask, s = get_mask(module), out["scores"][name]
        assert int((~mask).sum()) == round(0.6 * mask.numel())
        assert s[~mask].max() <= s[mask].max()


def test_soft_movement_masks_scores_below_threshold(tiny_mlp, fmnist_small):
    cfg = MovementConfig(mode="soft", threshold=0.0, reg_lambda=1e-4, frequency=3, **short(7))
    out = movement_train(tiny_mlp, fmnist_small, cfg=cfg)
    # The last update (step 6) masked score <= threshold; entries pruned then have frozen scores.
    for name, module in prunable_layers(tiny_mlp):
        mask = get_mask(module)
        assert (~mask).any() and mask.any()
        assert torch.all(out["scores"][name][~mask] <= 0)


def test_a_schedule_that_cannot_finish_in_training_is_refused(tiny_mlp, fmnist_small):
    cfg = MovementConfig(
        sparsity=0.7,
        scope="global",
        start_step=0,
        end_step=1000,
        frequency=10,
        finetune={"epochs": 1, "batch_size": 32, "max_steps": 2000},
    )
    # the fixture's 2000 images give 62 steps per epoch: the schedule cannot fit
    with pytest.raises(NetslimError, match="'end_step'.*< the number of training steps \\(62\\).*got 1000"):
        movement_prune(tiny_mlp, fmnist_small, **cfg.model_dump())


def test_config_yaml_round_trip_and_bad_input(tiny_mlp, fmnist_small):
    cfg = MovementConfig(
        mode="soft",
        sparsity=0.95,
        initial_sparsity=0.1,
        scope="global",
        exclude=("fc3",),
        start_step=10,
        end_step=500,
        frequency=20,
        threshold=0.1,
        reg_lambda=0.01,
        finetune={"epochs": 3},
    )
    again = make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and type(again) is MovementConfig
    for bad, needle in [
        ({"sparsity": 1.0}, r"\[0, 1\)"),
        ({"initial_sparsity": 0.9, "sparsity": 0.5}, "<= 'sparsity'"),
        ({"start_step": 100, "end_step": 50}, "ends before it starts"),
        ({"finetune": {"epochs": 0}}, "'finetune.epochs'"),
        ({"mode": "medium"}, "'hard' or 'soft'"),
        ({"reg_lambda": -1}, "'reg_lambda'"),
    ]:
        with pytest.raises(NetslimError, match=needle):
            make_config({"method": "movement", **bad})
    with pytest.raises(NetslimError, match="'sparsity'.*got 1.5"):
        movement_prune(tiny_mlp, fmnist_small, sparsity=1.5)


def test_weights_pruned_by_an_earlier_step_stay_pruned(tiny_mlp, fmnist_small):
    from netslim.prune import magnitude_prune

    magnitude_prune(tiny_mlp, sparsity=0.5, scope="layer")
    before = {n: get_mask(m).clone() for n, m in prunable_layers(tiny_mlp)}
    movement_prune(
        tiny_mlp, fmnist_small, sparsity=0.7, scope="layer", start_step=0, end_step=4, frequency=2, **short(6)
    )
    for name, module in prunable_layers(tiny_mlp):
        assert not (get_mask(module) & ~before[name]).any()
        assert int((~get_mask(module)).sum()) == round(0.7 * module.weight.numel())
