"""GGUF import (``--model file.gguf``): files as llama.cpp's tools write them (tensors quantized with
gguf.quants, the bit-exact port of ggml's reference quantizers) read back to the weights the file
holds — Q4_0 / Q8_0 as netslim packed layers with the file's codes — and damaged or unsupported
files refused with one NetslimError line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from gguf_models import bpe_tokenizer_dir, ref_dequantize, tiny_lm  # noqa: E402

import netslim  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.export.gguf import export_gguf  # noqa: E402
from netslim.models.gguf_io import load_gguf_model, read_gguf, unpermute_rotary  # noqa: E402
from netslim.models.hf_tokenizers import load_tokenizer  # noqa: E402
from netslim.models.sources import open_model  # noqa: E402
from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear  # noqa: E402

T = gguf.GGMLQuantizationType
IDS = torch.tensor([[5, 17, 200, 33, 90, 1, 250, 64, 12, 7, 140, 99]])


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory):
    """A tiny Llama (GQA) written F32 by netslim: the source the tests re-encode."""
    d = tmp_path_factory.mktemp("src")
    model = tiny_lm("llama", bpe_tokenizer_dir(d / "tok"), intermediate=256)
    path, _ = export_gguf(model, d / "f32.gguf", dtype="f32")
    return path


def rewrite(src, dst, kind=None, *, arch=None, drop=(), meta=None, raw=None):
    """Copy GGUF ``src`` to ``dst``: every 2-D weight re-encoded as ``kind`` with gguf.quants (what
    llama-quantize writes), metadata overridden by ``meta``, tensors in ``drop`` left out, tensors in
    ``raw`` (name -> (bytes array, type)) replaced as given."""
    reader = gguf.GGUFReader(str(src))
    arch = arch or reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = (meta or {}).get(key, f.contents())
        w.add_key_value(
            key.replace(reader.fields["general.architecture"].contents() + ".", arch + ".", 1),
            value,
            f.types[0],
            sub_type=f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None,
        )
    for t in reader.tensors:
        if t.name in drop:
            continue
        data = np.array(t.data, dtype=np.float32)
        if t.name in (raw or {}):
            w.add_tensor(t.name, raw[t.name][0], raw_dtype=raw[t.name][1])
        elif kind is not None and data.ndim == 2:
            w.add_tensor(t.name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _q4_1(raw, shape):
    """ggml's dequantize_row_q4_1 written out: x = d * q + m, nibbles as Q4_0."""
    b = np.asarray(raw, dtype=np.uint8).reshape(-1, 20)
    d, m = (b[:, 0:2].copy().view(np.float16).astype(np.float32), b[:, 2:4].copy().view(np.float16).astype(np.float32))
    q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (q * d + m).reshape(shape)


def _file_weights(path, model):
    """{HF key: weight the file holds (oracle-dequantized, HF row order)}."""
    reader = gguf.GGUFReader(str(path))
    heads = {"attn_q": model.config.num_attention_heads, "attn_k": model.config.num_key_value_heads}
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        if len(shape) != 2:
            continue
        kind = t.tensor_type.name
        w = (
            _q4_1(t.data, shape)
            if kind == "Q4_1"
            else gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
            if kind == "BF16"
            else ref_dequantize(kind, t.data, shape)
        )
        w = torch.from_numpy(np.ascontiguousarray(w))
        part = t.name.split(".")
        if len(part) == 4 and part[2] in heads:
            w = unpermute_rotary(w, heads[part[2]])
        out[t.name] = w
    return out


def _weight(mod):
    return mod.dequantize_weight() if hasattr(mod, "dequantize_weight") else mod.weight.detach()


@pytest.mark.parametrize("kind", [T.Q4_0, T.Q8_0, T.Q4_1, T.F16, T.BF16], ids=lambda t: t.name)
def test_llama_cpp_files_read_back_to_the_weights_they_hold(kind, f32_file, tmp_path):
    path = rewrite(f32_file, tmp_path / "m.gguf", kind if kind != T.F16 else None) if kind != T.F16 else None
    if kind == T.F16:
        reader = gguf.GGUFReader(str(f32_file))
        path = rewrite(
            f32_file,
            tmp_path / "m.gguf",
            raw={t.name: (np.array(t.data).astype(np.float16), None) for t in reader.tensors if len(t.shape) == 2},
        )
    model = load_gguf_model(path)
    held = _file_weights(path, model)
    names = {
        "token_embd.weight": model.model.embed_tokens,
        "output.weight": model.lm_head,
        "blk.0.attn_q.weight": model.model.layers[0].self_attn.q_proj,
        "blk.1.attn_k.weight": model.model.layers[1].self_attn.k_proj,
        "blk.1.ffn_down.weight": model.model.layers[1].mlp.down_proj,
    }
    for name, mod in names.items():
        assert torch.equal(_weight(mod), held[name]), name
        packed = kind in (T.Q4_0, T.Q8_0)
        assert isinstance(mod, (QuantizedLinear, QuantizedEmbedding)) == packed, name
        if packed:
            assert mod.bits == (4 if kind == T.Q4_0 else 8) and mod.group_size == 32
    # the packed model computes what a dense model of the same weights computes
    dense = load_gguf_model(path, packed=False)
    assert not any(isinstance(m, QuantizedLinear) for m in dense.modules())
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, dense(IDS).logits)


