import json
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from netslim.core.errors import NetslimError
from netslim.data import files, pydocs
from netslim.data.files import SPLITS


def _png(path: Path, value: int = 0, size=(4, 4), mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)
    return path


def _lines(n: int) -> str:
    return "".join(f"line {i} of the text\n" for i in range(n))


# ------------------------------------------------------------------------ splitting
def test_hash_split_is_the_pydocs_rule_with_80_10_10_shares():
    keys = [f"dir/file{i}.txt" for i in range(4000)]
    assert all(
        pydocs.split_of(k) == {"train": "calibration", "val": "validation", "test": "test"}[files.hash_split(k)]
        for k in keys[:500]
    )
    share = {s: sum(files.hash_split(k) == s for k in keys) / len(keys) for s in SPLITS}
    assert share["train"] == pytest.approx(0.8, abs=0.03) and share["val"] == pytest.approx(0.1, abs=0.02)


def test_carve_keeps_explicit_splits_and_is_stable_when_items_are_added():
    items = [f"img{i}.png" for i in range(200)]
    before = files.carve_splits({"train": items}, key=str)
    after = files.carve_splits({"train": items + [f"new{i}.png" for i in range(50)]}, key=str)
    where = {item: s for s, xs in before.items() for item in xs}
    assert all(where[item] == s for s, xs in after.items() for item in xs if item in where)
    # Explicit test: kept whole; val carved from train only, test bucket items stay in train.
    given = {"train": items, "test": ["t1", "t2"]}
    out = files.carve_splits(given, key=str)
    assert out["test"] == ["t1", "t2"]
    assert set(out["val"]) == {i for i in items if files.hash_split(i) == "val"}
    assert set(out["train"]) == {i for i in items if files.hash_split(i) != "val"}


def test_one_document_is_cut_by_lines_into_three_contiguous_splits():
    text = _lines(50)
    out = files.split_documents({"train": [files.Document("a.txt", text, "a.txt")]}, "a.txt")
    assert [len(out[s]) for s in SPLITS] == [1, 1, 1]
    assert "".join(out[s][0] for s in SPLITS) == text  # contiguous, nothing lost or repeated
    assert [out[s][0].count("\n") for s in SPLITS] == [40, 5, 5]


def test_three_lines_are_enough_and_blank_lines_do_not_make_empty_parts():
    out = files.split_documents({"train": [files.Document("a", "one\n\n\ntwo\n\nthree\n\n", "a")]}, "a")
    assert [out[s][0].split() for s in SPLITS] == [["one"], ["two"], ["three"]]
    with pytest.raises(NetslimError, match="a: too little text to make a 'val' split.*3 non-empty lines"):
        files.split_documents({"train": [files.Document("a", "one\ntwo\n", "a")]}, "a")
    with pytest.raises(NetslimError, match="a: no train text"):
        files.split_documents({"test": [files.Document("a", "one\ntwo\nthree\n", "a")]}, "a")


def test_many_documents_split_by_file_and_missing_splits_by_lines():
    docs = [files.Document(f"d{i}.txt", f"text {i}\n" * 3, f"d{i}.txt") for i in range(60)]
    out = files.split_documents({"train": docs}, "folder")
    for s in SPLITS:
        assert sorted(out[s]) == sorted(d.text for d in docs if files.hash_split(d.key) == s)
    # Explicit val and test: train stays whole.
    given = {"train": docs[:2], "val": docs[2:3], "test": docs[3:4]}
    assert files.split_documents(given, "f") == {s: [d.text for d in given[s]] for s in SPLITS}
    # Explicit test only, one train file: val cut from train's lines (90/10).
    one = files.split_documents({"train": [files.Document("t", _lines(20), "t")], "test": docs[:1]}, "f")
    assert [one[s][0].count("\n") for s in ("train", "val")] == [18, 2] and one["test"] == [docs[0].text]


def test_spread_takes_evenly_spaced_items():
    assert files.spread(list(range(10)), 3) == [0, 3, 6]
    assert files.spread([1, 2], 5) == [1, 2] and files.spread([1, 2], None) == [1, 2]


