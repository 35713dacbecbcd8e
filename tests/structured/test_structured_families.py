"""Structured pruning on any architecture (issue 22): random-config models of many transformers
families, traced by the generic graph (torch.export + head groups from the computation).

Per (family, unit kind) where the kind applies: half of every prunable group goes -> the output
keeps its shape, parameters drop, the masked model (the removed units zeroed, an
identity-preserving plan) equals the shrunk one, and ``netslim.save`` + ``netslim.load`` gives
the same outputs. Where a kind does not apply (or its groups are locked), the API says why in
``report["skipped"]`` and ``on_empty='fail'`` raises. Hand-written family rules (BERT, Llama GQA,
GPT-2) are checked against the generic graph: the same slots, so the same plans.
"""

from __future__ import annotations

import copy

import pytest
import torch

import netslim
from netslim.core.errors import NetslimError
from netslim.prune.structured import apply_plan, plan_from_keep, shrink_channels, shrink_ffn, shrink_heads
from netslim.prune.structured.generic import structured_graph
from netslim.prune.structured.hf import transformer_graph
from netslim.prune.structured.transformer import plan_transformer

tf = pytest.importorskip("transformers")

H, F, NH, L, V = 32, 64, 4, 2, 128


def _text(cls: str, cfg: str, **kw):
    return lambda: getattr(tf, cls)(getattr(tf, cfg)(**kw))


