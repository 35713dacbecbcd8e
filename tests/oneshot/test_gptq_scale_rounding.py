"""GPTQ's fp16 scale rounded to nearest (packing.round_params(nearest_scale=True)) vs the RTN default (up)."""

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.quantize.gptq import GPTQConfig, gptq_quantize
from netslim.quantize.packing import codes_for, dequantize_groups, minmax_params, round_params


def _groups(seed=0, n=4000, g=64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, g, generator=gen) * torch.exp(torch.randn(n, 1, generator=gen))  # uneven group ranges


def _exact_scale(x, bits):
    lo, hi = x.amin(1).clamp_max(0), x.amax(1).clamp_min(0)
    return (hi - lo) / (2**bits - 1)


def test_default_still_rounds_the_scale_up():
    s = torch.rand(1000) * 3 + 1e-3
    up, _ = round_params(s, torch.zeros_like(s))
    assert (up >= s).all()  # backward compatible: no group clips
    near, _ = round_params(s, torch.zeros_like(s), nearest_scale=True)
    assert torch.equal(near, s.to(torch.float16).float())  # nearest fp16
    assert ((near - s).abs() <= (up - s).abs()).all()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_nearest_scale_is_closer_and_its_codes_stay_in_range(bits):
    x = _groups(bits)
    exact = _exact_scale(x, bits)
    s_up, z_up = minmax_params(x, bits, False)
    s_near, z_near = minmax_params(x, bits, False, nearest_scale=True)
    assert ((s_near - exact).abs() <= (s_up - exact).abs()).all()
    q = codes_for(x, s_near, z_near, bits)
    assert int(q.min()) >= 0 and int(q.max()) <= 2**bits - 1
    # an extreme code may clip, but only by the fp16 rounding of the scale times the code span
    err = ((q - z_near[:, None]) * s_near[:, None] - x).abs().amax(1)
    bound = s_near / 2 + (2**bits - 1) * (s_near - exact).abs() + 1e-6 * x.abs().amax(1)
    assert (err <= bound).all()


def test_nearest_scale_lowers_the_total_rtn_error_on_random_groups():
    x = _groups(7)
    errs = []
    for nearest in (False, True):
        s, z = minmax_params(x, 4, False, nearest_scale=nearest)
        errs.append(((codes_for(x, s, z, 4) - z[:, None]) * s[:, None] - x).pow(2).sum().item())
    assert errs[1] < errs[0]


@pytest.mark.parametrize("rounding", ["nearest", "up"])
def test_gptq_packs_exactly_what_it_optimised_with_either_rounding(rounding):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1024, 128, generator=gen) @ (torch.eye(128) + torch.randn(128, 128, generator=gen) / 12)
    w = torch.randn(32, 128, generator=gen)
    h = 2 * x.T @ x / len(x)
    codes, scale, zero, w_hat = gptq_quantize(w, h, bits=4, group_size=64, scale_rounding=rounding)
    assert int(codes.max()) <= 15 and scale.dtype == torch.float16
    assert torch.equal(dequantize_groups(codes, scale, zero), w_hat)
    exact = _exact_scale(w.reshape(-1, 64), 4).view(32, 2)  # act-order: static groups from the original weights
    if rounding == "up":
        assert (scale.float() >= exact).all()
    else:
        assert torch.equal(scale.float(), exact.to(torch.float16).float())


def test_bad_scale_rounding_is_a_clear_error():
    w, h = torch.randn(4, 64), torch.eye(64)
    with pytest.raises(NetslimError, match="'scale_rounding' parameter of gptq"):
        gptq_quantize(w, h, bits=4, group_size=64, scale_rounding="down")
    with pytest.raises(ValueError, match="scale_rounding"):
        GPTQConfig(scale_rounding="down")
    assert GPTQConfig().scale_rounding == "nearest"
