import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from netslim.core.errors import NetslimError
from netslim.data import files
from netslim.data.files import SPLITS
from netslim.train.file_tasks import DataSpec, open_data, parse_data_spec
from netslim.train.object_tasks import model_kind, task_from_object

tf = pytest.importorskip("transformers")

from netslim.models import build_model  # noqa: E402
from netslim.models.hf import register_hf_models  # noqa: E402
from netslim.models.hf_tokenizers import byte_tokenizer  # noqa: E402

register_hf_models()

WORDS = "alpha beta gamma delta engine buffer socket thread parser value object file".split()


def _png(path, value, size=(4, 4), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 255 - value)).save(path)


def _prose(n_lines: int, seed: int = 0) -> str:
    g = np.random.default_rng(seed)
    return "".join(
        " ".join(g.choice(WORDS, 8)).capitalize() + ". " + " ".join(g.choice(WORDS, 5)) + ".\n" for _ in range(n_lines)
    )


def _classifier(num_labels: int = 3, **config) -> nn.Module:
    cfg = tf.BertConfig(
        vocab_size=512,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=num_labels,
        pad_token_id=256,
        **config,
    )
    torch.manual_seed(0)
    return tf.BertForSequenceClassification(cfg).eval()


class MeanSign(nn.Module):
    """Logits (-s, s) with s the sum of the (normalised) pixels: class 1 iff the image is brighter
    than the train mean."""

    def forward(self, x):
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([-s, s], dim=1)


# ----------------------------------------------------------------------- the spec
def test_parse_data_spec_messages():
    assert parse_data_spec("some/dir") == DataSpec(path="some/dir")
    assert parse_data_spec({"path": "x", "image_size": [4, 6]}).size_hw() == (4, 6)
    with pytest.raises(NetslimError, match=r"recipe data: field 'task' .*'auto', 'image-classification'.*; got 'ppl'"):
        parse_data_spec({"path": "x", "task": "ppl"}, where="recipe data")
    with pytest.raises(NetslimError, match="data: unknown field 'colums'"):
        parse_data_spec({"path": "x", "colums": "a"})
    with pytest.raises(NetslimError, match="field 'seq_len' .*greater than or equal to 2; got 1"):
        parse_data_spec({"path": "x", "seq_len": 1})
    with pytest.raises(NetslimError, match="field 'std' .*each > 0"):
        parse_data_spec({"path": "x", "std": [0.5, 0.0, 1.0]})
    with pytest.raises(NetslimError) as e:
        parse_data_spec({"path": "x", "text_column": ["y" * 5000]})
    assert len(str(e.value)) < 400 and "(5,000 chars)" in str(e.value)  # the echoed value is capped
    with pytest.raises(NetslimError, match="expected a path or a mapping"):
        parse_data_spec(3)


def test_model_kind_from_class_and_config():
    vit = tf.ViTForImageClassification(
        tf.ViTConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8, patch_size=4
        )
    )
    kinds = {name: model_kind(build_model(name)) for name in ("tiny-llama", "tiny-gpt2", "tiny-bert")}
    assert kinds == {"tiny-llama": "causal_lm", "tiny-gpt2": "causal_lm", "tiny-bert": "embedding"}
    assert model_kind(_classifier()) == "text_classification"
    assert model_kind(vit) == "image_classification" and model_kind(vit.vit) == "module"  # a bare vision encoder
    assert model_kind(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) == "module"


# ------------------------------------------------------------------------- images
@pytest.fixture
def image_folder(tmp_path):
    """Explicit splits; dark (40) and bright (220) 4x4 grayscale images; one bright image in test/a."""
    root = tmp_path / "imgs"
    for split, n in (("train", 4), ("val", 2), ("test", 4)):
        for i in range(n):
            _png(root / split / "a" / f"{i}.png", 40 + i)
            _png(root / split / "b" / f"{i}.png", 220 - i)
    _png(root / "test" / "a" / "9.png", 230)  # mislabelled on purpose
    return root


