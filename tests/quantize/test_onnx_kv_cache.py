"""ONNX export of a causal LM's decoder step with a KV cache (issue 25: ONNX Runtime decoding).

Oracle: the PyTorch model decoding greedily with its own ``DynamicCache``. The graph is fed the
same tokens (teacher forcing) so that the logits of the prefill and of every cached step compare;
bound: the stated float tolerance of netslim.quantize.onnx_runtime (max |diff| <= 1e-3 x max
|PyTorch logits|); greedy tokens must be identical. ORT's dynamic int8 of the graph: MatMulInteger
kernels, the greedy tokens of a random tiny model mostly kept (its logits lie close together).
"""

from __future__ import annotations

import copy

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

import netslim  # noqa: E402
from netslim.core.config import make_config  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.models.hf_tiny import TINY_VOCAB, tiny_decoder  # noqa: E402
from netslim.models.onnx_model import OnnxModel  # noqa: E402
from netslim.quantize import dynamic_int8, export_onnx  # noqa: E402
from netslim.quantize.onnx_export import write_onnx  # noqa: E402
from netslim.quantize.onnx_runtime import (  # noqa: E402
    OrtDecoder,
    check_decoder,
    ort_dynamic_int8,
    torch_greedy,
)

REL = 1e-3
STEPS = 4  # cached steps after the prefill


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


def _llama_mha_tied() -> torch.nn.Module:
    """A tiny Llama without GQA (4 KV heads) and with a tied LM head, as SmolLM2 ties it."""
    return tiny_decoder(
        "Llama", 1, num_hidden_layers=3, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True
    )


def _tiny(family: str) -> torch.nn.Module:
    """A seeded 2-layer model of ``family`` (GQA where the family has it)."""
    if family == "gpt2":
        return netslim.build_model("tiny-gpt2").eval()
    extra = {"sliding_window": 4} if family in ("mistral", "gemma2") else {}  # shorter than the check's prompt
    return tiny_decoder(family.capitalize(), 2, head_dim=16, max_position_embeddings=256, pad_token_id=0, **extra)


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    """tiny-llama (2 layers, 4 query heads on 2 KV heads) and its decoder step, with the check."""
    model = netslim.build_model("tiny-llama").eval()
    path = tmp_path_factory.mktemp("kv") / "tiny_llama_kv.onnx"
    path, check = write_onnx(model, path, {"input_ids": _ids(2, 6)}, check_inputs=_ids(2, 7, seed=1), kv_cache=True)
    return model, path, check


