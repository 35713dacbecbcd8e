"""Models in: the user's own class (no registration), file.py:factory + weights, Hugging Face directories."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import netslim
from netslim.core.errors import NetslimError
from netslim.core.serialize import read_description
from netslim.models.sources import open_model
from netslim.prune.structured import shrink_channels

CNN_FILE = textwrap.dedent("""
    import torch
    from torch import nn


    class UserCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(16 * 14 * 14, 10)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))


    def build():
        torch.manual_seed(0)
        return UserCNN()


    def not_a_model():
        return 3
""")


@pytest.fixture
def user_file(tmp_path):
    f = tmp_path / "my_cnn.py"
    f.write_text(CNN_FILE)
    return f


def _x():
    return torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_user_model_saves_without_registration_and_loads_only_with_a_base(user_file, tmp_path):
    opened = open_model(f"{user_file}:build")
    model = opened.model
    path = netslim.save(model, tmp_path / "m.safetensors")
    arch = read_description(path)["arch"]
    assert arch["kind"] == "user" and arch["class"] == "UserCNN" and arch["ref"].endswith("my_cnn.py:build")
    with pytest.raises(NetslimError, match="base=YourClass"):
        netslim.load(path)
    again = netslim.load(path, base=opened.base)
    assert torch.equal(again(_x()), model(_x()))
    with pytest.raises(NetslimError, match="holds a 'UserCNN' model but base is a 'Linear'"):
        netslim.load(path, base=nn.Linear(2, 2))


def test_pruned_user_model_round_trips_through_its_base(user_file, tmp_path):
    opened = open_model(f"{user_file}:build")
    model, report = shrink_channels(opened.model.eval(), _x()[:1], ratio=0.5, scope="uniform")
    assert report["params_after"] < report["params_before"]
    assert model.features[0].out_channels == 4 and model.head.in_features == 8 * 14 * 14
    path = netslim.save(model, tmp_path / "pruned.safetensors")
    again = netslim.load(path, base=opened.base())  # a fresh, unpruned instance
    assert again.features[0].out_channels == 4
    assert torch.equal(again(_x()), model(_x()))
    # An artifact opened by path takes the factory reference as its base (the CLI's --model).
    reopened = open_model(path, base=f"{user_file}:build")
    assert torch.equal(reopened.model(_x()), model(_x()))


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_factory_weights_from_safetensors_or_a_weights_only_state_dict(user_file, tmp_path, fmt):
    src = open_model(f"{user_file}:build").model
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    w = tmp_path / f"w.{fmt}"
    save_file(state, str(w)) if fmt == "safetensors" else torch.save(state, w)
    model = open_model(f"{user_file}:build", weights=w).model
    assert torch.equal(model(_x()), src.eval()(_x()))


def test_an_artifact_of_the_user_model_is_accepted_as_weights(user_file, tmp_path):
    src = open_model(f"{user_file}:build").model
    path = netslim.save(src, tmp_path / "trained.safetensors")
    model = open_model(f"{user_file}:build", weights=path).model
    assert torch.equal(model(_x()), src(_x()))


@pytest.mark.parametrize(
    "ref, pattern",
    [
        ("{dir}/missing.py:build", "does not exist"),
        ("{file}:nope", "has no function 'nope'; callables there: UserCNN, build, not_a_model"),
        ("{file}:not_a_model", r"must return a torch.nn.Module; it returned int"),
        ("{dir}/nothing_here", "does not exist"),
        ("no_such_zoo_model", "Unknown model 'no_such_zoo_model'"),
    ],
)
def test_bad_model_references_are_one_clear_error(user_file, tmp_path, ref, pattern):
    with pytest.raises(NetslimError, match=pattern):
        open_model(ref.format(dir=tmp_path, file=user_file))


def test_factory_import_errors_and_mismatched_weights_are_clear(user_file, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(NetslimError, match="Importing .*broken.py failed: RuntimeError: boom"):
        open_model(f"{broken}:build")
    w = tmp_path / "w.safetensors"
    save_file({"head.weight": torch.zeros(3, 3)}, str(w))
    with pytest.raises(NetslimError, match=r"do not match the model \(UserCNN\): missing .*unexpected|missing"):
        open_model(f"{user_file}:build", weights=w)
    pickled = tmp_path / "obj.pt"
    torch.save({"a": object()}, pickled)
    with pytest.raises(NetslimError, match="weights_only"):
        open_model(f"{user_file}:build", weights=pickled)
    with pytest.raises(NetslimError, match="--weights goes with"):
        open_model("lenet300", weights=w)


# ------------------------------------------------------------------ Hugging Face dirs
def _tiny_llama_dir(tmp_path):
    from netslim.models.hf_tokenizers import byte_tokenizer

    model = netslim.build_model("tiny-llama")
    d = tmp_path / "llama"
    model.save_pretrained(d)
    byte_tokenizer("causal").save_pretrained(d)
    return model, d


def test_hf_directory_loads_offline_with_its_class_and_tokenizer(tmp_path):
    from netslim.models.hf_tokenizers import byte_tokenizer, load_tokenizer

    ref, d = _tiny_llama_dir(tmp_path)
    opened = open_model(str(d))
    assert type(opened.model).__name__ == "LlamaForCausalLM" and opened.source == str(d.resolve())
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(opened.model(ids).logits, ref.eval()(ids).logits)
    text = "def f(x): return x"
    assert load_tokenizer(opened.source)(text)["input_ids"] == byte_tokenizer("causal")(text)["input_ids"]
    # Saved and reloaded as an artifact, it keeps its tokenizer source.
    path = netslim.save(opened.model, tmp_path / "a.safetensors")
    assert netslim.load(path).netslim_source == str(d.resolve())


def test_any_transformers_class_saves_and_loads(tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        num_labels=3,
    )
    model = RobertaForSequenceClassification(cfg).eval()
    again = netslim.load(netslim.save(model, tmp_path / "r.safetensors"))
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


def test_bad_hf_directories_are_one_clear_error(tmp_path):
    _, d = _tiny_llama_dir(tmp_path)
    (d / "model.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(NetslimError, match="has no weights: expected model.safetensors"):
        open_model(str(d))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NetslimError, match="no config.json"):
        open_model(str(empty))
    (empty / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(NetslimError, match="names no model class in 'architectures'"):
        open_model(str(empty))
    (empty / "config.json").write_text('{"architectures": ["FrobnicatorForCausalLM"]}')
    with pytest.raises(NetslimError, match="Unknown Hugging Face model class 'FrobnicatorForCausalLM'"):
        open_model(str(empty))
    (empty / "config.json").write_text('{"architectures": ["os"]')
    with pytest.raises(NetslimError, match="not valid JSON"):
        open_model(str(empty))
    no_tok = tmp_path / "no_tok"
    netslim.build_model("tiny-llama").save_pretrained(no_tok)
    from netslim.models.hf_tokenizers import load_tokenizer

    with pytest.raises(NetslimError, match="has no tokenizer files"):
        load_tokenizer(str(no_tok))


def test_masked_lm_directory_is_scored_by_fidelity_of_its_hidden_states(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from netslim.models.hf_tiny import TINY_VOCAB
    from netslim.models.hf_tokenizers import byte_tokenizer

    torch.manual_seed(0)
    d = tmp_path / "mlm"
    BertForMaskedLM(
        BertConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            pad_token_id=256,
        )
    ).save_pretrained(d)
    byte_tokenizer("bert").save_pretrained(d)
    text = tmp_path / "notes.txt"
    text.write_text("\n".join(f"Sentence number {i} talks about topic {i % 7} at some length." for i in range(300)))
    recipe = {
        "name": "mlm",
        "measure": {"batch_size": 2, "repeats": 1},
        "steps": [{"method": "magnitude", "sparsity": 0.6}, {"method": "export"}],
    }
    result = netslim.compress(str(d), recipe, data=str(text), out=tmp_path / "out")
    rep = result.report
    assert rep["metric"] == "fidelity" and rep["baseline"]["fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert 0 < rep["final"]["fidelity"] < 0.9999  # pruned: measured against the original, not itself
