import math

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.models import build_model
from netslim.train.loop import Callback, TrainConfig, fit, lr_factor


def test_training_improves_accuracy_and_selects_best(fmnist_small):
    torch.manual_seed(0)
    model = build_model("lenet300")
    before = fmnist_small.evaluate(model, "val")["accuracy"]
    summary = fit(model, fmnist_small, TrainConfig(epochs=3, lr=0.05))
    after = fmnist_small.evaluate(model, "val")["accuracy"]
    assert after > before + 0.3
    best = max(h["val_accuracy"] for h in summary["history"])
    assert after == pytest.approx(best)  # best-on-validation restored
    assert len(summary["history"]) == 3 and summary["steps"] == 3 * fmnist_small.steps_per_epoch(128)


def test_callbacks_are_called_at_boundaries_and_extra_loss_applies(fmnist_small):
    calls = {"begin": 0, "step": 0, "epoch": 0, "end": 0, "after_backward": 0}

    class Count(Callback):
        def on_train_begin(self, s):
            calls["begin"] += 1

        def on_step_end(self, s):
            calls["step"] += 1

        def on_epoch_end(self, s):
            calls["epoch"] += 1

        def on_train_end(self, s):
            calls["end"] += 1

        def on_after_backward(self, s):
            calls["after_backward"] += 1
            assert s.model.fc1.weight.grad is not None

        def extra_loss(self, s):
            return 0.0 * s.model.fc1.weight.sum()

    fit(build_model("lenet300"), fmnist_small, TrainConfig(epochs=2, max_steps=5), [Count()])
    assert calls == {"begin": 1, "step": 5, "epoch": 1, "end": 1, "after_backward": 5}


def test_cosine_schedule_and_warmup_values():
    cfg = TrainConfig(schedule="cosine")
    assert lr_factor(cfg, 0, 100, 0) == 1.0
    assert lr_factor(cfg, 50, 100, 0) == pytest.approx(0.5)
    assert lr_factor(cfg, 100, 100, 0) == pytest.approx(0.0)
    assert lr_factor(cfg, 4, 100, 10) == pytest.approx(0.5)
    assert lr_factor(TrainConfig(schedule="onecycle"), 55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(TrainConfig(schedule="constant"), 99, 100, 0) == 1.0


def test_bf16_autocast_trains(fmnist_small):
    model = build_model("lenet5")
    s = fit(model, fmnist_small, TrainConfig(epochs=1, max_steps=8, amp="bf16", select_best=False))
    assert math.isfinite(s["history"][-1]["train_loss"])
    assert model.conv1.weight.dtype == torch.float32  # master weights stay fp32


def test_divergence_is_a_clear_error(fmnist_small):
    with pytest.raises(NetslimError, match="diverged"):
        fit(build_model("lenet300"), fmnist_small, TrainConfig(epochs=1, lr=1e6, momentum=0.0, max_steps=50))