def test_q4_0_with_llama_cpp_negative_scales_is_exact(f32_file, tmp_path):
    """ggml's Q4_0 quantizer uses d = max / -8: negative scales, code 0 at the extreme; kept exactly."""
    path = rewrite(f32_file, tmp_path / "m.gguf", T.Q4_0)
    model = load_gguf_model(path)
    q = model.model.layers[0].self_attn.q_proj
    assert (q.scales < 0).any() and (q.codes() == 0).any()
    # exporting it again copies the same blocks
    again, notes = export_gguf(model, tmp_path / "again.gguf", dtype="q4_0")
    a, b = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(again))
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name and ta.tensor_type == tb.tensor_type and np.array_equal(ta.data, tb.data), ta.name
    assert notes["exact_layers"] == 16


def test_k_quant_tensors_match_transformers_dequantizer(f32_file, tmp_path):
    from transformers.integrations.gguf.dequant import dequantize

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(64, 210), dtype=np.uint8)  # ffn_down: 64 rows of 256 -> one Q6_K block each
    blocks[:, 208:210] = np.array([0.01], dtype=np.float16).view(np.uint8)  # d: a finite scale
    path = rewrite(f32_file, tmp_path / "k.gguf", raw={"blk.0.ffn_down.weight": (blocks, T.Q6_K)})
    got = read_gguf(path).dense["model.layers.0.mlp.down_proj.weight"]
    want = dequantize(torch.from_numpy(blocks.reshape(-1)), int(T.Q6_K)).reshape(64, 256)
    assert torch.equal(got, want.float())


def test_open_model_gives_the_model_its_tokenizer_and_saves_as_an_artifact(f32_file, tmp_path):
    path = rewrite(f32_file, tmp_path / "m.gguf", T.Q8_0)
    opened = open_model(str(path))
    assert opened.name == "m.gguf" and opened.source == str(path.resolve()) and opened.dataset is None
    tok = load_tokenizer(opened.source)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(f32_file.parent / "tok"))
    text = "class Stack:\n    def push(self, item):"
    assert tok(text)["input_ids"] == hf_tok(text)["input_ids"]
    saved = netslim.save(opened.model, tmp_path / "a.safetensors")
    back = open_model(str(saved))
    assert back.source == opened.source
    with torch.no_grad():
        assert torch.equal(back.model(IDS).logits, opened.model(IDS).logits)


def _tensor(path, name):
    return next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)


def test_damaged_and_unsupported_files_are_one_line_errors(f32_file, tmp_path):
    data = f32_file.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "not a readable GGUF file"),
        "header": (data[:64], "not a readable GGUF file"),
        "magic": (b"GGUX" + data[4:], "not a readable GGUF file .*magic"),
        "empty": (b"", "not a readable GGUF file"),
    }
    for name, (blob, match) in cases.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(blob)
        with pytest.raises(NetslimError, match=match):
            open_model(str(p))
    iq = np.zeros((64, 2 * 18), dtype=np.uint8)  # IQ4_NL: a type netslim does not read
    nan = np.array(_tensor(f32_file, "blk.0.attn_v.weight").data, dtype=np.float32)
    nan[3, 5] = np.nan
    made = {
        "arch": (dict(arch="gpt2"), r"GGUF architecture 'gpt2' is not supported; netslim reads 'llama', 'qwen2'"),
        "type": (
            dict(raw={"blk.0.attn_v.weight": (iq, T.IQ4_NL)}),
            "tensor blk.0.attn_v.weight has type IQ4_NL, which netslim does not read; supported: F32, F16",
        ),
        "missing": (dict(drop=("blk.1.ffn_up.weight",)), "tensor blk.1.ffn_up.weight is missing"),
        "shape": (
            dict(meta={"llama.feed_forward_length": 100}),
            r"tensor blk.0.ffn_gate.weight has shape \[256, 64\]; the metadata implies \[100, 64\]",
        ),
        "heads": (
            dict(meta={"llama.attention.head_count": 0}),
            r"'llama.attention.head_count' must be an integer in \[1, 4096\]; got 0",
        ),
        "nan": (dict(raw={"blk.0.attn_v.weight": (nan, None)}), "blk.0.attn_v.weight holds NaN or infinite values"),
    }
    for name, (kw, match) in made.items():
        p = rewrite(f32_file, tmp_path / f"{name}.gguf", **kw)
        with pytest.raises(NetslimError, match=match):
            open_model(str(p))


def test_cli_reads_a_gguf_and_refuses_a_truncated_one(f32_file, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 300)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(f32_file.read_bytes()[:5000])
    env = {**os.environ, "NETSLIM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "netslim.cli", "eval"]
    proc = subprocess.run(run + [str(bad), "--data", str(text)], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "not a readable GGUF file" in lines[0], proc.stderr
    good = rewrite(f32_file, tmp_path / "q8.gguf", T.Q8_0)
    proc = subprocess.run(
        run + [str(good), "--data", str(text), "--limit", "4"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0 and "perplexity=" in proc.stdout, proc.stderr