def test_image_accuracy_and_loss_equal_a_hand_computation(image_folder):
    task = open_data(DataSpec(path=str(image_folder)), MeanSign())
    assert task.classes == ("a", "b") and task.metric == "accuracy"
    mean, std = task.spec.mean[0], task.spec.std[0]
    train = np.array(
        [np.asarray(Image.open(p), dtype=np.float64) / 255 for p in sorted(image_folder.glob("train/*/*"))]
    )
    assert mean == pytest.approx(train.mean()) and std == pytest.approx(train.std())
    nll, correct, paths = 0.0, 0, sorted(image_folder.glob("test/*/*.png"))
    for p in paths:
        s = ((np.asarray(Image.open(p), dtype=np.float64) / 255 - mean) / std).sum()
        label = 0 if p.parent.name == "a" else 1
        logp = -np.logaddexp(0, -2 * s) if label == 1 else -np.logaddexp(0, 2 * s)  # log softmax of (-s, s)
        nll -= logp
        correct += int((s > 0) == (label == 1))
    res = task.evaluate(MeanSign(), "test")
    assert correct == 8 and res["accuracy"] == pytest.approx(8 / 9)
    assert res["loss"] == pytest.approx(nll / len(paths), rel=1e-4)
    assert task.evaluate(MeanSign(), "validation")["accuracy"] == 1.0


def test_image_tensors_normalisation_and_batches(image_folder):
    task = open_data(DataSpec(path=str(image_folder)), MeanSign())
    x, y = task.splits["train"]
    assert x.dtype == torch.float32 and x.shape == (8, 1, 4, 4) and y.tolist() == [0] * 4 + [1] * 4
    assert x.mean().item() == pytest.approx(0, abs=1e-5) and x.std(correction=0).item() == pytest.approx(1, abs=1e-4)
    batches = list(task.train_batches(0, 3))
    assert len(batches) == task.steps_per_epoch(3) == 2 and batches[0][0].shape == (3, 1, 4, 4)
    again = open_data(DataSpec(path=str(image_folder)), MeanSign())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again.train_batches(0, 3)))  # deterministic
    assert task.example_inputs(20).shape == (20, 1, 4, 4)  # the test split, repeated
    calib = task.calibration_inputs(5, seed=1)
    assert calib.shape == (5, 1, 4, 4) and all(any(torch.equal(c, r) for r in x) for c in calib)  # train rows only
    loss = task.loss(MeanSign(), batches[0])
    assert loss.item() == pytest.approx(F.cross_entropy(MeanSign()(batches[0][0]), batches[0][1]).item())


def test_rgb_resize_and_mixed_sizes(tmp_path):
    root = tmp_path / "imgs"
    for i in range(20):
        _png(root / "x" / f"{i}.png", 10 * i, size=(4, 4))
        _png(root / "y" / f"{i}.png", 10 * i, size=(6, 5))
    with pytest.raises(
        NetslimError,
        match=r"images differ in size \(x/0.png is 4x4, y/0.png is 6x5, WxH\); "
        r"set image_size",
    ):
        open_data(DataSpec(path=str(root)), MeanSign())
    _png(root / "y" / "c.png", 30, mode="RGB")
    task = open_data(DataSpec(path=str(root), image_size=[3, 5], limit=2), MeanSign())
    assert task.spec.channels == 3 and len(task.spec.mean) == 3
    assert all(task.splits[s][0].shape[1:] == (3, 3, 5) and 1 <= len(task.splits[s][0]) <= 2 for s in SPLITS)
    assert len(task.splits["train"][0]) == 2
    fixed = open_data(DataSpec(path=str(root), image_size=4, channels=1, mean=[0.5], std=[0.25]), MeanSign())
    x = fixed.splits["train"][0]
    assert x.shape[1:] == (1, 4, 4) and x.min().item() >= -2.0 and x.max().item() <= 2.0  # (v/255 - .5) / .25


