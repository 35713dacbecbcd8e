"""The CPU int4 GEMM path of weight-only layers (issue 25): the same weights as the dequantizing
QuantizedLinear up to bf16 rounding, ineligible layers kept and named, nothing eligible refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.quantize.int4_kernel import Int4KernelLinear, use_int4_kernel
from netslim.quantize.weight_only import QuantizedLinear

pytestmark = pytest.mark.skipif(
    not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="this PyTorch has no CPU int4 kernel"
)


def _layer(in_f: int, out_f: int, group: int, bias: bool = True, symmetric: bool = False) -> QuantizedLinear:
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=bias)
    return QuantizedLinear.from_float(lin, bits=4, group_size=group, symmetric=symmetric)


@pytest.mark.parametrize("in_f,out_f,group", [(576, 192, 64), (1536, 576, 64), (256, 96, 32), (512, 64, 128)])
@pytest.mark.parametrize("rows", [1, 7])
def test_kernel_matches_the_dequantized_layer_within_bf16_rounding(in_f, out_f, group, rows):
    q = _layer(in_f, out_f, group, symmetric=group == 32)
    k = Int4KernelLinear(q)
    x = torch.randn(2, rows, in_f)
    want = q(x)
    got = k(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    # bf16 activations / scales: each product rounds at ~2^-8 relative
    err = (got - want).abs().max() / want.abs().max()
    assert err < 2e-2
    # against the same math in bf16 inputs done by hand: the packing itself is exact
    w = q.dequantize_weight()
    ref = torch.nn.functional.linear(x.to(torch.bfloat16).float(), w, q.bias)
    assert ((got - ref).abs().max() / ref.abs().max()) < 2e-2


def test_use_int4_kernel_swaps_what_it_can_and_names_the_rest():
    model = nn.Sequential(
        _layer(128, 64, 64), nn.ReLU(), QuantizedLinear.from_float(nn.Linear(64, 32), bits=8, group_size=64)
    )
    x = torch.randn(3, 128)
    want = model(x)
    report = use_int4_kernel(model)
    assert report["swapped"] == ["0"] and "8-bit" in report["kept"]["2"]
    assert isinstance(model[0], Int4KernelLinear) and isinstance(model[2], QuantizedLinear)
    assert ((model(x) - want).abs().max() / want.abs().max()) < 2e-2


def test_a_model_without_eligible_layers_is_refused():
    with pytest.raises(NetslimError, match="no weight-only int4 layer"):
        use_int4_kernel(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(NetslimError, match="group size"):
        Int4KernelLinear(_layer(96, 8, 48))
