"""format: hf: the directory loads in plain transformers - in a subprocess that never imports
netslim - with netslim's own logits: exactly for dense, structured, sparse and symmetric
quantized models; for layers transformers decodes at load time (asymmetric zero points,
quantized embeddings) equal to netslim's weights with each product rounded once to fp16, the
arithmetic transformers uses there (an exact oracle, not a tolerance). One test per refusal;
nothing is ever half-written."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from netslim.core.config import apply  # noqa: E402
from netslim.core.context import StepContext  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.core.surgery import replace_module  # noqa: E402
from netslim.export.hf import export_hf, save_hf  # noqa: E402
from netslim.models.hf_tokenizers import byte_tokenizer  # noqa: E402
from netslim.prune import magnitude_prune, nm_prune  # noqa: E402
from netslim.prune.sparse import SparseLinear  # noqa: E402
from netslim.prune.structured import drop_transformer_blocks, shrink_ffn, shrink_heads  # noqa: E402
from netslim.quantize.dynamic import dynamic_int8  # noqa: E402
from netslim.quantize.gptq import gptq  # noqa: E402
from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear, quantize_weights  # noqa: E402
from netslim.recipe.steps import ExportConfig  # noqa: E402

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------- tiny random-config models
def llama(hidden=64, layers=2, tie=False):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def bert():  # MiniLM-like: a BertModel encoder
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


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=256, eos_token_id=256
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _out(model):
    with torch.no_grad():
        o = model(input_ids=IDS, attention_mask=torch.ones_like(IDS))
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _wo(model, **kw):
    return quantize_weights(model, **kw)


def _structured():
    m = llama(layers=3)
    shrink_ffn(m, 0.25)
    shrink_heads(m, 0.5)
    drop_transformer_blocks(m, 1, indices=[1])
    assert m.config.intermediate_size == 96 and m.config.num_key_value_heads == 1 and m.config.num_hidden_layers == 2
    return m


def _bert_heads():  # 2 of 4 heads per block pruned + FFN: the config cannot hold 2 heads of size 16
    m = bert()
    shrink_heads(m, 0.5)
    shrink_ffn(m, 0.25)
    return m


def _gpt2_ffn():
    m = gpt2()
    shrink_ffn(m, 0.5)
    return m


def _nm_sparse():
    m = llama()
    nm_prune(m, n=2, m=4)
    replace_module(m, "model.layers.0.mlp.up_proj", SparseLinear.from_dense(m.model.layers[0].mlp.up_proj))
    return m


def _gptq():
    m = llama()
    calib = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(2))
    return gptq(m, calib, bits=4, group_size=32, act_order=True, batch_size=8)


# name -> (builder, source of the tokenizer)
CASES = {
    "llama_dense": (llama, "tiny-llama"),
    "llama_structured": (_structured, "tiny-llama"),
    "gpt2_ffn": (_gpt2_ffn, "tiny-gpt2"),
    "bert_unstructured": (lambda: magnitude_prune(bert(), sparsity=0.5), "tiny-bert"),
    "bert_heads": (lambda: _bert_heads(), "tiny-bert"),
    "llama_2of4_csr": (_nm_sparse, "tiny-llama"),
    "llama_int4_g32_sym": (lambda: _wo(llama(), bits=4, group_size=32, symmetric=True), None),
    "llama_int4_g32_asym": (lambda: _wo(llama(), bits=4, group_size=32), None),
    "llama_int4_g128_sym": (lambda: _wo(llama(hidden=128), bits=4, group_size=128, symmetric=True), None),
    "llama_int4_g128_asym": (lambda: _wo(llama(hidden=128), bits=4, group_size=128), None),
    "llama_int4_channel": (lambda: _wo(llama(), bits=4, group_size=None), None),
    "llama_int8_channel_sym": (lambda: _wo(llama(), bits=8, group_size=None, symmetric=True), None),
    "llama_gptq_g32": (_gptq, None),
    "gpt2_int8_tied_embeddings": (lambda: _wo(gpt2(), bits=8, group_size=None, embeddings=True), None),
    "bert_int4_asym": (lambda: _wo(bert(), bits=4, group_size=32), None),
    # gptq_int8emb_smollm2's shape: int4 asym blocks + tied int8 embedding (two schemes, dequantize on load)
    "llama_int4_asym_int8_tied_emb": (
        lambda: _wo(_wo(llama(tie=True), bits=4, group_size=32), bits=8, group_size=None, embeddings=True),
        None,
    ),
    "bert_w8a8": (lambda: dynamic_int8(bert(), activations="per_tensor"), None),
}
EXACT = {
    "llama_dense",
    "llama_structured",
    "gpt2_ffn",
    "bert_unstructured",
    "llama_int4_g32_sym",
    "llama_int4_g128_sym",
    "llama_int8_channel_sym",
}


def fp16_decoded(model: nn.Module, exact: set[str] = frozenset()) -> nn.Module:
    """``model`` with every packed layer replaced by a float one holding fp16((code - zero) * scale):
    the weights transformers computes when it decodes compressed-tensors layers at load time
    (layers in ``exact``: the exporter wrote them as exact float weights, so fp32 values)."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, (QuantizedLinear, QuantizedEmbedding)) and name in exact:
            w = m.dequantize_weight(torch.float32)
            new = (
                nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx)
                if isinstance(m, QuantizedEmbedding)
                else nn.Linear(m.in_features, m.out_features, m.bias is not None)
            )
            if isinstance(new, nn.Linear) and m.bias is not None:
                new.bias = nn.Parameter(m.bias.detach().clone())
            new.weight = nn.Parameter(w)
            replace_module(model, name, new)
        elif isinstance(m, (QuantizedLinear, QuantizedEmbedding)):
            n_groups = m.scales.shape[1]
            c = m.codes().to(torch.float16).view(m.scales.shape[0], n_groups, -1)
            w = ((c - m.zeros.unsqueeze(-1)) * m.scales.unsqueeze(-1)).reshape(c.shape[0], -1).float()
            if isinstance(m, QuantizedEmbedding):
                new = nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx)
            else:
                new = nn.Linear(m.in_features, m.out_features, m.bias is not None)
                if m.bias is not None:
                    new.bias = nn.Parameter(m.bias.detach().clone())
            new.weight = nn.Parameter(w)
            replace_module(model, name, new)
    return model.eval()


