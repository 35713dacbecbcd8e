"""Bring your own model: the front door on random-config Hugging Face architectures.

Each architecture is built at a tiny size from a seeded random config, written with
``save_pretrained`` (plus a byte tokenizer or an image processor) and compressed through
``netslim.compress(DIR, recipe, data=FILES)`` — the path a new user takes. Every
(architecture, method) pair ends in exactly one of two outcomes: the change the method
promises (asserted on the model), or an entry in ``report["skipped"]`` that says why, with
the model left as it was. Every run is then re-scored the way ``netslim eval ARTIFACT``
does it (the artifact's stored data) and must give the report's final metric.

The steps are the shipped technique recipes' steps (``gptq_w4g128``, ``sparsegpt_50``,
``wanda_50``, ``int8_dynamic``, ``heads_ffn_distill``) with tiny calibration sizes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import netslim
from netslim.api import recipe_path
from netslim.core.layerwise import calibration_for, is_conv1d
from netslim.models.sources import open_model
from netslim.prune.criteria import PRUNABLE_TYPES, effective_weight
from netslim.quantize.dynamic import DynamicInt8Linear
from netslim.quantize.weight_only import QuantizedLinear
from netslim.recipe.inputs import resolve_task, stored_reference

tf = pytest.importorskip("transformers")

from netslim.models.hf_tokenizers import byte_tokenizer  # noqa: E402

HIDDEN, FFN, HEADS, LAYERS, VOCAB = 32, 64, 4, 2, 512
SEQ_LEN = 16
MEASURE = {"batch_size": 2, "repeats": 1}
WORDS = "alpha beta gamma delta engine buffer socket thread parser value object file".split()


# --------------------------------------------------------------------------- models
def _causal_config(arch: str):
    common = dict(vocab_size=VOCAB, bos_token_id=256, eos_token_id=256, pad_token_id=256)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, n_positions=64, **common)
    cls = {
        "llama": tf.LlamaConfig,
        "mistral": tf.MistralConfig,
        "qwen2": tf.Qwen2Config,
        "starcoder2": tf.Starcoder2Config,
    }[arch]
    # 4 query heads reading 2 key/value heads: grouped-query attention, as in the real models
    return cls(
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **common,
    )


def _encoder_config(arch: str, num_labels: int = 2):
    pad = 256  # [PAD] of byte_tokenizer("bert")
    cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig}[arch]
    # RoBERTa numbers positions from pad + 1: room for 64 tokens after it
    positions = 64 if arch == "bert" else pad + 2 + 64
    return cls(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=positions,
        pad_token_id=pad,
        num_labels=num_labels,
    )


def _build(arch: str):
    """(model, tokenizer or image processor) of ``arch`` (seeded, random weights)."""
    torch.manual_seed(0)
    if arch in ("llama", "mistral", "qwen2", "starcoder2", "gpt2"):
        return tf.AutoModelForCausalLM.from_config(_causal_config(arch)), byte_tokenizer("causal")
    if arch in ("bert-cls", "roberta-cls"):
        return tf.AutoModelForSequenceClassification.from_config(_encoder_config(arch[:-4])), byte_tokenizer("bert")
    if arch == "bert":
        return tf.BertModel(_encoder_config("bert")), byte_tokenizer("bert")  # a bare encoder: embeddings
    assert arch == "vit"
    cfg = tf.ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        image_size=16,
        patch_size=4,
        num_channels=3,
        num_labels=2,
        id2label={0: "dark", 1: "light"},
        label2id={"dark": 0, "light": 1},
    )
    processor_cls = getattr(tf, "ViTImageProcessorPil", tf.ViTImageProcessor)  # Pillow: no torchvision needed
    processor = processor_cls(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return tf.ViTForImageClassification(cfg), processor


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """``save_pretrained`` directories, written once per architecture on first use."""
    root, made = tmp_path_factory.mktemp("hf"), {}

    def get(arch: str):
        if arch not in made:
            model, preprocessor = _build(arch)
            d = root / arch
            model.save_pretrained(d)
            preprocessor.save_pretrained(d)
            made[arch] = d
        return made[arch]

    return get


# ----------------------------------------------------------------------------- data
def _prose(n_lines: int, seed: int = 0) -> str:
    g = np.random.default_rng(seed)
    return "".join(" ".join(g.choice(WORDS, 8)).capitalize() + ".\n" for _ in range(n_lines))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One tiny data set per modality: a text file, a labelled JSONL, an image folder."""
    root = tmp_path_factory.mktemp("data")
    (root / "corpus.txt").write_text(_prose(120))
    rows = [
        {"text": f"{WORDS[i % 12]} {WORDS[(3 * i) % 12]} number {i}", "label": ["neg", "pos"][i % 2]} for i in range(48)
    ]
    (root / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    g = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2), ("test", 3)):  # explicit split folders: no hash split
        for label, base in (("dark", 40), ("light", 200)):
            (root / "imgs" / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(base + g.integers(-30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(root / "imgs" / split / label / f"{i}.png")
    return {
        "text": {"path": str(root / "corpus.txt"), "seq_len": SEQ_LEN, "limit": 4},
        "labelled": {"path": str(root / "labelled.jsonl"), "max_length": 32, "limit": 6},
        "sentences": {"path": str(root / "corpus.txt"), "max_length": 32, "limit": 6},
        "images": {"path": str(root / "imgs")},
    }


# -------------------------------------------------------------------------- recipes
def _shipped_step(recipe: str, method: str, **tiny) -> dict:
    """The ``method`` step of a shipped technique recipe, with calibration sizes made tiny."""
    steps = yaml.safe_load(recipe_path(recipe).read_text())["steps"]
    step = next(s for s in steps if s["method"] == method)
    step.pop("finetune", None), step.pop("distill", None)  # pruning alone: its own promise is checked
    return {**step, **tiny}


CALIB = {"num_samples": 8, "seq_len": 32, "batch_size": 4}  # the 256 calibration tokens netslim asks for
TINY_CALIB = {"calibration_batches": 2, "calibration_batch_size": 2}
STEPS = {
    "gptq": lambda: _shipped_step("gptq_w4g128", "gptq", group_size=16, **CALIB),  # 16 divides hidden and FFN
    "sparsegpt": lambda: _shipped_step("sparsegpt_50", "sparsegpt", **CALIB),
    "wanda": lambda: _shipped_step("wanda_50", "wanda", **CALIB),
    "dynamic_int8": lambda: _shipped_step("int8_dynamic", "dynamic_int8"),
    # ratio 0.5: the shipped 0.25 of 2 key/value groups removes none (the "heads@0.25" case)
    "heads": lambda: _shipped_step("heads_ffn_distill", "heads", ratio=0.5, **TINY_CALIB),
    "heads@0.25": lambda: _shipped_step("heads_ffn_distill", "heads", **TINY_CALIB),
    "ffn": lambda: _shipped_step("heads_ffn_distill", "ffn", **TINY_CALIB),
    "magnitude": lambda: {"method": "magnitude", "sparsity": 0.5},
    "channels": lambda: _shipped_step("channels_50_int8", "channels"),
}
EXPORT = {"sparsegpt": {"format": "sparse"}, "wanda": {"format": "sparse"}}

# ------------------------------------------------------------------------ the matrix
# outcome: "changed" (the method's promise, checked by _assert_changed) or the regex of the
# report["skipped"] reason that says why the model was left as it was
CHANGED = "changed"
NO_RULE_VIT = r"no attention/FFN structure netslim knows in model_type 'vit'"
CASES = [
    *[
        (arch, "text", m, CHANGED)
        for arch in ("llama", "mistral", "qwen2", "gpt2")
        for m in ("gptq", "sparsegpt", "wanda", "dynamic_int8", "heads", "ffn")
    ],
    ("llama", "text", "heads@0.25", r"heads: ratio 0.25 removes no head: groups have 2 heads, too few"),
    ("starcoder2", "text", "heads", CHANGED),  # Llama-style attention: the same rule applies
    ("starcoder2", "text", "ffn", CHANGED),  # c_fc/c_proj Linears: the generic graph (issue 22) finds them
    *[
        (arch, d, m, CHANGED)
        for arch, d in (
            ("bert-cls", "labelled"),
            ("roberta-cls", "labelled"),
            ("bert", "sentences"),
        )  # the bare encoder: embedding fidelity
        for m in ("heads", "ffn", "dynamic_int8", "magnitude")
    ],
    ("vit", "images", "magnitude", CHANGED),
    ("vit", "images", "dynamic_int8", CHANGED),
    # issue 22: the generic graph (torch.export) prunes what no family rule knew
    ("vit", "images", "heads", CHANGED),
    ("vit", "images", "ffn", CHANGED),
    ("vit", "images", "channels", CHANGED),
]
# changed, and the layers the method leaves alone are listed in report["skipped"] with the reason
PARTIAL = {("gpt2", "dynamic_int8"): r"dynamic_int8: a transformers Conv1D .* is not converted"}


def _compress(model_dir, method: str, data_spec: dict, out):
    recipe = {
        "name": f"{model_dir.name}-{method}",
        "measure": MEASURE,
        "steps": [STEPS[method](), {"method": "export", **EXPORT.get(method, {})}],
    }
    return netslim.compress(str(model_dir), recipe, data=data_spec, out=out)


def _block_weights(model) -> dict[str, torch.Tensor]:
    """The (effective, masked) weights of the Linear / Conv1D layers inside the blocks."""
    blocks = re.compile(r"\.(layers|h|layer)\.\d+\.")
    return {
        n: effective_weight(m).detach()
        for n, m in model.named_modules()
        if (isinstance(m, PRUNABLE_TYPES) or is_conv1d(m)) and blocks.search(f".{n}")
    }


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _assert_changed(method: str, before, model, report) -> None:
    if method == "gptq":
        # every Linear / Conv1D of the blocks became packed int4 codes (the LM head is not in a block)
        assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == len(_block_weights(before))
        assert math.isfinite(report["final"]["perplexity"])
    elif method in ("sparsegpt", "wanda"):
        for name, w in _block_weights(model).items():
            assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.02), name  # per output row
    elif method == "magnitude":  # global ranking: 50 % of all prunable weights together
        ws = [effective_weight(m).detach() for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
        assert sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws) == pytest.approx(0.5, abs=0.01)
    elif method == "dynamic_int8":
        linears = sum(isinstance(m, torch.nn.Linear) for m in before.modules())
        assert sum(isinstance(m, DynamicInt8Linear) for m in model.modules()) == linears > 0
        assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    else:  # heads, ffn, channels: physically smaller
        assert _params(model) < _params(before)
        assert report["final"]["params"] < report["baseline"]["params"]


@pytest.mark.parametrize("arch, data_key, method, outcome", CASES, ids=[f"{a}-{m}" for a, _, m, _ in CASES])
def test_method_changes_the_model_or_says_why(model_dirs, data, tmp_path, arch, data_key, method, outcome):
    model_dir = model_dirs(arch)
    before = open_model(str(model_dir)).model
    result = _compress(model_dir, method, data[data_key], tmp_path / "out")
    report, skipped = result.report, result.report["skipped"]
    if outcome == CHANGED:
        _assert_changed(method, before, result.model, report)
        partial = PARTIAL.get((arch, method))
        left = {s["name"] for s in skipped if partial and re.search(partial, s["reason"])}
        assert left == ({n for n, m in before.named_modules() if is_conv1d(m)} if partial else set()), skipped
        assert len(skipped) == len(left), skipped  # nothing else skipped
    else:
        assert any(re.search(outcome, s["reason"]) for s in skipped), skipped
        after = result.model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.state_dict().items())  # left as it was
        assert report["final"]["params"] == report["baseline"]["params"]
    # `netslim eval ARTIFACT`: the artifact alone, scored on the data stored in it (fidelity: against
    # the run's original model, which the artifact names)
    opened = open_model(str(result.artifact))
    original = stored_reference(opened)
    assert original is not None or report["metric"] != "fidelity"
    task = resolve_task(opened, reference=original)
    assert task.spec.path == str(Path(data[data_key]["path"]).resolve())  # the run's own data, not a default
    score = task.evaluate(opened.model, "test")[report["metric"]]
    assert score == pytest.approx(report["final"][report["metric"]], rel=1e-6, abs=1e-6)


def test_calibration_comes_from_the_users_text(model_dirs, data, monkeypatch):
    """gptq / sparsegpt / wanda calibrate on the train split of --data: no built-in corpus needed."""
    monkeypatch.setenv("NETSLIM_TEXT", str(Path(data["text"]["path"]).parent / "no_such_corpus"))
    opened = open_model(str(model_dirs("llama")))
    task = resolve_task(opened, data=data["text"])
    ids = calibration_for(SimpleNamespace(task=task, seed=0), "wanda", 8, 32)  # as the wanda step asks
    assert ids.shape == (8, 32)
    text = Path(data["text"]["path"]).read_text()
    assert set(task.tokenizer.decode(ids.flatten(), skip_special_tokens=True)) <= set(text)
