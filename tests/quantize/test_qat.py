"""QAT: LSQ/STE fake quant trains, converts into the PTQ int8 artifact, round-trips."""

from __future__ import annotations

import pytest
import torch

import netslim
from netslim.core.config import apply
from netslim.core.context import StepContext
from netslim.models import build_model
from netslim.quantize.int8_modules import Int8Conv2d
from netslim.quantize.qat import LSQ, QATConfig, QATConv2d, convert_qat, prepare_qat, round_ste


def test_ste_and_lsq_gradients():
    x = torch.tensor([0.2, 1.7, -3.0], requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))  # straight through
    fq = LSQ(4)
    y = fq(torch.linspace(-1, 1, 50, requires_grad=True))
    y.sum().backward()
    assert fq.scale.grad is not None and torch.isfinite(fq.scale.grad).all()
    assert len(torch.unique(y.detach())) <= 16


def test_qat_converts_to_int8_close_to_fake_quant(fmnist_small, tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5")
    calib = fmnist_small.calibration_inputs(64)
    prepare_qat(model, calib, weight_bits=4)
    assert isinstance(model.conv1, QATConv2d)
    fake = model(calib).detach()
    q = convert_qat(model, calib)
    assert isinstance(q.conv1, Int8Conv2d) and q.conv1.weight_bits == 4
    assert int(q.conv1.int_weight().abs().max()) <= 8 and hasattr(q.conv1, "weight_packed")
    real = q(calib)
    assert (real.argmax(1) == fake.argmax(1)).float().mean() > 0.9
    path = netslim.save(q, tmp_path / "qat.safetensors")
    assert torch.equal(netslim.load(path)(calib), real)


@pytest.mark.slow  # a real (short) training run: ~2 min on the shared 2-core box
def test_qat_step_trains(fmnist_small, tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5")
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    cfg = QATConfig(
        finetune={"epochs": 1, "max_steps": 20, "lr": 0.003, "optimizer": "adamw", "select_best": False},
        calibration_samples=64,
    )
    q = apply(model, cfg, ctx)
    assert ctx.notes["qat"]["weight_bits"] == 4
    acc = fmnist_small.evaluate(q, "test")
    assert acc["accuracy"] > 0.3  # 20 steps from scratch with 4-bit weights: it learns
