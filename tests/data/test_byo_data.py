"""benchmarks/byo_data.py (inputs of the bring-your-own journeys) and the user's CNN file, at tiny sizes."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from netslim.data import fashion_mnist, pydocs

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_byo_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses / typing look the module up by name
    spec.loader.exec_module(module)
    return module


byo = _load(BENCH / "byo_data.py")

PAGE = """Page {i}
=======

The {name} module number {i} explains how the scheduler of section {section} hands out work to its workers.

Another paragraph of page {i} in {section}, long enough to pass the length filter of the task.

Short.

This sentence is the same in every page of the fake corpus, so it is dropped everywhere.

Example::

    this is code that must never become a paragraph of prose in the output files
"""
# section -> number of files; "tiny" (2 kept paragraphs) stays under --min-class.
SECTIONS = {"library": 12, "tutorial": 10, "howto": 8, "tiny": 1}


@pytest.fixture
def fake_sources(tmp_path) -> Path:
    root = tmp_path / "_sources"
    i = 0
    for section, n in SECTIONS.items():
        for _ in range(n):
            path = root / section / f"page{i}.rst.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(PAGE.format(i=i, name=f"mod{i}", section=section))
            i += 1
    (root / "glossary.rst.txt").write_text(PAGE.format(i=i, name="glossary", section="top"))
    return root


def _records(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "val", "test")}


def test_images_layout_and_pixels_equal_the_idx_source(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "imgs"
    assert byo.main(["images", str(out), "--limit", "20"]) == 0
    assert "40 PNGs" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    for split in ("train", "test"):
        images, labels = fashion_mnist.load_split(split)
        files = sorted(out.glob(f"{split}/*/*.png"))
        assert len(files) == 20
        assert {p.parent.name for p in files} <= set(byo.CLASS_DIRS)
        for path in files:
            i = int(path.stem)
            assert path.parent.name == byo.CLASS_DIRS[int(labels[i])]
            with Image.open(path) as img:
                assert img.mode == "L" and img.size == (28, 28)
                assert np.array_equal(np.asarray(img), images[i].numpy())
    assert byo.CLASS_DIRS[0] == "t-shirt_top" and byo.CLASS_DIRS[9] == "ankle_boot"


def test_existing_output_is_skipped_unless_forced(tmp_path, capsys):
    out = tmp_path / "imgs"
    byo.main(["images", str(out), "--limit", "2"])
    marker = out / "marker"
    marker.write_text("kept")
    byo.main(["images", str(out), "--limit", "2"])
    assert "skipped" in capsys.readouterr().out.splitlines()[-1] and marker.exists()
    byo.main(["images", str(out), "--limit", "3", "--force"])
    assert not marker.exists() and len(list(out.glob("train/*/*.png"))) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["imgs"]  # no temporary left behind


def test_docs_jsonl_splits_by_file_labels_by_section_and_merges_small_classes(fake_sources, tmp_path, capsys):
    out = tmp_path / "docs"
    assert byo.main(["docs-jsonl", str(out), "--root", str(fake_sources), "--min-class", "10"]) == 0
    printed = capsys.readouterr().out
    splits = _records(out)
    everything = [r for rows in splits.values() for r in rows]
    for name, rows in splits.items():
        for r in rows:
            assert byo.SPLIT_NAMES[pydocs.split_of(r["file"])] == name  # the file's own split, hence one split
            section = r["file"].split("/")[0]
            # tiny (2 paragraphs) and the top-level glossary page (2) merge into "other" (5 < 10: dropped)
            assert r["label"] == section and section in ("library", "tutorial", "howto")
    per_file = {r["file"] for r in everything}
    assert len(per_file) == 30  # every page of library / tutorial / howto, none of the others
    texts = [r["text"] for r in everything]
    assert len(texts) == len(set(texts)) and not any("same in every page" in t for t in texts)
    assert not any("Short" in t or "code that" in t or t.endswith("..") for t in texts)
    assert "| library |" in printed and "Rules" in (out / "README.md").read_text()


def test_docs_jsonl_keeps_other_when_it_is_large_enough(fake_sources, tmp_path):
    out = tmp_path / "docs"
    byo.main(["docs-jsonl", str(out), "--root", str(fake_sources), "--min-class", "3"])
    everything = [r for rows in _records(out).values() for r in rows]
    other = {r["file"] for r in everything if r["label"] == "other"}
    assert other == {"tiny/page30.rst.txt", "glossary.rst.txt"}
    assert {r["label"] for r in everything} == {"library", "tutorial", "howto", "other"}


def test_text_corpus_is_one_txt_of_the_first_files(fake_sources, tmp_path, capsys):
    out = tmp_path / "corpus.txt"
    assert byo.main(["text-corpus", str(out), "--root", str(fake_sources), "--files", "3"]) == 0
    text = out.read_text()
    first = sorted(p.relative_to(fake_sources).as_posix() for p in fake_sources.rglob("*.rst.txt"))[:3]
    assert first == ["glossary.rst.txt", "howto/page22.rst.txt", "howto/page23.rst.txt"]  # sorted paths
    assert all(f"{name} module" in text for name in ("glossary", "mod22", "mod23"))
    assert "mod24 module" not in text and "mod0 module" not in text and "code that" not in text
    assert "\n\n" in text and "3 files" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert byo.main(["minilm-classifier", str(tmp_path / "m"), "--labels", str(tmp_path)]) == 2
    assert "run docs-jsonl first" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_user_cnn_maps_images_to_ten_logits():
    user = _load(BENCH / "user_models" / "fmnist_cnn.py")
    torch.manual_seed(0)
    model = user.build().eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert 80_000 < sum(p.numel() for p in model.parameters()) < 150_000
    assert "netslim" not in (BENCH / "user_models" / "fmnist_cnn.py").read_text().split('"""', 2)[2]
