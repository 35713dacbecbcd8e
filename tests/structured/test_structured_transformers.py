"""Heads, FFN neurons and blocks of tiny BERT / Llama (GQA) / GPT-2: masked == shrunk, reloads."""

from __future__ import annotations

import copy

import pytest
import torch

import netslim
from netslim.models import build_model
from netslim.prune.structured import (
    apply_plan,
    drop_transformer_blocks,
    plan_transformer,
    shrink_ffn,
    shrink_heads,
    transformer_graph,
)

IDS = {"input_ids": torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))}


def _out(model):
    with torch.no_grad():
        return model(**IDS)[0]


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "name,kind",
    [
        ("tiny-bert", "head"),
        ("tiny-bert", "neuron"),
        ("tiny-llama", "head"),
        ("tiny-llama", "neuron"),
        ("tiny-gpt2", "neuron"),
    ],
)
def test_masked_equals_shrunk_and_reloads(name, kind, tmp_path):
    model = build_model(name)
    plan, graph = plan_transformer(model, kind, 0.5, criterion="random", scope="global")
    assert plan.groups and all(g["kept"] < g["size"] for g in plan.groups)
    masked = apply_plan(copy.deepcopy(model), plan, "mask")
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    y = _out(shrunk)
    assert y.shape == _out(model).shape
    torch.testing.assert_close(y, _out(masked), atol=1e-5, rtol=1e-5)
    assert _params(shrunk) < _params(model)
    back = netslim.load(netslim.save(shrunk, tmp_path / "m.safetensors"))
    torch.testing.assert_close(_out(back), y, atol=0, rtol=0)


def test_gqa_unit_is_a_kv_head_with_its_query_heads():
    model = build_model("tiny-llama")  # 4 query heads, 2 kv heads, head_dim 16
    graph = transformer_graph(model, kinds=("head",))
    g = graph.groups[0]
    assert g.size == 2
    plan, _ = plan_transformer(model, "head", 0.5)
    keeps = {
        (e["module"].rsplit(".", 1)[-1], e["param"]): e["keep"]
        for e in plan.entries
        if e["module"].startswith("model.layers.0.")
    }
    kv = keeps[("k_proj", "weight")]
    assert len(kv) == 16 and kv == keeps[("v_proj", "weight")]
    head = kv[0] // 16
    assert keeps[("q_proj", "weight")] == list(range(head * 32, head * 32 + 32))  # its 2 query heads
    assert keeps[("o_proj", "weight")] == keeps[("q_proj", "weight")]
    assert plan.config == {"num_key_value_heads": 1, "num_attention_heads": 2, "head_dim": 16}


def test_uniform_llama_reloads_with_from_pretrained(tmp_path):
    tf = pytest.importorskip("transformers")
    model = build_model("tiny-llama")
    model, report = shrink_ffn(model, 0.25)
    model, _ = shrink_heads(model, 0.5)
    assert report["from_pretrained"] and model.config.intermediate_size == 96
    model.save_pretrained(tmp_path / "hf")
    back = tf.LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    torch.testing.assert_close(_out(back), _out(model), atol=1e-6, rtol=1e-6)


def test_bert_heads_per_block_counts_reload_through_netslim(tmp_path):
    model = build_model("tiny-bert")
    # global scope: blocks may keep different head counts; netslim.load rebuilds them from specs
    model, report = shrink_heads(model, 0.5, criterion="random", scope="global", min_keep_ratio=0.25)
    back = netslim.load(netslim.save(model, tmp_path / "b.safetensors"))
    torch.testing.assert_close(_out(back), _out(model), atol=0, rtol=0)


def test_drop_layers_picks_low_influence_and_renumbers(tmp_path):
    tf = pytest.importorskip("transformers")
    model = build_model("tiny-llama")
    with torch.no_grad():  # make block 1 a near-identity: its output projections ~ 0
        model.model.layers[1].self_attn.o_proj.weight.mul_(1e-4)
        model.model.layers[1].mlp.down_proj.weight.mul_(1e-4)
    model, report = drop_transformer_blocks(model, 1, [IDS])
    assert report["dropped"] == [1] and model.config.num_hidden_layers == 1
    assert model.model.layers[0].self_attn.layer_idx == 0
    model.save_pretrained(tmp_path / "hf")
    back = tf.LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    torch.testing.assert_close(_out(back), _out(model), atol=1e-6, rtol=1e-6)
    again = netslim.load(netslim.save(model, tmp_path / "l.safetensors"))
    torch.testing.assert_close(_out(again), _out(model), atol=0, rtol=0)


def test_non_transformer_is_reported_not_pruned():
    graph = transformer_graph(build_model("lenet300"))
    assert not graph.groups and "not a Hugging Face" in graph.skipped[0]["reason"]


def test_activation_criterion_on_hf_inputs():
    model = build_model("tiny-llama")
    model, report = shrink_ffn(model, 0.5, criterion="activation", batches=[IDS, IDS["input_ids"]])
    assert model.config.intermediate_size == 64 and report["from_pretrained"]
