"""Run-time activation quantization (netslim.quantize.act_quant): native C kernels vs torch oracles."""

from __future__ import annotations

import pytest
import torch

from netslim.quantize import act_quant
from netslim.quantize.act_quant import quantize_u8_per_row, quantize_u8_per_tensor, u8_qparams


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Each test on the compiled kernel and on the torch fallback."""
    if request.param == "torch":
        monkeypatch.setattr(act_quant, "_lib", lambda: None)
    elif act_quant._lib() is None:
        pytest.skip("no C compiler: the native kernels are not built")
    return request.param


def _inputs(dtype):
    torch.manual_seed(0)
    x = torch.randn(67, 129) * 3 + 0.5  # odd sizes: no vector-width multiples
    x[5, 7] = 40.0  # an outlier sets the per-tensor range
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_tensor_equals_quantize_per_tensor(path, dtype):
    x = _inputs(dtype)
    codes, scale, zero = quantize_u8_per_tensor(x)
    lo, hi = torch.aminmax(x.float())
    assert (scale, zero) == u8_qparams(lo, hi)
    ref = torch.quantize_per_tensor(x.float(), scale, zero, torch.quint8).int_repr()
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert torch.equal(codes, ref)
    # quantize-dequantize error <= scale / 2 per element (nothing saturates: the range is x's own)
    assert ((codes.float() - zero) * scale - x.float()).abs().max() <= scale / 2 * (1 + 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_row_equals_quantize_per_channel(path, dtype):
    x = _inputs(dtype)
    codes, scales = quantize_u8_per_row(x)
    xf = x.float()
    expect = xf.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    assert scales.shape == (67, 1) and torch.equal(scales, expect)
    ref = torch.quantize_per_channel(xf, expect.squeeze(1).double(), torch.full((67,), 128), 0, torch.quint8).int_repr()
    diff = (codes.int() - ref.int()).abs()
    # x * (1 / s) vs torch's x / s may fall on the other side of a rounding tie: one code, rarely
    assert diff.max() <= 1 and diff.float().mean() < 1e-3
    assert int(codes.min()) >= 1 and int(codes.max()) <= 255  # symmetric: codes 128 +- 127
    assert ((codes.float() - 128) * scales - xf).abs().max() <= scales.max() * (0.5 + 1e-3)


def test_zero_and_constant_inputs_give_finite_scales(path):
    zeros = torch.zeros(4, 16)
    codes, scale, zero = quantize_u8_per_tensor(zeros)
    assert scale > 0 and torch.isfinite(torch.tensor(scale)) and torch.all(codes == zero)
    rows, scales = quantize_u8_per_row(zeros)
    assert torch.isfinite(scales).all() and torch.all(rows == 128)
    const = torch.full((3, 8), -2.5)  # all negative: zero point 255, every code 0
    codes, scale, zero = quantize_u8_per_tensor(const)
    assert zero == 255 and torch.all(codes == 0) and abs((0 - zero) * scale + 2.5) < 1e-6


def test_native_and_fallback_agree_and_autograd_inputs_work(monkeypatch):
    if act_quant._lib() is None:
        pytest.skip("no C compiler: the native kernels are not built")
    x = _inputs(torch.float32).requires_grad_()  # a training-time input: quantization is not differentiable
    native = quantize_u8_per_tensor(x)
    monkeypatch.setattr(act_quant, "_lib", lambda: None)
    fallback = quantize_u8_per_tensor(x)
    assert torch.equal(native[0], fallback[0]) and native[1:] == fallback[1:]
    assert not act_quant.native_ok(x.t())  # non-contiguous: the fallback takes it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_tensor_parallel_and_serial_paths_agree(dtype):
    """Above 2 x GRAIN (65,536) elements the kernel splits the scan over threads, below it runs on
    the calling thread: codes, scale and zero point are torch's either way and for 1 or 2 threads."""
    if act_quant._lib() is None:
        pytest.skip("no C compiler: the native kernels are not built")
    torch.manual_seed(1)
    big = torch.randn(333, 401) * 2 - 0.3  # 133,533 elements: 2 threads' chunks of odd length
    big[300, 400] = -25.0  # the minimum sits in the last thread's chunk
    old = torch.get_num_threads()
    try:
        for x in (big.to(dtype), big[:7].to(dtype)):
            results = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append(quantize_u8_per_tensor(x))
            lo, hi = torch.aminmax(x.float())
            scale, zero = u8_qparams(lo, hi)
            ref = torch.quantize_per_tensor(x.float(), scale, zero, torch.quint8).int_repr()
            for codes, s, z in results:
                assert (s, z) == (scale, zero) and torch.equal(codes, ref)
    finally:
        torch.set_num_threads(old)


def test_profiler_sees_the_native_call():
    if act_quant._lib() is None:
        pytest.skip("no C compiler: the native kernels are not built")
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(8, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        quantize_u8_per_tensor(x)
        quantize_u8_per_row(x)
    names = {e.key for e in prof.key_averages()}
    assert {"netslim::quantize_u8_per_tensor", "netslim::quantize_u8_per_row"} <= names