LOADER = r"""
import json, sys, torch, transformers
out_file, dirs = sys.argv[1], sys.argv[2:]
assert "netslim" not in sys.modules
ids = torch.load(dirs[0] + "/../ids.pt")
results = {}
for d in dirs:
    arch = json.load(open(d + "/config.json"))["architectures"][0]
    causal = arch.endswith(("ForCausalLM", "LMHeadModel"))
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model, info = auto.from_pretrained(d, output_loading_info=True)
    with torch.no_grad():
        o = model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids))
    out = o.logits if hasattr(o, "logits") else o.last_hidden_state
    missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    entry = {"out": out.float(), "missing": missing, "class": type(model).__name__, "dtype": str(model.dtype)}
    try:
        entry["tokens"] = transformers.AutoTokenizer.from_pretrained(d)("netslim ok")["input_ids"]
    except (OSError, ValueError):
        entry["tokens"] = None
    results[d.rsplit("/", 1)[1]] = entry
assert "netslim" not in sys.modules, "loading imported netslim"
torch.save(results, out_file)
"""


def load_plainly(dirs: list, out_file) -> dict:
    """Load every directory with plain transformers in one fresh interpreter that never imports netslim."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(out_file), *map(str, dirs)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out_file, weights_only=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.save(IDS, root / "ids.pt")
    refs, notes, dirs = {}, {}, []
    for name, (build, source) in CASES.items():
        model = build()
        path, notes[name] = export_hf(model, root / name, {"source": source} if source else None)
        packed = any(isinstance(m, (QuantizedLinear, QuantizedEmbedding)) for m in model.modules())
        exact = set(notes[name].get("dequantized_layers", {}).get("layers", []))
        if "model.embed_tokens" in exact and notes[name].get("tied_embeddings"):
            exact.add("lm_head")  # transformers ties it to the exact embedding
        refs[name] = (_out(model), _out(fp16_decoded(model, exact)) if packed else None)
        dirs.append(path)
    dirs.append(_bitmask_dir(root))
    return refs, notes, load_plainly(dirs, root / "out.pt"), root


@pytest.mark.parametrize("case", sorted(CASES))
def test_plain_transformers_gives_netslims_logits(case, exported):
    refs, notes, loaded, _ = exported
    got = loaded[case]
    assert got["missing"] == [] and got["dtype"] == "torch.float32"
    ref, ref_fp16 = refs[case]
    deq = notes[case].get("quantization", {}).get("dequantize_on_load", False)
    if case in EXACT:
        assert not deq
        assert torch.equal(got["out"], ref)
    elif case == "bert_w8a8":  # activations quantized at run time by both: same grid, fp32 rounding apart
        torch.testing.assert_close(got["out"], ref, atol=1e-4 * float(ref.abs().max()), rtol=0)
    elif deq:
        torch.testing.assert_close(got["out"], ref_fp16, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["out"], ref, atol=2e-3 * float(ref.abs().max()), rtol=0)
    else:  # the CSR kernel sums in another order
        torch.testing.assert_close(got["out"], ref, atol=1e-5, rtol=1e-5)


def test_a_second_scheme_under_dequantize_is_written_as_float(exported):
    _, notes, loaded, _ = exported
    n = notes["llama_int4_asym_int8_tied_emb"]
    assert n["dequantized_layers"]["layers"] == ["model.embed_tokens"]
    assert n["quantization"]["schemes"] == {"int4 g32 asym (pack-quantized)": 15}  # 14 block Linears + lm_head
    assert loaded["llama_int4_asym_int8_tied_emb"]["missing"] == []


def test_tokenizer_and_notes(exported):
    _, notes, loaded, root = exported
    assert loaded["llama_dense"]["tokens"] == byte_tokenizer("causal")("netslim ok")["input_ids"]
    assert loaded["bert_unstructured"]["tokens"] == byte_tokenizer("bert")("netslim ok")["input_ids"]
    assert notes["bert_unstructured"]["sparsity"]["format"] == "dense"
    assert notes["bert_unstructured"]["sparsity"]["layers"] == 13  # 6 Linears per block + the pooler, masked
    assert 0.49 < notes["bert_unstructured"]["sparsity"]["zeros"] < 0.51
    q = notes["llama_int4_g32_asym"]["quantization"]
    assert q["dequantize_on_load"] and q["schemes"] == {"int4 g32 asym (pack-quantized)": 15}
    assert not notes["llama_int4_g32_sym"]["quantization"]["dequantize_on_load"]
    tied = json.loads((root / "gpt2_int8_tied_embeddings" / "config.json").read_text())
    assert tied["tie_word_embeddings"] and notes["gpt2_int8_tied_embeddings"]["tied_embeddings"]
    from safetensors import safe_open

    with safe_open(str(root / "gpt2_int8_tied_embeddings" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("lm_head.") for k in f.keys())  # written once, tied by transformers
    assert "dequantize" not in json.loads((root / "bert_w8a8" / "config.json").read_text())["quantization_config"]


def test_quantized_directory_is_smaller_than_fp32(exported):
    _, _, _, root = exported

    def size(d):
        return sum(f.stat().st_size for f in (root / d).iterdir() if f.name == "model.safetensors")

    assert size("llama_int4_g32_sym") < 0.4 * size("llama_dense")  # the fp32 embedding table is a quarter


# -------------------------------------------------- sparse: dense tensors, and why (measured)
def _bitmask_dir(root):
    """The unstructured BERT written in compressed-tensors' sparse-bitmask layout (values of the
    non-zeros, a packed bit per weight, row offsets), as compressed-tensors <= 0.14 wrote it."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    src, dst = root / "bert_unstructured", root / "bert_bitmask"
    dst.mkdir()
    dense = load_file(src / "model.safetensors")
    out = {}
    for k, t in dense.items():
        if t.dim() == 2 and k.endswith(".weight") and "embeddings" not in k:
            base = k[: -len("weight")]
            nz = t != 0
            out[base + "compressed"] = t[nz]
            out[base + "bitmask"] = torch.from_numpy(np.packbits(nz.numpy(), axis=1, bitorder="little"))
            out[base + "shape"] = torch.tensor(t.shape)
            out[base + "row_offsets"] = torch.cumsum(nz.sum(1), 0) - nz.sum(1)
        else:
            out[k] = t
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "sparse-bitmask",
        "config_groups": None,
        "sparsity_config": {
            "format": "sparse-bitmask",
            "global_sparsity": 0.5,
            "sparsity_structure": "unstructured",
            "targets": ["Linear"],
        },
    }
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_sparse_bitmask_is_smaller_but_does_not_load_so_dense_is_written(exported):
    _, notes, loaded, root = exported
    dense = (root / "bert_unstructured" / "model.safetensors").stat().st_size
    bitmask = (root / "bert_bitmask" / "model.safetensors").stat().st_size
    assert bitmask < 0.8 * dense  # what the sparse format would save at 50 % ...
    assert loaded["bert_bitmask"]["missing"]  # ... but transformers 5 + compressed-tensors 0.20 leave them random
    assert loaded["bert_unstructured"]["missing"] == []
    assert "no longer load" in notes["bert_unstructured"]["sparsity"]["why"]