LM = dict(vocab_size=V)
FAMILIES = {
    "bert": _text(
        "BertForSequenceClassification",
        "BertConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        intermediate_size=F,
        max_position_embeddings=64,
        **LM,
    ),
    "roberta": _text(
        "RobertaForSequenceClassification",
        "RobertaConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        intermediate_size=F,
        max_position_embeddings=80,
        pad_token_id=1,
        **LM,
    ),
    "distilbert": _text(
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        dim=H,
        n_layers=L,
        n_heads=NH,
        hidden_dim=F,
        max_position_embeddings=64,
        **LM,
    ),
    "albert": _text(
        "AlbertForSequenceClassification",
        "AlbertConfig",
        hidden_size=H,
        embedding_size=16,
        num_hidden_layers=L,
        num_attention_heads=NH,
        intermediate_size=F,
        max_position_embeddings=64,
        **LM,
    ),
    "electra": _text(
        "ElectraForSequenceClassification",
        "ElectraConfig",
        hidden_size=H,
        embedding_size=16,
        num_hidden_layers=L,
        num_attention_heads=NH,
        intermediate_size=F,
        max_position_embeddings=64,
        **LM,
    ),
    "gpt2": _text(
        "GPT2LMHeadModel",
        "GPT2Config",
        n_embd=H,
        n_layer=L,
        n_head=NH,
        n_inner=F,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        **LM,
    ),
    "gpt_neo": _text(
        "GPTNeoForCausalLM",
        "GPTNeoConfig",
        hidden_size=H,
        num_layers=L,
        num_heads=NH,
        intermediate_size=F,
        max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
        bos_token_id=0,
        eos_token_id=0,
        **LM,
    ),
    "opt": _text(
        "OPTForCausalLM",
        "OPTConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        ffn_dim=F,
        word_embed_proj_dim=H,
        max_position_embeddings=64,
        **LM,
    ),
    "bloom": _text("BloomForCausalLM", "BloomConfig", hidden_size=H, n_layer=L, n_head=NH, **LM),
    "falcon": _text(
        "FalconForCausalLM",
        "FalconConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        new_decoder_architecture=True,
        num_kv_heads=2,
        **LM,
    ),
    "phi": _text(
        "PhiForCausalLM",
        "PhiConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        intermediate_size=F,
        max_position_embeddings=64,
        **LM,
    ),
    "gemma": _text(
        "GemmaForCausalLM",
        "GemmaConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=F,
        max_position_embeddings=64,
        **LM,
    ),
    "llama": _text(
        "LlamaForCausalLM",
        "LlamaConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=2,
        intermediate_size=F,
        max_position_embeddings=64,
        **LM,
    ),
    "mistral": _text(
        "MistralForCausalLM",
        "MistralConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=2,
        intermediate_size=F,
        max_position_embeddings=64,
        **LM,
    ),
    "qwen2": _text(
        "Qwen2ForCausalLM",
        "Qwen2Config",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        num_key_value_heads=2,
        intermediate_size=F,
        max_position_embeddings=64,
        **LM,
    ),
    "vit": _text(
        "ViTForImageClassification",
        "ViTConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        intermediate_size=F,
        image_size=16,
        patch_size=4,
    ),
    "deit": _text(
        "DeiTForImageClassification",
        "DeiTConfig",
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=NH,
        intermediate_size=F,
        image_size=16,
        patch_size=4,
    ),
    "swin": _text(
        "SwinForImageClassification",
        "SwinConfig",
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 4],
        image_size=16,
        patch_size=2,
        window_size=4,
    ),
    "resnet": _text(
        "ResNetForImageClassification",
        "ResNetConfig",
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="bottleneck",
    ),
    "convnext": _text(
        "ConvNextForImageClassification", "ConvNextConfig", num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]
    ),
    "mobilenet_v2": _text(
        "MobileNetV2ForImageClassification", "MobileNetV2Config", depth_multiplier=0.25, image_size=32
    ),
    "regnet": _text(
        "RegNetForImageClassification",
        "RegNetConfig",
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        groups_width=4,
    ),
    "efficientnet": _text(
        "EfficientNetForImageClassification",
        "EfficientNetConfig",
        width_coefficient=0.1,
        depth_coefficient=0.1,
        image_size=32,
        hidden_dim=128,
    ),
}
TEXT = {
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "electra",
    "gpt2",
    "gpt_neo",
    "opt",
    "bloom",
    "falcon",
    "phi",
    "gemma",
    "llama",
    "mistral",
    "qwen2",
}
CNN = {"resnet", "convnext", "mobilenet_v2", "regnet", "efficientnet"}
# heads kept, with the reason the graph gives
HEADS_KEPT = {
    "bloom": "forward fails with one head fewer",  # ALiBi slopes are built for the config's head count
    "swin": "forward fails with one head fewer",
}  # a relative-position bias table per head
CHANNELS_KEPT: dict[str, str] = {}
FFN_KEPT = {"resnet": "locked", "regnet": "locked", "mobilenet_v2": "no ffn", "efficientnet": "no ffn"}


def build(name: str):
    torch.manual_seed(0)
    model = FAMILIES[name]().eval()
    g = torch.Generator().manual_seed(1)
    if name in TEXT:
        x = {"input_ids": torch.randint(3, V, (2, 8), generator=g)}
    else:
        size = 16 if name in ("vit", "deit", "swin") else 32
        x = {"pixel_values": torch.randn(2, 3, size, size, generator=g)}
    return model, x


def out(model, x):
    with torch.no_grad():
        y = model(**x)
    return y.logits


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


KINDS = {"heads": ("head",), "ffn": ("neuron",), "channels": None}
CASES = [
    (f, k)
    for f in FAMILIES
    for k in KINDS
    if not (k == "heads" and (f in HEADS_KEPT or f in CNN))
    and not (k == "ffn" and f in FFN_KEPT)
    and not (k == "channels" and f in CHANNELS_KEPT)
]