def test_image_processor_gives_size_and_normalisation(image_folder, tmp_path):
    model_dir = tmp_path / "vit"
    pil_processor = getattr(tf, "ViTImageProcessorPil", tf.ViTImageProcessor)  # no torchvision here
    processor = pil_processor(size={"height": 8, "width": 6}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2] * 3)
    processor.save_pretrained(model_dir)
    task = open_data(DataSpec(path=str(image_folder)), MeanSign(), source=str(model_dir))
    x = task.splits["test"][0]
    assert x.shape[1:] == (3, 8, 6) and task.spec.mean == (0.5, 0.4, 0.3)
    v = np.asarray(Image.open(image_folder / "test" / "a" / "0.png"), dtype=np.float64)[0, 0] / 255  # flat image
    assert x[0, :, 0, 0].tolist() == pytest.approx([(v - m) / 0.2 for m in (0.5, 0.4, 0.3)], abs=1e-5)


def test_bad_image_folders(tmp_path, image_folder):
    _png(tmp_path / "one" / "cat" / "1.png", 3)
    with pytest.raises(NetslimError, match="one class"):
        open_data(DataSpec(path=str(tmp_path / "one")), MeanSign())
    (image_folder / "val" / "a" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(NetslimError, match=r"bad\.png' cannot be read"):
        open_data(DataSpec(path=str(image_folder)), MeanSign())
    with pytest.raises(NetslimError, match="does not exist"):
        open_data(DataSpec(path=str(tmp_path / "missing")), MeanSign())


def test_sha256_is_filled_and_rebuilds_the_task(image_folder):
    task = open_data(DataSpec(path=str(image_folder)), MeanSign())
    d = task.describe()
    assert d["dataset"] == "files" and d["metric"] == "accuracy" and d["data"]["task"] == "image-classification"
    again = open_data(DataSpec(**json.loads(json.dumps(d["data"]))), MeanSign())
    assert again.spec == task.spec and torch.equal(again.splits["test"][0], task.splits["test"][0])
    p = image_folder / "train" / "a" / "0.png"
    p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1]))  # one bit of the (unchecked) PNG end CRC
    changed = open_data(DataSpec(**d["data"]), MeanSign())  # the stored hash is replaced by the data's own
    assert changed.spec.sha256 != task.spec.sha256 and torch.equal(changed.splits["test"][0], task.splits["test"][0])


def test_sha256_changes_with_one_byte(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(_prose(30))
    model = build_model("tiny-llama")
    a = open_data(DataSpec(path=str(f), seq_len=16), model).spec.sha256
    f.write_bytes(f.read_bytes()[:-2] + b"!\n")
    assert open_data(DataSpec(path=str(f), seq_len=16), model).spec.sha256 != a


# --------------------------------------------------------------- text classification
def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _labelled_rows(n=60, labels=("neg", "pos", "mid")):
    return [{"text": f"{WORDS[i % 12]} number {i}", "label": labels[i % len(labels)]} for i in range(n)]


def test_text_classification_labels_sorted_and_accuracy(tmp_path):
    model = _classifier(3)
    task = open_data(DataSpec(path=str(_jsonl(tmp_path / "d.jsonl", _labelled_rows()))), model, source="tiny-bert")
    assert task.spec.task == "text-classification" and task.classes == ("mid", "neg", "pos")
    texts = {s: task.splits[s][0] for s in SPLITS}
    assert sum(map(len, texts.values())) == 60 and all(texts[s] for s in SPLITS)
    assert all(files.hash_split(t) == s for s in SPLITS for t in texts[s])  # by the text's hash
    ids = dict(zip(texts["test"], task.splits["test"][1].tolist()))
    by_text = {r["text"]: r["label"] for r in _labelled_rows()}
    assert all(task.classes[i] == by_text[t] for t, i in ids.items())
    tok = byte_tokenizer("bert")
    with torch.no_grad():
        enc = tok(texts["test"], padding=True, return_tensors="pt")
        pred = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1)
    expected = (pred == task.splits["test"][1]).float().mean().item()
    assert task.evaluate(model, "test")["accuracy"] == pytest.approx(expected)
    inputs, y = next(task.train_batches(0, 4))
    assert set(inputs) == {"input_ids", "attention_mask"} and y.shape == (4,)
    assert task.calibration_inputs(3)["input_ids"].shape == (3, 128)
    assert task.forward(model, task.example_inputs(2)).shape == (2, 3)