# ------------------------------------------------------------------------------ refusals
def _refused(model, tmp_path, word, info=None):
    target = tmp_path / "out" / "hf"
    with pytest.raises(NetslimError, match=word) as e:
        save_hf(model, target, info=info)
    assert "\n" not in str(e.value)
    assert not target.exists() and (not target.parent.exists() or not any(target.parent.iterdir()))
    return str(e.value)


def test_refuses_a_model_that_is_not_a_transformers_model(tmp_path):
    from netslim.models import build_model

    _refused(build_model("lenet300"), tmp_path, "format: safetensors")
    _refused(nn.Sequential(nn.Linear(4, 4)), tmp_path, "format: safetensors")


def test_refuses_weight_shared_layers(tmp_path):
    from netslim.codec.modules import SharedLinear

    m = llama()
    replace_module(m, "model.layers.0.mlp.up_proj", SharedLinear(64, 128, bias=False, num_clusters=16))
    _refused(m, tmp_path, "format: nsz")


def test_refuses_hqq_zero_points(tmp_path):
    _refused(_wo(llama(), bits=4, group_size=32, rounding="hqq"), tmp_path, "HQQ")


def test_refuses_per_token_dynamic_int8(tmp_path):
    _refused(dynamic_int8(bert(), activations="per_token"), tmp_path, "per_tensor")