def test_graph_inputs_outputs_and_symbolic_axes(gqa):
    _, path, _ = gqa
    g = onnx.load(str(path)).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*g.input, *g.output)}
    past = [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert [i.name for i in g.input] == ["input_ids", "attention_mask", "position_ids", *past]
    assert [o.name for o in g.output] == ["logits", *[p.replace("past_key_values.", "present.") for p in past]]
    assert dims["input_ids"] == ["batch", "sequence"]
    assert dims["attention_mask"] == ["batch", "total_sequence"]
    assert dims["past_key_values.0.key"] == ["batch", 2, "past_sequence", 16]  # GQA: 2 KV heads of 16
    assert dims["present.1.value"][:2] == ["batch", 2] and dims["present.1.value"][3] == 16
    assert isinstance(dims["present.1.value"][2], str)  # past + new positions: symbolic


def test_decoder_logits_and_greedy_tokens_match_pytorch(gqa):
    model, path, check = gqa
    # the check stored at export: prefill of 2 x 7 ids and 4 cached greedy steps
    assert check["within_tolerance"] and check["greedy_tokens_equal"]
    assert check["inputs"] == {"input_ids": [2, 7], "cached_steps": STEPS}
    assert check["max_abs_diff"] <= REL * check["ref_abs_max"]
    # again on another batch size and prompt length, and a longer decode (batch and past are symbolic)
    ids = _ids(3, 5, seed=2)
    ref_tokens, ref = torch_greedy(model, ids, STEPS + 1)
    tokens, logits = OrtDecoder(path).greedy(ids, STEPS + 1, forced=ref_tokens, keep_logits=True)
    assert logits.shape == ref.shape == (3, 5 + STEPS, TINY_VOCAB)
    assert (logits - ref).abs().max() <= REL * ref.abs().max()
    assert torch.equal(tokens, ref_tokens)
    free, _ = OrtDecoder(path).greedy(ids, 12)  # the graph's own greedy decoding, no teacher
    assert torch.equal(free, torch_greedy(model, ids, 12)[0])


def test_padded_batch_uses_the_attention_mask(gqa):
    """A left-padded row: the graph's mask and position ids reproduce PyTorch's, so the row's
    logits equal the unpadded row's (and the model's on the same inputs)."""
    model, path, _ = gqa
    ids = _ids(2, 6, seed=3)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    session = OrtDecoder(path).session
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    feed |= {n: torch.zeros(2, 2, 0, 16).numpy() for n in (i.name for i in session.get_inputs()) if "past" in n}
    got = torch.from_numpy(session.run(None, feed)[0])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        alone = model(input_ids=ids[:1, 2:]).logits
    assert (got[:, 2:] - ref[:, 2:]).abs().max() <= REL * ref.abs().max()
    assert (got[0, 2:] - alone[0]).abs().max() <= REL * alone.abs().max()


def test_mha_tied_llama_and_netslim_int8_body(tmp_path):
    """Without GQA, with a tied head (SmolLM2's layout), and a netslim dynamic int8 model (its
    export twins inside the decoder step): the same check holds."""
    for name, model in (("mha", _llama_mha_tied()), ("int8", dynamic_int8(netslim.build_model("tiny-llama").eval()))):
        path, check = write_onnx(
            model, tmp_path / f"{name}.onnx", _ids(1, 4), check_inputs=_ids(2, 6, seed=4), kv_cache=True
        )
        assert check["within_tolerance"], (name, check)
        assert check["greedy_tokens_equal"], (name, check)
        assert check["steps_max_abs_diff"] <= REL * check["ref_abs_max"]


@pytest.mark.parametrize("family", ["mistral", "qwen2", "phi3", "gpt2"])
def test_other_families(family, tmp_path):
    """The other families of KV_CACHE_FAMILIES: Mistral with a sliding window shorter than the
    prompt (a mask over a full past), Qwen2 (q / k / v biases), Phi-3 (fused qkv), GPT-2 (Conv1D,
    learned positions, tied head)."""
    _, check = write_onnx(
        _tiny(family), tmp_path / "m.onnx", _ids(1, 4), check_inputs=_ids(2, 7, seed=8), kv_cache=True
    )
    assert check["within_tolerance"] and check["greedy_tokens_equal"], check
    assert check["steps_max_abs_diff"] <= REL * check["ref_abs_max"]


def test_ort_int8_decoder_agrees(gqa, tmp_path):
    model, path, _ = gqa
    int8 = ort_dynamic_int8(path, tmp_path / "int8.onnx", per_channel=True)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("MatMulInteger") == 2 * 7 + 1  # q k v o gate up down per layer, and the LM head
    assert int8.stat().st_size < 0.5 * path.stat().st_size
    check = check_decoder(model, int8, _ids(2, 8, seed=5), steps=8)
    assert check["argmax_agreement"] >= 0.85, check  # random logits lie close: near-ties flip
    assert check["max_abs_diff"] <= 0.05 * check["ref_abs_max"], check


def test_whole_sequence_run_of_the_decoder_file(gqa):
    """netslim eval / bench open the file as a causal LM: an empty past, positions from 0."""
    model, path, _ = gqa
    onnx_model = OnnxModel(path)
    ids = _ids(2, 9, seed=6)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    got = onnx_model(input_ids=ids).logits
    assert (got - ref).abs().max() <= REL * ref.abs().max()
    assert list(onnx_model.example_inputs(3)) == ["input_ids"]
    assert onnx_model(**onnx_model.example_inputs(3)).logits.shape[0] == 3


def test_unsupported_models_refused_in_one_line(tmp_path):
    # Gemma-2: sliding and global layers alternate (a hybrid cache); BERT: no decoder
    for model, needle in (
        (_tiny("gemma2"), "model type 'gemma2'"),
        (netslim.build_model("tiny-bert"), "kind 'embedding'"),
    ):
        with pytest.raises(NetslimError, match=needle) as e:
            export_onnx(model, tmp_path / "x.onnx", _ids(1, 4), kv_cache=True)
        assert "\n" not in str(e.value) and "llama, mistral, qwen2, phi3, gpt2" in str(e.value)
    llama = netslim.build_model("tiny-llama")
    with pytest.raises(NetslimError, match="at least 2 tokens"):
        export_onnx(llama, tmp_path / "x.onnx", _ids(1, 1), kv_cache=True)
    with pytest.raises(NetslimError, match="leave dynamic_dims unset"):
        export_onnx(llama, tmp_path / "x.onnx", _ids(1, 4), kv_cache=True, dynamic_dims={0: "batch"})
    with pytest.raises(NetslimError, match="KV-cache decoder step"):
        OrtDecoder(export_onnx(copy.deepcopy(llama), tmp_path / "plain.onnx", _ids(1, 4)))
    with pytest.raises(NetslimError, match="'kv_cache' is an option of format 'onnx'"):
        make_config({"method": "export", "format": "gguf", "kv_cache": True}, "recipe step 2")
    assert make_config({"method": "export", "format": "onnx", "kv_cache": True}).format_options() == {"kv_cache": True}


def test_recipe_export_step_with_kv_cache(tmp_path, monkeypatch):
    """``export: {format: onnx, kv_cache: true}``: the step's exporter writes the decoder step and
    records the decoding check (a prefill of the task's 2 example rows and 4 cached steps)."""
    import netslim.quantize.onnx_export as ox

    class Rows:  # the run's task, as _task_from_info rebuilds it: only its example rows are read
        def example_inputs(self, n):
            return {"input_ids": _ids(n, 8, seed=7)}

    monkeypatch.setattr(ox, "_task_from_info", lambda model, info: Rows())
    cfg = make_config({"method": "export", "format": "onnx", "kv_cache": True})
    path, notes = ox.export_step(netslim.build_model("tiny-llama"), tmp_path / "m.onnx", {}, **cfg.format_options())
    check = notes["ort_check"]
    assert check["within_tolerance"] and check["greedy_tokens_equal"] and "warnings" not in notes
    assert check["inputs"] == {"input_ids": [2, 8], "cached_steps": STEPS}
    assert OnnxModel(path).description["ort_check"] == check
    with pytest.raises(NetslimError, match="takes only the option kv_cache; got dtype"):
        ox.export_step(netslim.build_model("tiny-llama"), tmp_path / "m.onnx", {}, dtype="q8_0")