def test_duplicate_texts_land_in_one_split(tmp_path):
    rows = [{"text": f"same text {i % 40}", "label": i % 2} for i in range(120)]
    task = open_data(
        DataSpec(path=str(_jsonl(tmp_path / "d.jsonl", rows)), limit=5), _classifier(2), source="tiny-bert"
    )
    seen = [set(task.splits[s][0]) for s in SPLITS]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert all(len(task.splits[s][0]) <= 5 for s in SPLITS)


def test_label2id_ints_and_label_errors(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", _labelled_rows())
    named = _classifier(3, label2id={"pos": 0, "neg": 1, "mid": 2}, id2label={0: "pos", 1: "neg", 2: "mid"})
    task = open_data(DataSpec(path=str(path)), named, source="tiny-bert")
    assert task.classes == ("pos", "neg", "mid")
    by_text = {r["text"]: r["label"] for r in _labelled_rows()}
    assert all(task.classes[i] == by_text[t] for t, i in zip(*task.splits["train"]))
    _jsonl(tmp_path / "u.jsonl", _labelled_rows(labels=("neg", "pos", "odd")))
    with pytest.raises(
        NetslimError,
        match=r"u\.jsonl:3: label 'odd' is not one of the model's labels "
        r"\(mid, neg, pos\)",
    ):
        open_data(DataSpec(path=str(tmp_path / "u.jsonl")), named, source="tiny-bert")
    (tmp_path / "i.csv").write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(40)))
    ints = open_data(DataSpec(path=str(tmp_path / "i.csv")), _classifier(3), source="tiny-bert")
    assert ints.classes == ("0", "1", "2") and set(ints.splits["train"][1].tolist()) == {0, 1}
    (tmp_path / "big.csv").write_text("text,label\n" + "".join(f"row {i},{i % 4}\n" for i in range(40)))
    with pytest.raises(NetslimError, match=r"big\.csv:5: label 3 is outside \[0, 3\)"):
        open_data(DataSpec(path=str(tmp_path / "big.csv")), _classifier(3), source="tiny-bert")
    with pytest.raises(NetslimError, match=r"3 label names \(mid, neg, pos\) but the model has num_labels=2"):
        open_data(DataSpec(path=str(path)), _classifier(2), source="tiny-bert")
    _jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "x"}])
    with pytest.raises(NetslimError, match="mixes integer labels"):
        open_data(DataSpec(path=str(tmp_path / "m.jsonl")), _classifier(2), source="tiny-bert")


