"""The README's three new-user journeys, at tiny sizes, through the CLI a user types.

(a) their own CNN (a ``file.py:factory``) trained and compressed on an image folder;
(b) a Hugging Face sequence classifier directory fine-tuned and pruned on a labelled JSONL folder;
(c) a Hugging Face causal LM directory quantized (GPTQ) and pruned (SparseGPT) on one text file.
Each re-scores the artifact with ``netslim eval`` and must reproduce the report's figure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import netslim

ROOT = Path(__file__).resolve().parents[1]
BYO = ROOT / "benchmarks" / "byo_data.py"
USER_CNN = f"{ROOT / 'benchmarks' / 'user_models' / 'fmnist_cnn.py'}:build"


def cli(*args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "netslim.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**__import__("os").environ, "NETSLIM_PROGRESS": "0", "COLUMNS": "200"},
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def byo(*args):
    subprocess.run([sys.executable, str(BYO), *map(str, args)], check=True, capture_output=True, timeout=300)


def eval_metric(stdout: str, metric: str) -> float:
    return float(re.search(rf"{metric}=([0-9.]+)", stdout).group(1))


def test_journey_a_user_cnn_on_an_image_folder(tmp_path):
    imgs = tmp_path / "imgs"
    byo("images", imgs, "--limit", 700)  # real Fashion-MNIST PNGs: train/<class>/, test/<class>/
    trained = tmp_path / "cnn.safetensors"
    out = cli("train", "--model", USER_CNN, "--data", imgs, "--epochs", 1, "--out", trained)
    assert "test accuracy" in out
    run = tmp_path / "run"
    cli("compress", "channels_50_int8", "--model", USER_CNN, "--weights", trained, "--data", imgs, "--out", run)
    rep = json.loads((run / "report.json").read_text())
    assert rep["dataset"] == "files" and rep["metric"] == "accuracy"
    assert rep["final"]["params"] < 0.5 * rep["baseline"]["params"]
    assert rep["final"]["size_bytes"] < 0.15 * rep["baseline"]["size_bytes"]  # pruned + int8, on disk
    artifact = Path(rep["artifact"])
    out = cli("eval", artifact, "--model", USER_CNN)
    assert "the data of the run that made this artifact" in out
    assert eval_metric(out, "accuracy") == pytest.approx(rep["final"]["accuracy"], abs=5e-5)  # 4 printed digits
    # The same in Python, exactly: the stored data spec rebuilds the same test split.
    from netslim.models.sources import open_model
    from netslim.recipe.inputs import resolve_task

    opened = open_model(str(artifact), base=USER_CNN)
    assert resolve_task(opened).evaluate(opened.model)["accuracy"] == rep["final"]["accuracy"]


def _tiny_classifier_dir(path: Path, labels: list[str]) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from netslim.models.hf_tiny import TINY_VOCAB
    from netslim.models.hf_tokenizers import byte_tokenizer

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        pad_token_id=256,
    )
    BertForSequenceClassification(cfg).save_pretrained(path)
    byte_tokenizer("bert").save_pretrained(path)


def test_journey_b_hf_classifier_on_labelled_jsonl(tmp_path):
    docs = tmp_path / "docs"
    byo("docs-jsonl", docs)  # paragraphs of the Python docs labelled by section, split by file
    labels = sorted({json.loads(line)["label"] for line in (docs / "train.jsonl").open()})
    model_dir = tmp_path / "cls"
    _tiny_classifier_dir(model_dir, labels)
    trained = tmp_path / "trained.safetensors"
    cli("train", model_dir, "--data", docs, "--epochs", 1, "--limit", 96, "--out", trained)
    run = tmp_path / "run"
    cli("compress", "heads_ffn_distill", "--model", trained, "--out", run)  # data: stored in the artifact
    rep = json.loads((run / "report.json").read_text())
    assert rep["metric"] == "accuracy" and rep["recipe_spec"]["name"] == "heads_ffn_distill"
    assert 0 <= rep["baseline"]["accuracy"] <= 1 and 0 <= rep["final"]["accuracy"] <= 1
    assert rep["final"]["params"] < rep["baseline"]["params"]
    notes = {s["method"]: s["notes"] for s in rep["steps"]}
    assert notes["heads"] and notes["ffn"] and "finetune" in notes["ffn"]["ffn"][-1]
    out = cli("eval", rep["artifact"])
    assert eval_metric(out, "accuracy") == pytest.approx(rep["final"]["accuracy"], abs=5e-5)


def _tiny_llama_dir(path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from netslim.models.hf_tiny import TINY_VOCAB
    from netslim.models.hf_tokenizers import byte_tokenizer

    torch.manual_seed(0)
    # hidden 128 so that group size 128 fits every projection
    cfg = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=256,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    byte_tokenizer("causal").save_pretrained(path)


@pytest.mark.parametrize("recipe, packed", [("gptq_w4g128", True), ("sparsegpt_50", False)])
def test_journey_c_causal_lm_directory_on_a_text_file(tmp_path, recipe, packed):
    corpus = tmp_path / "corpus.txt"
    byo("text-corpus", corpus, "--files", 40)  # one plain .txt file
    model_dir = tmp_path / "llama"
    _tiny_llama_dir(model_dir)
    run = tmp_path / "run"
    cli("compress", recipe, "--model", model_dir, "--data", corpus, "--out", run)
    rep = json.loads((run / "report.json").read_text())
    assert rep["metric"] == "perplexity" and rep["dataset"] == "files"
    model = netslim.load(rep["artifact"])
    projections = [m for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
    if packed:
        assert all(type(m).__name__ == "QuantizedLinear" for m in projections)
        assert rep["final"]["size_bytes"] < 0.5 * rep["baseline"]["size_bytes"]
    else:
        w = model.model.layers[0].mlp.down_proj
        dense = w.to_dense() if hasattr(w, "to_dense") else w.weight
        assert abs((dense == 0).float().mean().item() - 0.5) < 0.01
    out = cli("eval", rep["artifact"])
    assert str(corpus) in out
    assert eval_metric(out, "perplexity") == pytest.approx(rep["final"]["perplexity"], rel=1e-4)
