"""Packed weight-only int8/int4/int2: packing, module oracle, HQQ, save/load and file size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.quantize.packing import dequantize_groups, pack, quantize_groups, unpack
from netslim.quantize.weight_only import QuantizedLinear, WeightOnlyConfig, quantize_weights


@settings(max_examples=50, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), rows=st.integers(1, 5), nbytes=st.integers(1, 12), seed=st.integers(0, 999))
def test_pack_roundtrips(bits, rows, nbytes, seed):
    cols = nbytes * 8 // bits
    codes = torch.randint(0, 2**bits, (rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, nbytes)
    assert torch.equal(unpack(packed, bits), codes)


def test_int4_packs_two_per_byte_low_nibble_first():
    assert pack(torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8), 4).tolist() == [[0x21, 0x0F]]


@pytest.mark.parametrize("bits,group", [(8, 64), (4, 32), (4, 128), (4, None), (2, 64)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_error_at_most_half_a_step(bits, group, symmetric):
    torch.manual_seed(0)
    w = torch.randn(8, 256)
    codes, scale, zero = quantize_groups(w, bits, group, symmetric=symmetric)
    deq = dequantize_groups(codes, scale, zero)
    g = group or 256
    step = scale.float().repeat_interleave(g, dim=1)
    # symmetric clips the top code by half a step too; fp16 scale rounding adds a hair
    assert ((deq - w).abs() <= step * 0.5 * (1 + 2e-3) + 1e-6).all()


def test_module_equals_dequantized_reference():
    torch.manual_seed(0)
    lin = nn.Linear(128, 48)
    q = QuantizedLinear.from_float(lin, bits=4, group_size=64)
    x = torch.randn(5, 7, 128)
    ref = x @ q.dequantize_weight().T + lin.bias
    assert torch.allclose(q(x), ref, atol=1e-6)
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.15  # int4 g64 on a random layer


def test_from_codes_is_the_shared_entry_point():
    codes = torch.randint(0, 16, (4, 64), dtype=torch.uint8)
    scale = torch.rand(4, 2) + 0.1
    zero = torch.full((4, 2), 7.5)
    m = QuantizedLinear.from_codes(codes, scale, zero, bits=4, group_size=32)
    assert torch.equal(m.codes(), codes)
    ref = (codes.float().reshape(4, 2, 32) - 7.5) * scale.half().float()[..., None]
    assert torch.allclose(m.dequantize_weight(), ref.reshape(4, 64))
    with pytest.raises(NetslimError, match=r"codes must lie in \[0, 15\]"):
        QuantizedLinear.from_codes(codes + 16, scale, zero, bits=4, group_size=32)


def test_hqq_beats_rtn_on_heavy_tailed_weights():
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample((64, 256))
    errs = {}
    for method in ("rtn", "hqq"):
        c, s, z = quantize_groups(w, 4, 64, method=method)
        errs[method] = float((dequantize_groups(c, s, z) - w).abs().mean())
    assert errs["hqq"] < errs["rtn"] * 0.97


def test_bad_bits_and_group_rejected():
    with pytest.raises(NetslimError, match="one of 2, 4, 8"):
        QuantizedLinear(64, 8, bits=3)
    with pytest.raises(NetslimError, match=r"divisor of in_features=48 \(16\)"):
        QuantizedLinear(48, 8, bits=4, group_size=32)
    with pytest.raises(NetslimError, match="power of two"):
        make_config({"method": "weight_only", "group_size": 48})
    with pytest.raises(NetslimError, match="bits"):
        make_config({"method": "weight_only", "bits": 5})


@pytest.mark.parametrize("bits", [4, 8])
def test_save_load_exact_and_file_shrinks(tiny_mlp, tmp_path, bits):
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    fp32 = netslim.save(tiny_mlp, tmp_path / "fp32.safetensors").stat().st_size
    ctx = StepContext(task=None, out_dir=tmp_path)
    # lenet300: fc1 has 784 = 16 * 49 inputs; fc2 (300) and fc3 (100) are not multiples of 16.
    model = apply(tiny_mlp, WeightOnlyConfig(bits=bits, group_size=16, rounding="hqq"), ctx)
    assert [s["name"] for s in ctx.skipped] == ["fc2", "fc3"]
    model = apply(model, WeightOnlyConfig(bits=bits, group_size=None, include=["fc2", "fc3"]), ctx)
    assert isinstance(model.fc1, QuantizedLinear)
    y = model(x)
    path = netslim.save(model, tmp_path / "q.safetensors")
    loaded = netslim.load(path)
    assert torch.equal(loaded(x), y)
    size = path.stat().st_size
    # fc1 (g16: +2 bits of fp16 scale+zero per weight) is 88% of the weights
    assert size < fp32 * (bits + 2 + 0.5) / 32


def test_embedding_and_per_channel(tmp_path):
    emb = nn.Embedding(100, 64)
    from netslim.quantize.weight_only import QuantizedEmbedding

    q = QuantizedEmbedding.from_float(emb, bits=4, group_size=None)
    ids = torch.tensor([[1, 5, 99], [0, 0, 3]])
    ref = q.dequantize_weight()[ids]
    assert torch.equal(q(ids), ref)
    assert (q(ids) - emb(ids)).abs().max() < 0.5


def test_tiny_llama_int4_with_embeddings_roundtrips(tmp_path):
    pytest.importorskip("transformers")
    from netslim.models import build_model, model_names

    if "tiny-llama" not in model_names():  # until netslim.models registers the HF names itself
        from netslim.models.hf import register_hf_models

        register_hf_models()
    model = build_model("tiny-llama").eval()
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        q = quantize_weights(model, bits=4, group_size=32, rounding="hqq", embeddings=True)
        out = q(input_ids=ids).logits
    assert sum(isinstance(m, QuantizedLinear) for m in q.modules()) >= 7
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.95
    path = netslim.save(q, tmp_path / "llama.safetensors")
    with torch.no_grad():
        assert torch.equal(netslim.load(path)(input_ids=ids).logits, out)


def test_second_weight_only_step_converts_only_float_layers():
    # int8 embeddings after int4 Linears (GPTQ's blocks, then the tied table): the packed
    # Linear is left bit-identical, and a recipe may chain the two steps.
    from netslim.quantize.weight_only import QuantizedEmbedding
    from netslim.recipe import parse_recipe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 64))
    quantize_weights(model, bits=4, group_size=32)
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    table = model[0].weight.detach().clone()
    quantize_weights(model, bits=8, group_size=None, embeddings=True)
    assert isinstance(model[0], QuantizedEmbedding) and isinstance(model[1], QuantizedLinear)
    assert all(torch.equal(before[k], v) for k, v in model[1].state_dict().items())
    ids = torch.arange(50)
    step = table.abs().amax(dim=1, keepdim=True) / 127
    assert ((model[0](ids) - table).abs() <= step / 2 + 1e-6).all()
    steps = [
        {"method": "weight_only", "bits": 4, "group_size": 32},
        {"method": "weight_only", "bits": 8, "group_size": None, "embeddings": True},
    ]
    assert len(parse_recipe({"name": "r", "steps": steps}).steps) == 2
    with pytest.raises(NetslimError, match="changes weights after 'weight_only' froze them"):
        parse_recipe({"name": "r", "steps": [steps[0], {"method": "finetune", "epochs": 1}]})