def test_columns_split_column_and_split_files(tmp_path):
    rows = [{"sentence": f"text {i}", "y": i % 2, "part": ["train", "validation", "test"][i % 3]} for i in range(30)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(NetslimError, match=r"no column 'text' \(the text_column\); columns present: sentence, y, part"):
        open_data(DataSpec(path=str(path), task="text-classification"), _classifier(2), source="tiny-bert")
    spec = DataSpec(path=str(path), text_column="sentence", label_column="y", split_column="part")
    task = open_data(spec, _classifier(2), source="tiny-bert")
    assert task.splits["val"][0] == [r["sentence"] for r in rows if r["part"] == "validation"]
    folder = tmp_path / "splits"
    folder.mkdir()
    for s in ("train", "val", "test"):
        _jsonl(folder / f"{s}.jsonl", [{"text": f"{s} {i}", "label": i % 2} for i in range(4)])
    task = open_data(DataSpec(path=str(folder)), _classifier(2), source="tiny-bert")
    assert all(t.startswith(s) for s in SPLITS for t in task.splits[s][0])
    _jsonl(folder / "train.jsonl", [{"text": "ok", "label": 0}, {"text": " ", "label": 1}])
    with pytest.raises(NetslimError, match=r"train\.jsonl:2: empty text in column 'text'"):
        open_data(DataSpec(path=str(folder)), _classifier(2), source="tiny-bert")


def test_tokenizer_from_a_model_directory(tmp_path):
    model_dir = tmp_path / "clf"
    model = _classifier(2)
    model.save_pretrained(model_dir)
    byte_tokenizer("bert").save_pretrained(model_dir)
    loaded = tf.AutoModelForSequenceClassification.from_pretrained(model_dir)
    path = _jsonl(tmp_path / "d.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(30)])
    task = open_data(DataSpec(path=str(path)), loaded)  # source: the directory the model came from
    assert task.tokenizer("ab")["input_ids"] == byte_tokenizer("bert")("ab")["input_ids"]
    with pytest.raises(NetslimError, match="needs a tokenizer; pass source="):
        open_data(DataSpec(path=str(path)), _classifier(2))


# ----------------------------------------------------------------------- text tasks
def test_one_text_file_perplexity_is_exp_of_mean_nll(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text(_prose(60))
    model = build_model("tiny-llama")
    task = open_data(DataSpec(path=str(f), seq_len=16), model, source="tiny-llama")
    assert task.spec.task == "causal-lm" and task.metric == "perplexity"
    texts = {s: task.texts[c] for s, c in zip(SPLITS, ("calibration", "validation", "test"))}
    assert all(texts[s] for s in SPLITS) and "".join(t for s in SPLITS for t in texts[s]) == f.read_text()
    blocks = task.blocks("test")
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in blocks:
            logp = F.log_softmax(model(input_ids=ids[None]).logits[0, :-1], dim=-1)
            nll -= logp.gather(1, ids[1:, None]).sum().item()
            count += len(ids) - 1
    assert task.evaluate(model, "test")["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    train_rows = {tuple(r) for r in task.blocks("train").tolist()}
    assert all(tuple(r) in train_rows for r in task.calibration_inputs(2).tolist())
    d = task.describe()
    assert d["dataset"] == "files" and d["metric"] == "perplexity" and d["data"]["sha256"] == task.spec.sha256
    again = open_data(DataSpec(**d["data"]), model)  # as a runner rebuilds it from an artifact
    assert all(torch.equal(again.blocks(s), task.blocks(s)) for s in SPLITS)
    with pytest.raises(
        NetslimError,
        match=r"corpus\.txt: split 'val' has \d+ tokens: fewer than one block of 1024 "
        r"\(seq_len=1024\); set seq_len lower",
    ):
        open_data(DataSpec(path=str(f), seq_len=1024), model, source="tiny-llama")


def test_text_folder_splits_by_file_and_jsonl_text(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i}.md").write_text(f"Document {i} starts.\n" + _prose(3, seed=i))
    model = build_model("tiny-llama")
    task = open_data(DataSpec(path=str(folder), seq_len=8, limit=3), model)  # tokenizer: the model's zoo name
    for s, corpus in zip(SPLITS, ("calibration", "validation", "test")):
        assert sorted(int(t.split()[1]) for t in task.texts[corpus]) == [
            i for i in range(40) if files.hash_split(f"doc{i}.md") == s
        ]
        assert task.blocks(s).shape == (3, 8)
    rows = _jsonl(tmp_path / "t.jsonl", [{"text": _prose(4, seed=i)} for i in range(3)])
    lm = open_data(DataSpec(path=str(rows), seq_len=8), model)
    assert lm.spec.task == "causal-lm" and all(len(lm.blocks(s)) for s in SPLITS)


def test_embedding_fidelity_against_the_users_original(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text(_prose(40))
    mine = build_model("tiny-bert")
    with torch.no_grad():  # the user's own weights: no longer the zoo's tiny-bert
        for p in mine.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    task = open_data(DataSpec(path=str(f)), mine, source="tiny-bert")
    assert task.spec.task == "embedding" and task.metric == "fidelity"
    sentences = [set(task.sentences(s)) for s in SPLITS]
    assert all(sentences) and not (sentences[0] & sentences[1] or sentences[0] & sentences[2])
    assert task.evaluate(mine, "test")["fidelity"] == pytest.approx(1.0, abs=1e-5)
    assert task.evaluate(build_model("tiny-bert"), "test")["fidelity"] < 0.999
    with torch.no_grad():
        mine.encoder.layer[0].output.dense.weight.mul_(0.5)
    assert task.evaluate(mine, "test")["fidelity"] < 0.999  # the snapshot taken at open stays the reference


@pytest.mark.parametrize(
    "setup, model_name, task, match",
    [
        (
            "text",
            "tiny-bert",
            "causal-lm",
            "task 'causal-lm' does not fit an encoder \\(BertModel\\).*set --task embedding",
        ),
        ("text", "tiny-llama", "embedding", "task 'embedding' does not fit a causal LM.*set --task causal-lm"),
        ("images", "tiny-llama", "auto", "task 'image-classification' does not fit a causal LM \\(LlamaForCausalLM\\)"),
        ("labelled", "tiny-llama", "auto", "task 'text-classification' does not fit a causal LM.*set --task causal-lm"),
        ("images", "tiny-llama", "causal-lm", "d' holds no tables .* or text files"),
        ("text", "tiny-llama", "text-classification", r"d\.txt': expected tables \(\.csv"),
        (
            "labelled",
            "tiny-llama",
            "image-classification",
            r"d\.jsonl': expected class subfolders of images \(.*"
            r"\(images: give their folder\)",
        ),
    ],
)
def test_tasks_that_do_not_fit_the_model(tmp_path, setup, model_name, task, match):
    if setup == "images":
        for c in ("a", "b"):
            for i in range(10):
                _png(tmp_path / "d" / c / f"{i}.png", i)
        path = tmp_path / "d"
    elif setup == "text":
        path = tmp_path / "d.txt"
        path.write_text(_prose(20))
    else:
        path = _jsonl(tmp_path / "d.jsonl", _labelled_rows())
    with pytest.raises(NetslimError, match=match):
        open_data(DataSpec(path=str(path), task=task), build_model(model_name))


def test_text_for_a_plain_module_says_what_fits(tmp_path):
    (tmp_path / "d.txt").write_text(_prose(10))
    with pytest.raises(
        NetslimError, match="text without labels scores a causal LM .* got a plain nn.Module \\(MeanSign\\)"
    ):
        open_data(DataSpec(path=str(tmp_path / "d.txt")), MeanSign())


# ------------------------------------------------------------------- in-memory data
def test_task_from_dataloader_tuples_and_dicts():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    y[0] = 1 - y[0]  # one wrong on purpose
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    task = task_from_object(loader, MeanSign())
    assert task.evaluate(MeanSign(), "test")["accuracy"] == pytest.approx(0.9)
    assert task.describe() == {"dataset": "in-memory", "metric": "accuracy"}
    assert len(list(task.train_batches(0, 99))) == task.steps_per_epoch(99) == 3  # the loader's batches
    assert torch.equal(task.calibration_inputs(6), x[:6]) and task.example_inputs(12).shape == (12, 1, 2, 2)
    dicts = torch.utils.data.DataLoader([{"x": x[i], "labels": y[i]} for i in range(10)], batch_size=5)

    class Keyword(nn.Module):
        def forward(self, x):
            return MeanSign()(x)

    assert task_from_object(dicts, Keyword()).evaluate(Keyword())["accuracy"] == pytest.approx(0.9)
    pair = task_from_object((x, y), MeanSign())
    assert pair.evaluate(MeanSign(), "val")["accuracy"] == pytest.approx(0.9)
    assert pair.calibration_inputs(4, seed=0).shape == (4, 1, 2, 2)


def test_inputs_alone_calibrate_but_cannot_be_scored():
    x = torch.randn(8, 3)
    task = task_from_object(x, nn.Linear(3, 2))
    assert task.metric == "none" and task.calibration_inputs(5).shape == (5, 3)
    assert task.example_inputs(2).shape == (2, 3)
    with pytest.raises(NetslimError, match="no labels: training and evaluation need labels"):
        task.evaluate(nn.Linear(3, 2))
    with pytest.raises(NetslimError, match="need labels"):
        next(task.train_batches(0, 2))
    assert task_from_object(task, nn.Linear(3, 2)) is task
    with pytest.raises(NetslimError, match="y must be a 1-D integer tensor of 8 class ids"):
        task_from_object((x, torch.zeros(8)), nn.Linear(3, 2))
    with pytest.raises(NetslimError, match="labels must lie in \\[0, 3\\)"):
        task_from_object(({"input_ids": torch.zeros(8, 4, dtype=torch.long)}, torch.full((8,), 5)), _classifier(3))
    with pytest.raises(NetslimError, match="expected a path, a DataLoader"):
        task_from_object(3.5, nn.Linear(3, 2))
