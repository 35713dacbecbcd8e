"""compressed-tensors <-> netslim, both ways: packing and dequantization against the
compressed-tensors package itself (the oracle), export -> open_model round trips (same codes,
scales, zeros; same logits), a checkpoint written by compressed-tensors' own compressor, and
one clear line for every scheme netslim cannot hold exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")

from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme  # noqa: E402

import netslim  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.export.compressed import ct_pack, ct_unpack, module_tensors, quantization_config, scheme_of  # noqa: E402
from netslim.export.hf import save_hf  # noqa: E402
from netslim.models.sources import open_model  # noqa: E402
from netslim.quantize.dynamic import DynamicInt8Linear, dynamic_int8  # noqa: E402
from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear, quantize_weights  # noqa: E402

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


def _llama(hidden=64, dtype=torch.float32):
    cfg = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=256, eos_token_id=256
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    return transformers.BertModel(cfg).eval()


def _out(model):
    with torch.no_grad():
        o = model(input_ids=IDS, attention_mask=torch.ones_like(IDS))
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


# ----------------------------------------------------------------- packing (oracle: the package)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("cols", [8, 37, 64, 96])
def test_ct_pack_is_compressed_tensors_pack_to_int32(bits, cols):
    g = torch.Generator().manual_seed(bits * 100 + cols)
    codes = torch.randint(0, 2**bits, (5, cols), generator=g, dtype=torch.uint8)
    signed = (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
    ours = ct_pack(codes, bits)
    assert torch.equal(ours, pack_to_int32(signed, bits))
    assert torch.equal(ct_unpack(ours, bits, cols=cols), codes)
    assert torch.equal(unpack_from_int32(ours, bits, torch.Size([5, cols])), signed)
    # zero points (rows, groups) are packed along dim 0
    zp, zp_signed = codes.t(), signed.t().contiguous()
    assert torch.equal(ct_pack(zp.t(), bits).t(), pack_to_int32(zp_signed, bits, packed_dim=0))


# ------------------------------------------------------ dequantization (oracle: the package)
@pytest.mark.parametrize(
    "bits,group,symmetric",
    [(4, 32, True), (4, 32, False), (4, None, False), (8, None, True), (8, 16, False), (2, 32, False)],
)
def test_packed_layer_decodes_in_compressed_tensors_to_netslims_weight(bits, group, symmetric):
    torch.manual_seed(bits)
    lin = nn.Linear(64, 24)
    q = QuantizedLinear.from_float(lin, bits=bits, group_size=group, symmetric=symmetric)
    s = scheme_of(q, "layer")
    assert s.symmetric == symmetric
    scheme = QuantizationScheme.model_validate(s.to_json(["layer"]))
    state = {k: v for k, v in module_tensors(q, s).items() if k != "bias"}
    compressor = BaseCompressor.get_value_from_registry(s.format)
    # fp32 scales (what transformers' default path allocates for an fp32 model): exact
    w32 = compressor.decompress({**state, "weight_scale": state["weight_scale"].float()}, scheme)["weight"]
    assert torch.equal(w32, q.dequantize_weight(torch.float32))
    # the stored fp16 scales as they are: one fp16 rounding of each product
    w16 = compressor.decompress(state, scheme)["weight"]
    n_groups = q.scales.shape[1]
    codes = q.codes().to(torch.float16).view(24, n_groups, 64 // n_groups)  # fp16 arithmetic, as transformers'
    assert torch.equal(w16, ((codes - q.zeros.unsqueeze(-1)) * q.scales.unsqueeze(-1)).reshape(24, 64))


def test_w8a8_layer_decodes_to_netslims_weight():
    torch.manual_seed(0)
    m = DynamicInt8Linear.from_float(nn.Linear(32, 8))
    s = scheme_of(m, "layer")
    scheme = QuantizationScheme.model_validate(s.to_json(["layer"]))
    state = {k: v for k, v in module_tensors(m, s).items() if k != "bias"}
    w = BaseCompressor.get_value_from_registry(s.format).decompress(state, scheme)["weight"]
    assert s.format == "int-quantized" and torch.equal(w, m.dequantize_weight())


def test_quantization_config_is_valid_for_compressed_tensors_and_transformers():
    torch.manual_seed(0)
    a = QuantizedLinear.from_float(nn.Linear(64, 8), bits=4, group_size=32)
    b = QuantizedLinear.from_float(nn.Linear(64, 8), bits=8, group_size=None, symmetric=True)
    groups = {scheme_of(a, "a"): ["a"], scheme_of(b, "b"): ["b"]}
    cfg = quantization_config(groups, dequantize=True)
    parsed = QuantizationConfig.model_validate(cfg)
    assert parsed.format == "pack-quantized" and len(parsed.config_groups) == 2
    hf_cfg = transformers.CompressedTensorsConfig.from_dict(json.loads(json.dumps(cfg)))
    assert hf_cfg.dequantize and hf_cfg.is_quantization_compressed


# ------------------------------------------------------------------ export -> open_model
def _quantize(model, **kw):
    return quantize_weights(model, **kw)


CASES = {
    "llama_int4_g32_asym": lambda: _quantize(_llama(), bits=4, group_size=32),
    "llama_int4_channel_sym": lambda: _quantize(_llama(), bits=4, group_size=None, symmetric=True),
    "llama_int8_g32_mixed_emb": lambda: _quantize(
        _quantize(_llama(), bits=4, group_size=32, symmetric=True), bits=8, group_size=None, embeddings=True
    ),
    "gpt2_int8_tied_emb": lambda: _quantize(_gpt2(), bits=8, group_size=None, embeddings=True),
    "bert_w8a8": lambda: dynamic_int8(_bert(), activations="per_tensor"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_then_open_model_gives_the_same_layers_and_logits(case, tmp_path):
    model = CASES[case]()
    ref = _out(model)
    path = save_hf(model, tmp_path / "hf")
    back = open_model(str(path)).model
    mods = dict(back.named_modules())
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, (QuantizedLinear, QuantizedEmbedding, DynamicInt8Linear)):
            got = mods[name]
            if case == "llama_int8_g32_mixed_emb" and isinstance(m, QuantizedEmbedding):
                # a second scheme under dequantize-on-load is written as exact float weights (hf.py)
                assert type(got) is nn.Embedding and torch.equal(got.weight, m.dequantize_weight(torch.float32))
                continue
            assert type(got) is type(m), name
            for k, v in m.state_dict().items():
                assert torch.equal(got.state_dict()[k], v), f"{name}.{k}"
            n += 1
    assert n > 0
    assert torch.equal(_out(back), ref)
    # further steps run on it: netslim's own artifact of what was read reloads with the same outputs
    assert torch.equal(_out(netslim.load(netslim.save(back, tmp_path / "back.safetensors"))), ref)
    if case == "gpt2_int8_tied_emb":  # written once; the head holds the embedding's codes
        assert torch.equal(back.lm_head.weight_packed, back.transformer.wte.weight_packed)
    # exported again from what was read: the same files
    again = save_hf(back, tmp_path / "hf2")
    from safetensors.torch import load_file

    a, b = load_file(path / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_written_by_compressed_tensors_opens_as_netslim_layers(tmp_path):
    """What llm-compressor does to save W4A16 (bf16 model, scales bf16): apply the config,
    set min-max scales, compress, save_pretrained, update_config."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config
    from compressed_tensors.quantization.utils import calculate_qparams

    model = _llama(dtype=torch.bfloat16)
    qcfg = QuantizationConfig.model_validate(
        {
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32},
                }
            },
            "ignore": ["lm_head"],
        }
    )
    apply_quantization_config(model, qcfg)
    for m in model.modules():
        if hasattr(m, "weight_scale"):
            g = m.weight.detach().reshape(m.weight.shape[0], -1, 32)
            scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), m.quantization_scheme.weights)
            m.weight_scale.data.copy_(scale)
            m.weight_zero_point.data.copy_(zp)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(tmp_path / "ct")
    compressor.update_config(str(tmp_path / "ct"))

    ours = open_model(str(tmp_path / "ct")).model
    assert isinstance(ours.model.layers[0].self_attn.q_proj, QuantizedLinear)
    assert isinstance(ours.lm_head, nn.Linear) and not isinstance(ours.lm_head, QuantizedLinear)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32).eval()
    torch.testing.assert_close(_out(ours), _out(theirs), atol=1e-6, rtol=1e-6)


