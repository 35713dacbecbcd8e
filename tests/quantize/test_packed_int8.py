"""Sub-8-bit weights of the static int8 modules (QAT W4A8, mixed precision) are stored packed.

Oracles: unpack(pack(c)) == c for every width 2..8; the bit stream equals the nibble layout
at 2/4 bits; a 4-bit artifact is smaller than the 8-bit one by exactly the packed weight
bytes saved (up to the JSON header); save/load restores codes and outputs bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import netslim
from netslim.core.errors import NetslimError
from netslim.models import build_model
from netslim.quantize.int8_modules import Int8Conv2d, Int8Linear
from netslim.quantize.packing import _pack_stream, pack, unpack
from netslim.quantize.ptq import ptq_int8
from netslim.quantize.qat import convert_qat, prepare_qat


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), rows=st.integers(1, 4), octets=st.integers(1, 6), seed=st.integers(0, 999))
def test_stream_pack_roundtrips_every_width(bits, rows, octets, seed):
    cols = 8 * octets  # 8 codes of any width fill `bits` whole bytes
    codes = torch.randint(0, 2**bits, (rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (rows, octets * bits) and packed.dtype == torch.uint8
    assert torch.equal(unpack(packed, bits), codes)


def test_stream_layout_is_the_weight_only_layout_at_2_and_4_bits():
    g = torch.Generator().manual_seed(0)
    for bits in (2, 4):
        codes = torch.randint(0, 2**bits, (3, 16), generator=g, dtype=torch.uint8)
        assert torch.equal(_pack_stream(codes, bits), pack(codes, bits))
    # 3 bits straddle bytes, low bits first: codes 1..8 -> stream 001 010 011 100 101 110 111 000 (LSB first)
    assert pack(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8), 3).tolist() == [[0xD1, 0x58, 0x1F]]
    with pytest.raises(NetslimError, match="multiple of 8"):
        pack(torch.zeros(1, 5, dtype=torch.uint8), 3)
    with pytest.raises(NetslimError, match="one of 2, 3, 4"):
        pack(torch.zeros(1, 8, dtype=torch.uint8), 9)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7])
def test_module_stores_packed_codes_and_restores_them(bits):
    conv = Int8Conv2d(3, 5, [3, 3], [1, 1], [1, 1], [1, 1], weight_bits=bits)  # 135 weights: needs padding
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = torch.randint(lo, hi + 1, (5, 3, 3, 3), generator=torch.Generator().manual_seed(bits), dtype=torch.int8)
    conv.set_quantized(codes, torch.rand(5) + 0.1, torch.zeros(5), (0.1, 128.0, 0.1, 0.0))
    assert not hasattr(conv, "weight_int8")
    assert conv.weight_packed.numel() == -(-135 // 8) * bits  # bits/8 bytes per weight (+ padding to 8 codes)
    assert torch.equal(conv.int_weight(), codes)
    with pytest.raises(NetslimError, match=rf"\[{lo}, {hi}\]"):
        conv.set_quantized(
            torch.full((5, 3, 3, 3), hi + 1, dtype=torch.int8), torch.ones(5), torch.zeros(5), (0.1, 128.0, 0.1, 0.0)
        )
    with pytest.raises(NetslimError, match="weight_bits"):
        Int8Linear(4, 4, weight_bits=1)


def _sizes(model, tmp_path, name):
    path = netslim.save(model, tmp_path / f"{name}.safetensors")
    return path, path.stat().st_size


def test_qat_w4_artifact_is_packed_and_roundtrips_exactly(fmnist_small, tmp_path):
    torch.manual_seed(0)
    fp32 = build_model("lenet5").eval()
    calib = fmnist_small.calibration_inputs(64)
    int8 = ptq_int8(copy.deepcopy(fp32), calib)
    w4 = convert_qat(prepare_qat(copy.deepcopy(fp32), calib, weight_bits=4), calib)
    _, size8 = _sizes(int8, tmp_path, "int8")
    path4, size4 = _sizes(w4, tmp_path, "w4")
    layers = [m for m in w4.modules() if isinstance(m, (Int8Conv2d, Int8Linear))]
    assert layers and all(m.weight_bits == 4 and hasattr(m, "weight_packed") for m in layers)
    saved = sum(m.weight_numel - m.weight_packed.numel() for m in layers)  # int8 bytes - packed bytes
    assert saved > 0.49 * sum(m.weight_numel for m in layers)
    # the 4-bit file is the int8 file minus half the weight bytes (headers differ by < 1 KB)
    assert abs((size8 - size4) - saved) < 1024, (size8, size4, saved)
    loaded = netslim.load(path4)
    for a, b in zip(layers, [m for m in loaded.modules() if isinstance(m, (Int8Conv2d, Int8Linear))]):
        assert torch.equal(a.weight_packed, b.weight_packed) and torch.equal(a.int_weight(), b.int_weight())
        assert torch.equal(a.weight_scale, b.weight_scale) and torch.equal(a.act_qparams, b.act_qparams)
    x = fmnist_small.example_inputs(32)
    assert torch.equal(loaded(x), w4(x))


def test_mixed_widths_ptq_roundtrips_and_shrinks_with_bits(fmnist_small, tmp_path):
    torch.manual_seed(0)
    fp32 = build_model("lenet5").eval()
    calib = fmnist_small.calibration_inputs(64)
    widths = {"conv1": 6, "conv2": 3, "fc1": 5, "fc2": 8}
    q = ptq_int8(copy.deepcopy(fp32), calib, weight_bits=widths)
    assert {n: m.weight_bits for n, m in q.named_modules() if hasattr(m, "weight_bits")} == widths
    path, size = _sizes(q, tmp_path, "mixed")
    _, size8 = _sizes(ptq_int8(copy.deepcopy(fp32), calib), tmp_path, "int8")
    mods = dict(q.named_modules())
    saved = sum(mods[n].weight_numel - mods[n].weight_packed.numel() for n, b in widths.items() if b < 8)
    assert abs((size8 - size) - saved) < 1024
    loaded = netslim.load(path)
    x = fmnist_small.example_inputs(16)
    assert torch.equal(loaded(x), q(x))
    lmods = dict(loaded.named_modules())
    assert all(torch.equal(mods[n].int_weight(), lmods[n].int_weight()) for n in widths)