def test_pruned_bert_heads_are_written_as_zero_heads(exported):
    refs, notes, loaded, _ = exported
    assert notes["bert_heads"]["pruned_heads"]["heads_kept"] == {"encoder.layer.0": 2, "encoder.layer.1": 2}
    assert "bert_heads" not in EXACT  # the output projection's GEMM runs over more (zero) columns
    torch.testing.assert_close(loaded["bert_heads"]["out"], refs["bert_heads"][0], atol=1e-5, rtol=1e-5)


def test_refuses_pruned_gpt2_heads_the_config_cannot_express(tmp_path):
    m = gpt2()
    shrink_heads(m, 0.5)
    _refused(m, tmp_path, "netslim.load")


def test_refuses_ffn_sizes_that_differ_per_block(tmp_path):
    m = llama()
    shrink_ffn(m, 0.5, criterion="random", scope="global", min_keep_ratio=0.1)
    sizes = {blk.mlp.up_proj.out_features for blk in m.model.layers}
    assert len(sizes) > 1
    _refused(m, tmp_path, "cannot express")


def test_refuses_quantized_gpt2_conv1d(tmp_path):
    m = gpt2()
    calib = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(2))
    gptq(m, calib, bits=4, group_size=32, batch_size=8)
    _refused(m, tmp_path, "Conv1D")


def test_refuses_a_block_part_transformers_does_not_build(tmp_path):
    m = llama()
    replace_module(m, "model.layers.1.mlp", nn.Identity())
    _refused(m, tmp_path, "Identity")


def test_refuses_w8a8_beside_asymmetric_weight_only(tmp_path):
    m = dynamic_int8(llama(), include=["model.layers.1.*"])  # weight_only may follow it (float layers only)
    m = _wo(m, bits=4, group_size=32, include=["model.layers.0.*"])
    _refused(m, tmp_path, "W8A8")


def test_refuses_a_file_where_the_directory_goes(tmp_path):
    (tmp_path / "hf").write_text("x")
    with pytest.raises(NetslimError, match="is a file"):
        save_hf(llama(), tmp_path / "hf")


# ----------------------------------------------------------------- atomic, recipe step
def test_a_failed_write_leaves_nothing_and_keeps_the_previous_export(tmp_path, monkeypatch):
    import netslim.export.hf as hf

    target = save_hf(llama(), tmp_path / "hf")
    before = (target / "model.safetensors").read_bytes()

    def broken(tmp, plan):
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hf, "_fill", broken)
    with pytest.raises(OSError):
        save_hf(_wo(llama(), bits=4, group_size=32), target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left
    monkeypatch.undo()
    save_hf(_wo(llama(), bits=4, group_size=32), target)  # replaces the previous export
    assert "quantization_config" in json.loads((target / "config.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_export_step_writes_the_directory_and_its_size(tmp_path):
    ctx = StepContext(task=None, out_dir=tmp_path, info={"source": "tiny-llama"})
    apply(_wo(llama(), bits=4, group_size=32), ExportConfig(format="hf", filename="m"), ctx)
    notes = ctx.notes["export"]
    path = tmp_path / "m"
    assert ctx.artifacts == [path] and notes["path"] == str(path) and path.is_dir()
    assert notes["size_bytes"] == sum(f.stat().st_size for f in path.iterdir())
    assert notes["quantization"]["layers"] == 15 and (path / "tokenizer.json").is_file()