# --------------------------------------------------------------------------- files
def test_content_hash_tracks_bytes_and_names_not_read_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"hello"), b.write_bytes(b"world")

    def digest(order):
        h = files.ContentHash()
        for p in order:
            h.read(p, p.name)
        return h.hexdigest()

    first = digest([a, b])
    assert first == digest([b, a])
    b.write_bytes(b"worle")
    assert digest([a, b]) != first
    b.write_bytes(b"world")
    h = files.ContentHash()
    h.read(a, "a.txt"), h.read(b, "c.txt")
    assert h.hexdigest() != first


def test_data_kind_and_listing(tmp_path):
    _png(tmp_path / "imgs" / "cat" / "1.png")
    (tmp_path / "imgs" / "README.md").write_text("about")
    (tmp_path / "tab").mkdir()
    (tmp_path / "tab" / "train.jsonl").write_text("{}\n")
    (tmp_path / "tab" / "notes.md").write_text("x")
    (tmp_path / "txt" / ".hidden").mkdir(parents=True)
    (tmp_path / "txt" / "a.md").write_text("x")
    (tmp_path / "txt" / ".hidden" / "b.md").write_text("x")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")
    kinds = {d: files.data_kind(tmp_path / d) for d in ("imgs", "tab", "txt", "ds")}
    assert kinds == {"imgs": "images", "tab": "table", "txt": "text", "ds": "datasets"}
    assert files.list_files(tmp_path / "txt", files.TEXT_SUFFIXES) == ["a.md"]
    assert files.data_kind(tmp_path / "txt" / "a.md") == "text"
    with pytest.raises(NetslimError, match="does not exist"):
        files.data_kind(tmp_path / "nope")
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(NetslimError, match=r"x\.bin': expected class subfolders of images .* or tables .* or text"):
        files.data_kind(tmp_path / "x.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NetslimError, match="empty' holds no class subfolders of images"):
        files.data_kind(tmp_path / "empty")
    # A task that reads text looks past the images of a folder of notes with figures.
    (tmp_path / "imgs" / "notes.txt").write_text("text")
    assert files.data_kind(tmp_path / "imgs", ("table", "text")) == "text"


@pytest.mark.parametrize(
    "entries, match",
    [
        (["train", "cat"], "mixes split entries"),
        (["train", "val", "validation"], "both 'val' and 'validation'"),
        (["val", "test"], "no train split"),
    ],
)
def test_bad_explicit_split_layouts(entries, match):
    with pytest.raises(NetslimError, match=match):
        files.explicit_splits(entries, "data")


def test_explicit_splits_by_name():
    assert files.explicit_splits(["cat", "dog"], "d") is None
    assert files.explicit_splits(["Train", "validation"], "d") == {"train": "Train", "val": "validation"}


def test_text_documents_empty_file_and_bad_encoding(tmp_path):
    (tmp_path / "a.txt").write_text("Some text.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("More.\n")
    docs = files.read_documents(tmp_path, files.ContentHash())
    assert [d.key for d in docs["train"]] == ["a.txt", "sub/b.md"]
    (tmp_path / "c.txt").write_text("  \n")
    with pytest.raises(NetslimError, match=r"c\.txt' is empty"):
        files.read_documents(tmp_path, files.ContentHash())
    (tmp_path / "c.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(NetslimError, match=r"c\.txt: not UTF-8 text \(byte 3\)"):
        files.read_documents(tmp_path, files.ContentHash())


def test_text_folder_with_split_files(tmp_path):
    for name in ("train.txt", "validation.md", "test.txt"):
        (tmp_path / name).write_text(f"{name}\n")
    docs = files.read_documents(tmp_path, files.ContentHash())
    assert {s: [d.text for d in v] for s, v in docs.items()} == {
        "train": ["train.txt\n"],
        "val": ["validation.md\n"],
        "test": ["test.txt\n"],
    }


def test_units_are_sentences_of_paragraphs():
    text = "First one. Second  one!\nstill second?\n\nNew paragraph here"
    assert files.units(text) == ["First one.", "Second one!", "still second?", "New paragraph here"]


def test_token_blocks_error_names_the_split_and_fix():
    class Tok:
        eos_token_id = 0

        def __call__(self, texts, **kw):
            return {"input_ids": [[1] * len(t) for t in texts]}

    blocks = files.token_blocks(Tok(), ["abcde", "fgh"], seq_len=3)
    assert blocks.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]  # EOS (0) between documents
    assert files.token_blocks(Tok(), ["abcde", "fgh"], seq_len=3, num_blocks=1).shape == (1, 3)
    with pytest.raises(NetslimError, match="split 'val' has 6 tokens: fewer than one block of 8; lower"):
        files.token_blocks(Tok(), ["abcde"], seq_len=8, what="split 'val'", fix="; lower")


# -------------------------------------------------------------------------- tables
def test_csv_and_jsonl_rows_name_their_lines(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\nhello,a\n"two\nlines",3\n')
    t = files.read_table(tmp_path / "d.csv", files.ContentHash())
    rows = t.rows["train"]
    assert t.columns == ("text", "label") and [r.where for r in rows] == [f"{tmp_path}/d.csv:2", f"{tmp_path}/d.csv:4"]
    assert [files.label_of(r, "label") for r in rows] == ["a", 3]  # a cell of digits is an int
    (tmp_path / "d.jsonl").write_text('{"text": "x", "label": 1}\n\n{"text": "", "label": 2, "extra": 0}\n')
    t = files.read_table(tmp_path / "d.jsonl", files.ContentHash())
    assert t.columns == ("text", "label", "extra") and t.rows["train"][1].where.endswith("d.jsonl:3")
    with pytest.raises(NetslimError, match=r"d\.jsonl:3: empty text in column 'text'"):
        files.text_of(t.rows["train"][1], "text")
    with pytest.raises(NetslimError, match=r"no column 'sentence' \(the text_column\); columns present: text, label"):
        files.require_column(t, "sentence", field="text_column")


@pytest.mark.parametrize("value", [1.5, True, None, [1], ""])
def test_labels_must_be_ints_or_strings(value):
    row = files.Row("d.jsonl:7", {"label": value})
    with pytest.raises(NetslimError, match="d.jsonl:7: label .* must be an integer or a non-empty string"):
        files.label_of(row, "label")


def test_bad_table_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n{"text": oops}\n')
    with pytest.raises(NetslimError, match=r"a\.jsonl:2: not valid JSON"):
        files.read_table(tmp_path / "a.jsonl", files.ContentHash())
    (tmp_path / "a.jsonl").write_text('["x"]\n')
    with pytest.raises(NetslimError, match=r"a\.jsonl:1: expected a JSON object per line; got list"):
        files.read_table(tmp_path / "a.jsonl", files.ContentHash())
    (tmp_path / "b.csv").write_text("text,label\nx,1,extra\n")
    with pytest.raises(NetslimError, match=r"b\.csv:2: more fields than the header's 2"):
        files.read_table(tmp_path / "b.csv", files.ContentHash())
    with pytest.raises(NetslimError, match=r"a\.jsonl:9 \(column 'split'\): split 'dev' is not one of train, val"):
        files.split_of_row(files.Row(f"{tmp_path}/a.jsonl:9", {"split": "dev"}), "split")


def test_table_folder_of_split_files(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps({"text": split, "label": 0}) + "\n")
    t = files.read_table(tmp_path, files.ContentHash())
    assert {s: [r.values["text"] for r in rows] for s, rows in t.rows.items()} == {
        "train": ["train"],
        "val": ["val"],
        "test": ["test"],
    }
    (tmp_path / "extra.jsonl").write_text("{}\n")
    with pytest.raises(NetslimError, match="mixes split entries"):
        files.read_table(tmp_path, files.ContentHash())


def _fake_datasets(monkeypatch, saved):
    """A stand-in for the optional ``datasets`` package: what netslim calls of it, no more."""

    class Dataset(list):
        column_names = ("text", "label")

        @staticmethod
        def from_parquet(path):
            return Dataset(saved[path])

    class DatasetDict(dict):
        pass

    mod = types.ModuleType("datasets")
    mod.Dataset, mod.DatasetDict = Dataset, DatasetDict
    mod.load_from_disk = lambda path: (
        DatasetDict({k: Dataset(v) for k, v in saved[path].items()})
        if isinstance(saved[path], dict)
        else Dataset(saved[path])
    )
    monkeypatch.setitem(sys.modules, "datasets", mod)


def test_parquet_and_saved_datasets_rows(tmp_path, monkeypatch):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(4)]
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    saved = {str(tmp_path / "d.parquet"): rows}
    for name, parts in (
        ("dd", {"train": rows[:2], "validation": rows[2:3], "test": rows[3:]}),
        ("one", rows),
        ("odd", {"a": rows, "b": rows}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / ("dataset_dict.json" if isinstance(parts, dict) else "dataset_info.json")).write_text("{}")
        saved[str(tmp_path / name)] = parts
    _fake_datasets(monkeypatch, saved)
    t = files.read_table(tmp_path / "d.parquet", files.ContentHash())
    assert t.columns == ("text", "label") and [r.where for r in t.rows["train"]][-1].endswith("d.parquet row 3")
    t = files.read_table(tmp_path / "dd", files.ContentHash())
    assert {s: [r.values["text"] for r in v] for s, v in t.rows.items()} == {
        "train": ["t0", "t1"],
        "val": ["t2"],
        "test": ["t3"],
    }
    assert len(files.read_table(tmp_path / "one", files.ContentHash()).rows["train"]) == 4
    with pytest.raises(NetslimError, match="DatasetDict splits a, b are not train / val / test"):
        files.read_table(tmp_path / "odd", files.ContentHash())


def test_parquet_needs_the_datasets_extra(tmp_path):
    try:
        import datasets  # noqa: F401
    except ImportError:
        (tmp_path / "d.parquet").write_bytes(b"PAR1")
        with pytest.raises(NetslimError, match=r"pip install netslim\[data\]"):
            files.read_table(tmp_path / "d.parquet", files.ContentHash())
        return
    pytest.skip("datasets is installed: the parquet path is covered by test_file_tasks")


# -------------------------------------------------------------------------- images
def test_image_folder_classes_and_explicit_splits(tmp_path):
    for split in ("train", "test"):
        for cls in ("dog", "cat"):
            for i in range(30 if split == "train" else 3):
                _png(tmp_path / split / cls / f"{i}.png")
    folder = files.scan_image_folder(tmp_path)
    assert folder.classes == ("cat", "dog")
    assert len(folder.files["test"]) == 6 and all(rel.startswith("test/") for rel, _ in folder.files["test"])
    train = [rel for rel, _ in folder.files["train"]]
    assert {rel for rel, _ in folder.files["val"]} == {
        f"train/{c}/{i}.png"
        for c in ("cat", "dog")
        for i in range(30)
        if files.hash_split(f"train/{c}/{i}.png") == "val"
    }
    assert all(files.hash_split(r) != "val" for r in train)
    assert all(c == (0 if "/cat/" in rel else 1) for s in SPLITS for rel, c in folder.files[s])


def test_image_folder_errors(tmp_path):
    _png(tmp_path / "one" / "cat" / "1.png")
    with pytest.raises(NetslimError, match="has one class \\('cat'\\)"):
        files.scan_image_folder(tmp_path / "one")
    _png(tmp_path / "loose" / "1.png")
    _png(tmp_path / "loose" / "cat" / "2.png")
    with pytest.raises(NetslimError, match="must sit in class subfolders.*'1.png'"):
        files.scan_image_folder(tmp_path / "loose")
    _png(tmp_path / "few" / "a" / "1.png"), _png(tmp_path / "few" / "b" / "1.png")
    with pytest.raises(NetslimError, match="the (val|test) split got no images \\(2 in all"):
        files.scan_image_folder(tmp_path / "few")


def test_read_image_and_corrupt_files(tmp_path):
    p = _png(tmp_path / "a.png", value=7, size=(3, 2))
    h = files.ContentHash()
    t = files.read_image(p, "a.png", hasher=h, prepare=lambda img: img)
    assert t.shape == (1, 2, 3) and t.dtype == torch.uint8 and int(t[0, 0, 0]) == 7
    rgb = files.read_image(_png(tmp_path / "c.png", 9, mode="RGB"), "c.png", hasher=h, prepare=lambda img: img)
    assert rgb.shape == (3, 4, 4) and rgb[:, 0, 0].tolist() == [9, 0, 246]
    assert files.image_header(p, "a.png") == ("L", (3, 2))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(NetslimError, match=r"Image '.*b\.png' cannot be read"):
        files.image_header(bad, "b.png")
    trunc = tmp_path / "t.png"
    trunc.write_bytes(p.read_bytes()[:40])
    with pytest.raises(NetslimError, match=r"t\.png' cannot be read"):
        files.read_image(trunc, "t.png", hasher=h, prepare=lambda img: img)