# -------------------------------------------------------------------------- refusals
def _exported(tmp_path, **kw):
    return save_hf(_quantize(_llama(), **kw), tmp_path / "hf")


def _edit(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg["quantization_config"])
    (path / "config.json").write_text(json.dumps(cfg))


def _group0(q):
    return next(iter(q["config_groups"].values()))


REFUSED = {
    "fp8": (lambda q: _group0(q)["weights"].update(type="float", num_bits=8), "float"),
    "nvfp4": (
        lambda q: q.update(format="nvfp4-pack-quantized") or _group0(q).update(format=None),
        "nvfp4-pack-quantized",
    ),
    "block": (
        lambda q: _group0(q)["weights"].update(strategy="block", block_structure=[16, 16], group_size=None),
        "strategy",
    ),
    "per_token_acts": (
        lambda q: _group0(q).update(
            input_activations={"num_bits": 8, "type": "int", "dynamic": True, "strategy": "token", "symmetric": True}
        ),
        "input activations",
    ),
    "sparsity": (lambda q: q.update(sparsity_config={"format": "sparse-bitmask"}), "sparsity_config"),
    "actorder_group": (lambda q: _group0(q)["weights"].update(actorder="group"), "actorder"),
    "redos_target": (lambda q: _group0(q).update(targets=["re:(a+)+$"]), "pattern"),
    "not_compressed": (lambda q: q.update(quantization_status="frozen"), "quantization_status"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_schemes_netslim_cannot_hold_are_one_clear_line(case, tmp_path):
    path = _exported(tmp_path, bits=4, group_size=32, symmetric=True)
    edit, word = REFUSED[case]
    _edit(path, edit)
    with pytest.raises(NetslimError, match=word) as e:
        open_model(str(path))
    assert "\n" not in str(e.value)


def test_scales_fp16_cannot_hold_load_as_exact_float_weights(tmp_path, caplog):
    """llm-compressor keeps an fp32 model's scales in fp32: such a layer opens as a float Linear
    holding (q - zero) * scale in fp32, with a warning; the other layers stay packed."""
    model = _quantize(_llama(), bits=4, group_size=32, symmetric=True)
    path = save_hf(model, tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    t = load_file(path / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight_scale"
    t[key] = t[key].float() * (1 + 1e-6)  # fp32 values between fp16 ones
    save_file(t, path / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level("WARNING"):
        opened = open_model(str(path)).model
    layer = opened.model.layers[0].mlp.up_proj
    assert type(layer) is torch.nn.Linear and "not fp16 values" in caplog.text
    src = model.model.layers[0].mlp.up_proj
    want = src.dequantize_weight(torch.float32).view(src.out_features, -1, 32)
    scale = t[key].view(src.out_features, -1, 1)
    want = (want / src.scales.float().unsqueeze(-1) * scale).reshape(src.out_features, -1)  # same codes, new scales
    torch.testing.assert_close(layer.weight, want, rtol=1e-6, atol=1e-7)
    assert isinstance(opened.model.layers[0].mlp.down_proj, QuantizedLinear)


def test_damaged_tensors_are_one_clear_line(tmp_path):
    path = _exported(tmp_path, bits=4, group_size=32)
    from safetensors.torch import load_file, save_file

    t = load_file(path / "model.safetensors")
    t["model.layers.1.mlp.down_proj.weight_packed"] = t["model.layers.1.mlp.down_proj.weight_packed"][:, :-1].clone()
    del t["model.layers.0.self_attn.o_proj.weight_zero_point"]
    save_file(t, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NetslimError, match="(weight_packed|weight_zero_point)"):
        open_model(str(path))


def test_a_sharded_directory_opens_and_shard_names_stay_inside_it(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _quantize(_llama(), bits=4, group_size=32)
    path = save_hf(model, tmp_path / "hf")
    t = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    keys = sorted(t)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: t[k] for k in ks}, path / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(_out(open_model(str(path)).model), _out(model))
    index["weight_map"][keys[0]] = "../elsewhere.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(NetslimError, match="not a file in the directory"):
        open_model(str(path))


def test_cli_says_one_line_and_exits_2(tmp_path):
    path = _exported(tmp_path, bits=4, group_size=32, symmetric=True)
    _edit(path, REFUSED["fp8"][0])
    proc = subprocess.run(
        [sys.executable, "-m", "netslim.cli", "inspect", str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "compressed-tensors" in lines[0]
