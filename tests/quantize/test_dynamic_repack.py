"""The packed-weight key of dynamic int8 Linears (checked on every call): any change to a weight,
scale or bias of any member of a fused q/k/v-style group repacks the group's GEMM."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netslim.quantize import dynamic
from netslim.quantize.dynamic import DynamicInt8Linear


def _group(seed: int = 0):
    torch.manual_seed(seed)
    return [DynamicInt8Linear.from_float(nn.Linear(32, n, bias=b)) for n, b in ((16, True), (8, True), (8, False))]


def _alone(mods, x, monkeypatch):
    monkeypatch.setattr(dynamic, "_LEARN_GROUPS", False)
    out = [copy.deepcopy(m)(x) for m in mods]
    monkeypatch.setattr(dynamic, "_LEARN_GROUPS", True)
    return out


@pytest.mark.parametrize(
    "change", ["follower_codes_in_place", "follower_bias_in_place", "leader_scale_in_place", "follower_state_dict"]
)
def test_any_member_change_repacks_the_fused_gemm(change, monkeypatch):
    if not dynamic._onednn_ok():
        pytest.skip("this torch build has no oneDNN qlinear")
    mods = _group()
    x = torch.randn(5, 32)
    for _ in range(2):  # the first call learns the group, the second runs one GEMM
        [m(x) for m in mods]
    assert mods[0]._followers == mods[1:]
    with torch.no_grad():
        if change == "follower_codes_in_place":
            mods[1].weight_int8.neg_()
        elif change == "follower_bias_in_place":
            mods[1].bias.add_(1.0)
        elif change == "leader_scale_in_place":
            mods[0].weight_scale.mul_(2.0)
        else:
            mods[2].load_state_dict(_group(seed=1)[2].state_dict())
    x2 = torch.randn(5, 32)
    got = [m(x2) for m in mods]
    for g, ref in zip(got, _alone(mods, x2, monkeypatch)):
        assert torch.allclose(g, ref, atol=1e-5, rtol=1e-5)


def test_key_is_identity_storage_and_version():
    mods = _group()
    key = dynamic._weights_key(mods)
    assert key == dynamic._weights_key(mods)
    assert len(key) == 3 + 2 * 8  # per member its id, then (data_ptr, version) of codes, scale and bias
    with torch.no_grad():
        mods[2].weight_scale.add_(0.0)  # an in-place op bumps the version even when values stay
    assert key != dynamic._weights_key(mods)
    with torch.inference_mode():
        frozen = [DynamicInt8Linear.from_float(nn.Linear(32, 4))]
    assert None in dynamic._weights_key(frozen)  # inference tensors: identity and storage only
