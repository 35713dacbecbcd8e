"""Dynamic int8 (torch._int_mm) and bf16 Linear: oracle vs fake-quant, save/load, recipes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.quantize.core import QScheme, fake_quantize, qparams_from_range
from netslim.quantize.dynamic import BF16Linear, DynamicInt8Linear, int8_matmul


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 7, 5), (33, 100, 10)])
def test_int8_matmul_is_exact(shape):
    m, k, n = shape
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    assert torch.equal(int8_matmul(a, b.t()), a.int() @ b.int().t())


def test_int8_linear_matches_fake_quant_model():
    """Real int8 execution == fake-quant (per-token activations, per-channel weights) in fp32."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(2, 5, 64)
    q = DynamicInt8Linear.from_float(lin)
    w_fq = fake_quantize(lin.weight, qparams_from_range(
        -lin.weight.abs().amax(1), lin.weight.abs().amax(1), QScheme(8, True, "channel")))
    # core's symmetric scale uses the half-width 127.5, dynamic int8 uses 127: compare to
    # the module's own dequantized weight, and to fake-quant with a loose bound.
    x2 = x.reshape(-1, 64)
    sx = x2.abs().amax(1, keepdim=True) / 127
    ref = (torch.round(x2 / sx) * sx) @ q.dequantize_weight().T + lin.bias
    assert torch.allclose(q(x).reshape(-1, 32), ref, atol=1e-4)
    assert (q(x) - lin(x)).abs().max() < 0.05
    assert (x @ w_fq.T + lin.bias - lin(x)).abs().max() < 0.05


def test_zero_rows_and_bad_weight():
    lin = nn.Linear(16, 4)
    q = DynamicInt8Linear.from_float(lin)
    out = q(torch.zeros(3, 16))  # an all-zero token must not give NaN
    assert torch.isfinite(out).all() and torch.allclose(out, lin.bias.expand(3, 4))
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(NetslimError, match="NaN"):
        DynamicInt8Linear.from_float(lin)


@pytest.mark.parametrize("method,cls,extra", [("dynamic_int8", DynamicInt8Linear, {}),
                                              ("dynamic_int8", DynamicInt8Linear, {"kernel": "onednn"}),
                                              ("bf16", BF16Linear, {})])
def test_recipe_step_save_load(tiny_mlp, tmp_path, method, cls, extra):
    x = torch.randn(4, 1, 28, 28)
    ref = tiny_mlp(x)
    fp32 = netslim.save(tiny_mlp, tmp_path / "fp32.safetensors").stat().st_size
    ctx = StepContext(task=None, out_dir=tmp_path)
    model = apply(tiny_mlp, make_config({"method": method, "exclude": ["fc3"], **extra}), ctx)
    assert isinstance(model.fc1, cls) and isinstance(model.fc3, nn.Linear)
    y = model(x)
    assert y.dtype == torch.float32
    assert (y - ref).abs().max() < 0.05 * ref.abs().max()
    path = netslim.save(model, tmp_path / "q.safetensors")
    assert torch.equal(netslim.load(path)(x), y)
    ratio = path.stat().st_size / fp32
    assert ratio < (0.27 if method == "dynamic_int8" else 0.52)


def test_onednn_kernel_matches_per_tensor_reference(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    q = DynamicInt8Linear.from_float(lin, kernel="onednn")
    x = torch.randn(10, 64)
    sx = x.abs().max() / 127  # one scale for the whole tensor (asymmetric in oneDNN: loose bound)
    ref = (torch.round(x / sx) * sx) @ q.dequantize_weight().T + lin.bias
    assert (q(x) - ref).abs().max() < 0.04
    model = nn.Sequential(q)
    with pytest.raises(NetslimError):  # a plain Sequential has no zoo arch to save against
        netslim.save(model, tmp_path / "x.safetensors")
    with pytest.raises(NetslimError, match="kernel"):
        DynamicInt8Linear(4, 4, kernel="cuda-magic")
