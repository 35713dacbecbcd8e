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
{extra}
Short.

This sentence is the same in every page of the fake corpus, so it is dropped everywhere.

Example::

    this is code that must never become a paragraph of prose in the output files
"""
# section -> number of files; "tiny" (2 kept paragraphs) stays under --min-class.
SECTIONS = {"library": 12, "tutorial": 10, "howto": 8, "tiny": 1}
SPLITS = ("train", "val", "test")


def _extra(i: int, section: str) -> str:
    """0 to 3 more paragraphs on a page of the large sections, so files differ in size."""
    n = 0 if section in ("tiny", "top") else i % 4
    return "".join(f"\nExtra paragraph {k} of page {i} in {section}, also long enough to be kept.\n" for k in range(n))


@pytest.fixture
def fake_sources(tmp_path) -> Path:
    root = tmp_path / "_sources"
    i = 0
    for section, n in SECTIONS.items():
        for _ in range(n):
            path = root / section / f"page{i}.rst.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(PAGE.format(i=i, name=f"mod{i}", section=section, extra=_extra(i, section)))
            i += 1
    (root / "glossary.rst.txt").write_text(PAGE.format(i=i, name="glossary", section="top", extra=""))
    return root


def _records(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in SPLITS}


def _split_of_file(splits: dict[str, list[dict]]) -> dict[str, set[str]]:
    """file -> the splits its rows are in."""
    out: dict[str, set[str]] = {}
    for name, rows in splits.items():
        for r in rows:
            out.setdefault(r["file"], set()).add(name)
    return out


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


def test_docs_jsonl_labels_by_section_and_merges_small_classes(fake_sources, tmp_path, capsys):
    out = tmp_path / "docs"
    assert byo.main(["docs-jsonl", str(out), "--root", str(fake_sources), "--min-class", "10"]) == 0
    printed = capsys.readouterr().out
    everything = [r for rows in _records(out).values() for r in rows]
    for r in everything:
        section = r["file"].split("/")[0]
        # tiny (2 paragraphs) and the top-level glossary page (2) merge into "other" (4 < 10: dropped)
        assert r["label"] == section and section in ("library", "tutorial", "howto")
    assert len({r["file"] for r in everything}) == 30  # every page of library / tutorial / howto, none of the others
    texts = [r["text"] for r in everything]
    assert len(texts) == len(set(texts)) and not any("same in every page" in t for t in texts)
    assert not any("Short" in t or "code that" in t or t.endswith("..") for t in texts)
    assert "| library |" in printed and "stratified split" in printed


def test_stratified_split_puts_each_file_in_one_split_and_every_label_in_every_split(fake_sources, tmp_path, capsys):
    out = tmp_path / "docs"
    assert byo.main(["docs-jsonl", str(out), "--root", str(fake_sources), "--min-class", "3"]) == 0
    splits = _records(out)
    per_file = _split_of_file(splits)
    assert all(len(names) == 1 for names in per_file.values())  # (1) no file in two splits
    labels = {r["label"] for rows in splits.values() for r in rows}
    assert labels == {"library", "tutorial", "howto", "other"}
    for label in labels:
        files = {r["file"] for rows in splits.values() for r in rows if r["label"] == label}
        present = {name for name, rows in splits.items() if any(r["label"] == label for r in rows)}
        # (2) >= 3 files: in all three splits; "other" (tiny page + glossary: 2 files): val and train
        assert present == (set(SPLITS) if len(files) >= 3 else {"train", "val"}), label
    for label in ("library", "tutorial", "howto"):  # test and val: <= 10 % of the label each
        rows = [r for rows in splits.values() for r in rows if r["label"] == label]
        for name in ("test", "val"):
            assert 0 < 10 * sum(r["label"] == label for r in splits[name]) <= len(rows), (label, name)
    readme = (out / "README.md").read_text()
    assert "--split stratified" in readme and "SHA-1 hex digest" in readme and "| library |" in readme


def _in_sha1_order(*sizes: int) -> dict[str, int]:
    """File name -> size, the names ordered so that their SHA-1 order is the order of ``sizes``."""
    names = sorted((f"f{i}.rst.txt" for i in range(len(sizes))), key=byo.path_hash)
    return dict(zip(names, sizes))


def _splits(sizes: dict[str, int]) -> list[str]:
    got = byo.stratified_split(sizes)
    return [got[rel] for rel in sizes]


def test_stratified_split_rule_by_hand():
    # 10 % of 100 = 10: test takes 5 and 4 (skipping 50, which does not fit) and stops with 2 files left;
    # for val nothing fits, so it takes the smaller of 50 and 41; train the rest.
    assert _splits(_in_sha1_order(5, 50, 4, 41)) == ["test", "train", "test", "val"]
    # A first file far below 10 % (10.2): the reserves keep one file each for val and train.
    assert _splits(_in_sha1_order(1, 1, 100)) == ["test", "val", "train"]
    assert _splits(_in_sha1_order(50, 30, 20)) == ["train", "val", "test"]  # nothing fits: the smallest
    assert _splits(_in_sha1_order(5, 5)) == ["val", "train"]  # 2 files: no test
    assert _splits(_in_sha1_order(5)) == ["train"]
    sizes = _in_sha1_order(*[10] * 100)  # 1000 paragraphs: exactly 10 files each to test and val
    assert _splits(sizes) == ["test"] * 10 + ["val"] * 10 + ["train"] * 80
    assert byo.stratified_split(dict(reversed(sizes.items()))) == byo.stratified_split(sizes)  # order-free


def test_docs_jsonl_is_deterministic(fake_sources, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert byo.main(["docs-jsonl", str(out), "--root", str(fake_sources), "--min-class", "3"]) == 0
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "README.md"):  # (3) byte for byte
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_split_hash_reproduces_pydocs_split_of(fake_sources, tmp_path):
    out = tmp_path / "docs"
    assert byo.main(["docs-jsonl", str(out), "--root", str(fake_sources), "--min-class", "3", "--split", "hash"]) == 0
    splits = _records(out)
    for name, rows in splits.items():
        for r in rows:  # (4) the file's own pydocs split, whatever its label
            assert byo.SPLIT_NAMES[pydocs.split_of(r["file"])] == name
    assert len(_split_of_file(splits)) == 32
    assert "--split hash" in (out / "README.md").read_text()


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
