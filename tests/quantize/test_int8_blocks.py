"""Int8 residual blocks and quantized hand-offs (static PTQ): oracles, exactness, save/load, ONNX."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netslim
from netslim.models import build_model
from netslim.models.cnn import BasicBlock
from netslim.quantize import ptq_int8
from netslim.quantize.int8_blocks import Int8Residual
from netslim.quantize.int8_modules import Int8Conv2d, Int8Linear, _Int8Base


def _two_block_net(randomize_bn) -> nn.Module:
    """Stem, an identity-shortcut block, a strided block with a 1x1 conv + BN shortcut, classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        BasicBlock(8, 8),
        BasicBlock(8, 16, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()
    return randomize_bn(model)


def _fq(t: torch.Tensor, s: float, z: float) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(t, s, int(z), 0, 255)


def _emulate_conv(m: Int8Conv2d, x: torch.Tensor) -> torch.Tensor:
    y = F.conv2d(m._fake_input(x), m.dequantize_weight(), m.bias, m.stride, m.padding, m.dilation, m.groups)
    return m._fake(y)


def _emulate_block(b: Int8Residual, x: torch.Tensor) -> torch.Tensor:
    """Fake-quant oracle: Q/DQ(in) -> convs -> + shortcut -> ReLU -> Q/DQ(out)."""
    s_in, z_in, s_out, z_out = (float(v) for v in b.act_qparams)
    x = _fq(x, s_in, z_in)
    y, short = x, x
    for c in b.body:
        y = _emulate_conv(c, y)
    for c in b.shortcut:
        if isinstance(c, _Int8Base):
            short = _emulate_conv(c, short)
    y = y + short
    return _fq(torch.relu(y) if b.relu else y, s_out, z_out)


def _float_outputs(model: nn.Module, x: torch.Tensor, idx: list[int]) -> dict:
    seen, hooks = {}, []
    for i in idx:
        hooks.append(model[i].register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, (inp[0], out))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@torch.no_grad()
def test_int8_residual_matches_fake_quant_oracle_and_float_block(randomize_bn):
    model = _two_block_net(randomize_bn)
    x = torch.randn(32, 3, 12, 12)
    ref = _float_outputs(model, x, [3, 4])
    q = ptq_int8(copy.deepcopy(model), torch.randn(128, 3, 12, 12))
    assert isinstance(q[3], Int8Residual) and isinstance(q[4], Int8Residual)
    assert isinstance(q[4].shortcut[0], Int8Conv2d) and isinstance(q[4].shortcut[1], nn.Identity)  # BN folded
    for i in (3, 4):
        block = copy.deepcopy(q[i])
        block.quant_out = False
        xin, float_out = ref[i]
        real = block(xin)
        step = float(block.act_qparams[2])
        # oneDNN rounds the int32 accumulators its own way: rare flips, which may compound over two convs
        err = (real - _emulate_block(block, xin)).abs() / step
        assert err.gt(0.5).float().mean() < 0.01 and err.max() <= 4.01, (i, float(err.max()))
        # vs the float block: quantization error only (mean well under one output step, SQNR > 30 dB)
        assert ((real - float_out).abs() / step).mean() < 0.5
        sqnr = 10 * torch.log10(float_out.pow(2).mean() / (real - float_out).pow(2).mean())
        assert sqnr > 30, (i, float(sqnr))


@torch.no_grad()
def test_resnet20_runs_int8_end_to_end_and_handoffs_change_nothing(fmnist_small, randomize_bn):
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    randomize_bn(model)
    x, calib = fmnist_small.example_inputs(16), fmnist_small.calibration_inputs(64, seed=0)
    q = ptq_int8(copy.deepcopy(model), calib)
    blocks = [n for n, m in q.named_modules() if isinstance(m, Int8Residual)]
    assert blocks == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    handed = {n for n, m in q.named_modules() if getattr(m, "quant_out", False)}
    # every block hands its output to the next block (the last one through the average pool to fc)
    assert handed >= {"conv1", *blocks}
    assert not q.fc.quant_out and not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    plain = copy.deepcopy(q)
    for m in plain.modules():
        if isinstance(m, (Int8Conv2d, Int8Linear, Int8Residual)) and hasattr(m, "quant_out"):
            m.quant_out = False
    for b in blocks:  # inside a block the add still needs quantized operands
        blk = netslim.core.surgery.get_module(plain, b)
        blk.body[-1].quant_out = True
        if len(blk.shortcut):
            blk.shortcut[0].quant_out = True
    y = q(x)
    assert y.dtype == torch.float32 and not y.is_quantized
    # a consumer's input grid is its producer's output grid: re-quantizing a dequantized value is exact
    assert torch.equal(y, plain(x))


@torch.no_grad()
def test_ptq_resnet20_save_load_roundtrip(fmnist_small, tmp_path, randomize_bn):
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    randomize_bn(model)
    x = fmnist_small.example_inputs(32)
    ref = model(x)
    q = ptq_int8(copy.deepcopy(model), fmnist_small.calibration_inputs(64, seed=0))
    y = q(x)
    assert (y.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    fp32_bytes = netslim.save(model, tmp_path / "fp32.safetensors").stat().st_size
    path = netslim.save(q, tmp_path / "int8.safetensors")
    loaded = netslim.load(path)
    assert sum(isinstance(m, Int8Residual) for m in loaded.modules()) == 9
    assert torch.equal(loaded(x), y)
    assert path.stat().st_size < fp32_bytes / 3.5  # int8 weights + per-channel scales and fp32 biases


class _ReadTwice(nn.Module):
    """conv1's output is read by conv2 *and* by a functional add in this forward: it must stay float."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        h = self.conv1(x)
        y = self.conv2(h) + h
        return self.conv3(self.pool(y))


@torch.no_grad()
def test_outputs_read_elsewhere_stay_float():
    torch.manual_seed(0)
    model = _ReadTwice().eval()
    x = torch.randn(8, 3, 8, 8)
    q = ptq_int8(copy.deepcopy(model), torch.randn(64, 3, 8, 8))
    assert not q.conv1.quant_out and not q.conv2.quant_out and not q.conv3.quant_out
    ref, y = model(x), q(x)
    assert ((y - ref).abs().mean() / ref.abs().mean()) < 0.05


@torch.no_grad()
def test_handoff_through_max_pool_and_flatten(fmnist_small):
    """LeNet-5: conv1 -> pool -> conv2 -> pool -> flatten -> fc1 stay quantized, and exactly so."""
    torch.manual_seed(0)
    q = ptq_int8(build_model("lenet5").eval(), fmnist_small.calibration_inputs(64))
    assert q.conv1.quant_out and q.conv2.quant_out and q.fc1.quant_out and not q.fc2.quant_out
    assert q.conv2.act_qparams[:2].tolist() == q.conv1.act_qparams[2:].tolist()  # reads conv1's grid
    plain = copy.deepcopy(q)
    for m in plain.modules():
        if isinstance(m, _Int8Base):
            m.quant_out = False
    x = fmnist_small.example_inputs(64)
    assert torch.equal(q(x), plain(x))


@torch.no_grad()
def test_block_not_running_as_registered_stays_plain_layers(randomize_bn):
    model = _two_block_net(randomize_bn)
    model[3].relu1 = nn.Dropout(0.0)  # conv1's output now meets a call between it and conv2: no chain
    x = torch.randn(16, 3, 12, 12)
    q = ptq_int8(copy.deepcopy(model), torch.randn(128, 3, 12, 12))
    assert isinstance(q[3], BasicBlock) and isinstance(q[4], Int8Residual)
    assert isinstance(q[3].conv1, Int8Conv2d)
    ref, y = model(x), q(x)
    assert ((y - ref).abs().mean() / ref.abs().mean()) < 0.05


def test_onnx_export_of_int8_resnet20_matches_onnxruntime(fmnist_small, tmp_path, randomize_bn):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from netslim.quantize import check_onnx, export_onnx

    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    randomize_bn(model)
    q = ptq_int8(copy.deepcopy(model), fmnist_small.calibration_inputs(64, seed=0))
    path = export_onnx(q, tmp_path / "r20.onnx", fmnist_small.example_inputs(2))
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    int8_w = [
        i.name for i in proto.graph.initializer if i.name.endswith("w_int8") and i.data_type == onnx.TensorProto.INT8
    ]
    assert len(int8_w) == 22 and ops.count("Add") >= 9  # 19 + 2 shortcut convs + fc; one add per block
    x = fmnist_small.example_inputs(64)
    # op by op: a value on a rounding boundary flips by one step now and then (oneDNN's int32
    # accumulator vs ORT's float conv); over 20 layers and a 49-pixel average the logits move by
    # at most a few steps (measured over 5 seeds: max 2 steps, mean <= 0.25 step; untrained, so
    # near-tied logits may swap)
    exact = check_onnx(q, path, x, optimize=False)
    assert exact["max_abs_diff"] <= 3.01 * exact["last_output_step"], exact
    assert exact["mean_abs_diff"] <= 0.5 * exact["last_output_step"] and exact["argmax_agreement"] >= 0.95, exact
    fused = check_onnx(q, path, x)  # ORT's QLinear kernels: their own fixed-point requantization
    assert fused["mean_abs_diff"] <= 2 * fused["last_output_step"] and fused["argmax_agreement"] >= 0.9, fused


class _MyBlock(nn.Module):
    """A user's residual block (no shortcut conv, no final ReLU), registered by type."""

    def __init__(self, c: int):
        super().__init__()
        self.a, self.bn_a, self.act = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        self.b, self.bn_b = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.skip = nn.Identity()

    def forward(self, x):
        return self.bn_b(self.b(self.act(self.bn_a(self.a(x))))) + self.skip(x)


@torch.no_grad()
def test_user_registered_block_converts_and_zoo_block_still_does(randomize_bn):
    from netslim.quantize.int8_blocks import register_residual

    register_residual(_MyBlock, ("a", "b"), "skip", relu=False)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        _MyBlock(8),
        BasicBlock(8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    randomize_bn(model)
    x = torch.randn(16, 3, 10, 10)
    q = ptq_int8(copy.deepcopy(model), torch.randn(128, 3, 10, 10))
    assert isinstance(q[2], Int8Residual) and not q[2].relu and isinstance(q[3], Int8Residual)
    ref, y = model(x), q(x)
    assert ((y - ref).abs().mean() / ref.abs().mean()) < 0.05