@pytest.mark.parametrize("family,kind", CASES)
def test_half_of_every_group_goes_and_reloads(family, kind, tmp_path):
    model, x = build(family)
    graph = structured_graph(model, x)
    kinds = KINDS[kind]
    groups = [g for g in graph.prunable() if kinds is None or g.kind in kinds]
    assert groups, graph.skipped
    gen = torch.Generator().manual_seed(0)
    plan = plan_from_keep(
        graph, {g.id: torch.randperm(g.size, generator=gen)[: max(1, g.size // 2)].sort().values for g in groups}
    )
    y_ref = out(model, x)
    masked = apply_plan(copy.deepcopy(model), plan, "mask")
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    y = out(shrunk, x)
    assert y.shape == y_ref.shape and n_params(shrunk) < n_params(model)
    # an identity-preserving plan: removing exactly the zeroed units changes nothing
    torch.testing.assert_close(y, out(masked, x), atol=1e-5, rtol=1e-4)
    back = netslim.load(netslim.save(shrunk, tmp_path / "m.safetensors"))
    torch.testing.assert_close(out(back, x), y, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", sorted(HEADS_KEPT) + ["resnet"])
def test_heads_that_cannot_go_say_why(family):
    model, x = build(family)
    before = n_params(model)
    model, report = shrink_heads(model, 0.5)
    assert n_params(model) == before
    text = " ".join(s["reason"] for s in report["skipped"])
    assert HEADS_KEPT.get(family, "no attention") in text
    with pytest.raises(NetslimError, match="heads removed nothing"):
        shrink_heads(model, 0.5, on_empty="fail")


@pytest.mark.parametrize("family", ["opt", "vit", "convnext", "distilbert"])
def test_api_prunes_unknown_families(family):
    """The families issue 22 found untouched: shrink_heads / shrink_ffn / shrink_channels now remove half."""
    model, x = build(family)
    y = out(model, x)
    before = n_params(model)
    if family != "convnext":
        model, r = shrink_heads(model, 0.5)
        assert {g["kind"] for g in r["groups"]} == {"head"} and all(g["kept"] == 2 for g in r["groups"])
    model, r = shrink_ffn(model, 0.5)
    assert r["groups"] and all(g["kept"] * 2 == g["size"] for g in r["groups"])
    model, r = shrink_channels(model, x, ratio=0.5, scope="uniform")
    assert out(model, x).shape == y.shape and n_params(model) < 0.8 * before


def test_untraceable_hf_module_and_bad_exclude():
    model, x = build("resnet")
    with pytest.raises(NetslimError, match="exclude selector 'nope' matches no module"):
        shrink_channels(model, x, ratio=0.5, exclude=["nope"])


@pytest.mark.parametrize(
    "family,kind",
    [
        ("bert", "head"),
        ("bert", "neuron"),
        ("llama", "head"),
        ("llama", "neuron"),
        ("gpt2", "head"),
        ("gpt2", "neuron"),
    ],
)
def test_family_rules_agree_with_the_generic_graph(family, kind):
    """The hand-written rules and the generic graph give the same slots, hence the same plans."""
    model, x = build(family)
    generic = structured_graph(model, x)
    rules = transformer_graph(model, kinds=(kind,))

    def slots(graph):
        out = set()
        for g in graph.prunable():
            if g.kind != kind:
                continue
            keep = plan_from_keep(graph, {g.id: torch.arange(0, g.size, 2)})
            out.add(tuple(sorted((e["module"], e["param"], e["dim"], tuple(e["keep"])) for e in keep.entries)))
        return out

    assert slots(generic) == slots(rules) and slots(rules)
    plan_g, _ = plan_transformer(model, kind, 0.5, example_inputs=x)
    assert sorted(map(str, plan_g.entries)) == sorted(map(str, _rules_plan(model, kind).entries))


def _rules_plan(model, kind):
    from netslim.prune.structured.hf import hf_fixups
    from netslim.prune.structured.importance import group_scores
    from netslim.prune.structured.select import choose_keep

    graph = transformer_graph(model, kinds=(kind,))
    keep = choose_keep(model, graph, group_scores(model, graph, "l2"), 0.5, scope="uniform")
    plan = plan_from_keep(graph, keep)
    plan.config, _ = hf_fixups(model, graph, keep)
    return plan
