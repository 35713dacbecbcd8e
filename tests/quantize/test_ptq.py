"""Static int8 PTQ: BN folding exact, int8 kernels vs fake-quant emulation, accuracy, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netslim
from netslim.core.config import apply
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.models import build_model
from netslim.quantize.int8_modules import Int8Conv2d, Int8Linear
from netslim.quantize.ptq import PTQInt8Config, fold_bn, ptq_int8


def test_fold_bn_is_exact(randomize_bn):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8).eval()
    randomize_bn(nn.Sequential(bn))
    x = torch.randn(2, 3, 9, 9)
    ref = bn(conv(x))
    fold_bn(conv, bn)
    assert torch.allclose(conv(x), ref, atol=1e-5)


def test_int8_module_matches_fake_quant_emulation(fmnist_small):
    model = build_model("lenet5").eval()
    x = fmnist_small.calibration_inputs(64)
    q = ptq_int8(copy.deepcopy(model), x)
    assert isinstance(q.conv1, Int8Conv2d) and isinstance(q.fc2, Int8Linear) and q.fc1.relu
    conv = q.conv1
    real = conv(x)
    real = real.dequantize() if real.is_quantized else real  # conv1 hands its output to conv2 quantized
    emulated = conv._fake(F.conv2d(conv._fake_input(x), conv.dequantize_weight(), conv.bias))
    step = float(conv.act_qparams[2])
    # oneDNN requantizes with its own rounding of the int32 accumulator: one output step at most
    assert (real - emulated).abs().max() <= step * 1.01
    assert (real - emulated).abs().gt(step / 2).float().mean() < 0.01


def test_resnet20_int8_keeps_predictions_and_roundtrips(fmnist_small, tmp_path, randomize_bn):
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    randomize_bn(model)
    x = fmnist_small.example_inputs(32)
    ref = model(x)
    fp32_size = netslim.save(model, tmp_path / "fp32.safetensors").stat().st_size
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    q = apply(copy.deepcopy(model), PTQInt8Config(calibration_samples=64, batch_size=32), ctx)
    assert ctx.notes["ptq_int8"]["folded_bn"] == 21 and ctx.notes["ptq_int8"]["fused_relu"] == 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    y = q(x)
    assert (y.argmax(1) == ref.argmax(1)).float().mean() > 0.9
    path = netslim.save(q, tmp_path / "int8.safetensors")
    assert torch.equal(netslim.load(path)(x), y)
    assert path.stat().st_size < fp32_size / 3


def test_constant_calibration_rejected():
    model = build_model("lenet5").eval()
    with pytest.raises(NetslimError, match="constant"):
        ptq_int8(model, torch.zeros(8, 1, 28, 28))
