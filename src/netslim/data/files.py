"""A user's data on disk: which files netslim reads, how it splits them, what it refuses.

This module only lists, reads, splits, hashes and validates files; turning the result into a
:class:`~netslim.train.tasks.Task` for a model is :mod:`netslim.train.file_tasks`.

What a data path may be
-----------------------
* **An image folder**: class subfolders of PNG / JPEG files (``.png``, ``.jpg``, ``.jpeg``;
  other files are not read), decoded with Pillow. Class ids are the sorted class folder names.
  Images below a class folder may sit in further subfolders. Images directly in the top
  folder, a single class, an unreadable or corrupt image, or no image at all: an error.
* **A table**: a ``.csv`` file (header row, UTF-8, ``,`` separated) or a ``.jsonl`` file (one
  JSON object per line; blank lines skipped); a ``.parquet`` file or a folder written by
  ``datasets.Dataset.save_to_disk`` is read with the optional ``datasets`` package
  (``pip install netslim[data]``). A folder of tables is read as one table.
* **Text**: ``.txt`` / ``.md`` files (UTF-8), or a folder of them (searched recursively).
  An empty file (nothing but whitespace) is an error.

In a folder, files and folders whose name starts with ``.`` are skipped, and the kind is
decided in this order: a ``datasets`` folder (``dataset_info.json`` or ``dataset_dict.json``),
images, tables, text (so a ``README.md`` beside the images or tables is not read).

Splits (train / val / test), deterministic
------------------------------------------
1. **Explicit splits win.** A folder whose top-level entries are *all* named ``train``,
   ``val`` (or ``validation``) or ``test`` (folders by name, files by stem: ``train.jsonl``)
   holds explicit splits; ``train`` is then required. Mixing split names and other entries
   is an error. In a table, ``split_column`` (values as above) is explicit too.
2. **The hash rule** fills every split that is not given: an item (a file by its path
   relative to the data folder, POSIX separators; a table row by its text) goes by the
   SHA-1 of that key: the first 8 hex digits as an integer, modulo 100, map ``[0, 80)`` to
   train, ``[80, 90)`` to val, ``[90, 100)`` to test (:func:`hash_split`, the rule of
   :mod:`netslim.data.pydocs`). Items whose bucket is a split that *was* given stay in
   train: with ``train/`` and ``test/`` folders, val is the ~10 % of ``train/`` in the
   val bucket. Hashing the key, not a position, keeps an item in its split when other
   items are added or removed, and puts repeated texts into one split.
3. **Text documents** (for language models) are split by file with the hash rule only when
   that leaves no split empty; otherwise the lines of each document are cut into contiguous
   parts of 80 / 10 / 10 % of its non-empty lines (:func:`split_documents`), so one file
   gives all three splits.

Content hash
------------
:class:`ContentHash`: SHA-256 over the sorted relative paths of every file read, each with
the SHA-256 of its bytes. Each file is read once; its bytes are hashed and parsed from
the same buffer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from netslim.core.errors import NetslimError

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
# Upper bounds (exclusive) of each split's hash bucket in [0, 100): 80 / 10 / 10.
_BUCKETS = (("train", 80), ("val", 90), ("test", 100))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_SUFFIXES = (".csv", ".jsonl")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".md")
DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json")
# Pillow modes read as one channel.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_GLOB = re.compile(r"[*?\[]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ENCODE_CHUNK = 16  # documents per tokenizer call: batched, yet stops early when blocks are full

T = TypeVar("T")


def reason(err: BaseException) -> str:
    """The first line of an exception's message (shortened), or its type: the "why" of a one-line error."""
    text = str(err).strip()
    return shorten(text.splitlines()[0]) if text else type(err).__name__


def shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (and "...") for quoting in a one-line message."""
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------------ splitting
def hash_split(key: str) -> str:
    """The split of ``key`` (a relative POSIX path or a text) by the SHA-1 rule above."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    return next(name for name, upper in _BUCKETS if bucket < upper)


def split_name(value: Any, where: str) -> str:
    """``train`` / ``val`` / ``test`` for a split label (``validation`` means val)."""
    name = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
    if name is None:
        raise NetslimError(f"{where}: split {shorten(repr(value))} is not one of train, val, validation, test.")
    return name


def carve_splits(given: Mapping[str, Sequence[T]], key: Callable[[T], str]) -> dict[str, list[T]]:
    """Every split: those in ``given`` as they are; the others carved out of ``given["train"]``.

    An item of train moves to a split that is not given when its :func:`hash_split` bucket is
    that split; all other train items stay in train.
    """
    out = {s: list(given.get(s, ())) for s in SPLITS}
    missing = [s for s in SPLITS if s not in given]
    if missing:
        keep = []
        for item in out["train"]:
            s = hash_split(key(item))
            (out[s] if s in missing else keep).append(item)
        out["train"] = keep
    return out


def spread(items: Sequence[T], n: int | None) -> list[T]:
    """At most ``n`` items, evenly spaced over ``items`` (first one included); None: all."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


@dataclass(frozen=True)
class Document:
    """A text to split: ``key`` decides its hash split, ``where`` names it in messages."""

    key: str
    text: str
    where: str


def _line_parts(text: str, shares: Sequence[tuple[str, int]]) -> list[tuple[str, str]] | None:
    """``text`` cut at line boundaries into contiguous parts sized by ``shares`` (percent of its
    non-empty lines), each with at least one non-empty line; None if it has too few lines."""
    lines = text.splitlines(keepends=True)
    full = [i for i, ln in enumerate(lines) if ln.strip()]
    if len(full) < len(shares):
        return None
    cuts, acc = [0], 0
    for k, (_, pct) in enumerate(shares[:-1]):
        acc += pct
        lo, hi = cuts[-1] + 1, len(full) - (len(shares) - 1 - k)  # keep a line for every later part
        cuts.append(min(max(acc * len(full) // 100, lo), hi))
    bounds = [full[c] for c in cuts[1:]]  # each part starts at a non-empty line
    starts, ends = [0, *bounds], [*bounds, len(lines)]
    return [(s, "".join(lines[a:b])) for (s, _), a, b in zip(shares, starts, ends)]


def split_documents(given: Mapping[str, Sequence[Document]], what: str) -> dict[str, list[str]]:
    """Texts of every split (rule 3 of the module docstring); ``what`` names the data in errors."""
    if not given.get("train"):
        raise NetslimError(f"{what}: no train text; give a train split (or no split at all).")
    by_hash = carve_splits(given, key=lambda d: d.key)
    if all(by_hash[s] for s in SPLITS):
        return {s: [d.text for d in by_hash[s]] for s in SPLITS}
    missing = {s for s in SPLITS if s not in given}
    widths = {"val": 10, "test": 10}
    widths["train"] = 100 - sum(widths[s] for s in missing)
    shares = [(s, widths[s]) for s in SPLITS if s == "train" or s in missing]
    out: dict[str, list[str]] = {s: [d.text for d in given.get(s, ())] if s != "train" else [] for s in SPLITS}
    for doc in given["train"]:
        parts = _line_parts(doc.text, shares)
        for split, part in parts if parts is not None else [("train", doc.text)]:
            out[split].append(part)
    empty = [s for s in SPLITS if not out[s]]
    if empty:
        raise NetslimError(
            f"{what}: too little text to make a {empty[0]!r} split: each file is cut by lines "
            "(80/10/10 % of its non-empty lines) and needs at least 3 non-empty lines; add text "
            "or give train / val / test files."
        )
    return out


# --------------------------------------------------------------------------- files
class ContentHash:
    """SHA-256 of the files read: sorted relative paths, each with the SHA-256 of its bytes."""

    def __init__(self) -> None:
        self._files: dict[str, str] = {}

    def read(self, path: Path, rel: str) -> bytes:
        """The bytes of ``path`` (named ``rel`` in the hash), hashed as they are read."""
        try:
            data = path.read_bytes()
        except OSError as e:
            raise NetslimError(f"Cannot read {str(path)!r}: {e.strerror or e}.") from None
        self._files[rel] = hashlib.sha256(data).hexdigest()
        return data

    def add(self, path: Path, rel: str) -> None:
        """Hash a file that another library parses (read in 1 MiB chunks, never whole)."""
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError as e:
            raise NetslimError(f"Cannot read {str(path)!r}: {e.strerror or e}.") from None
        self._files[rel] = h.hexdigest()

    def hexdigest(self) -> str:
        h = hashlib.sha256()
        for rel in sorted(self._files):
            h.update(f"{rel}\0{self._files[rel]}\n".encode())
        return h.hexdigest()


def _visible(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def list_files(root: Path, suffixes: Iterable[str]) -> list[str]:
    """Files below folder ``root`` with one of ``suffixes`` (any case), as sorted relative
    POSIX paths; hidden files and folders are skipped."""
    suffixes = tuple(suffixes)
    found = (p.relative_to(root) for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    return sorted(r.as_posix() for r in found if _visible(r))


KINDS = ("images", "table", "text")  # "table" includes saved `datasets` folders
_KIND_TEXT = {
    "images": "class subfolders of images (.png, .jpg, .jpeg)",
    "table": "tables (.csv, .jsonl, .parquet, a saved `datasets` folder)",
    "text": "text files (.txt, .md)",
}
_KIND_SUFFIXES = {"images": IMAGE_SUFFIXES, "table": TABLE_SUFFIXES + PARQUET_SUFFIXES, "text": TEXT_SUFFIXES}


def data_kind(path: Path, kinds: Sequence[str] = KINDS) -> str:
    """``"datasets"``, ``"images"``, ``"table"`` or ``"text"``: what a data path holds, looking
    only for ``kinds`` (in the order of the module docstring); an error when it holds none."""
    if not path.exists():
        hint = " (wildcards are not expanded: give the folder that holds the files)" if _GLOB.search(str(path)) else ""
        raise NetslimError(
            f"Data path {str(path)!r} does not exist{hint}; give an image folder, a CSV / JSONL / "
            "parquet file, text files (.txt, .md) or a folder of them."
        )
    wanted = " or ".join(_KIND_TEXT[k] for k in KINDS if k in kinds)
    if path.is_file():
        kind = next((k for k in ("table", "text") if path.suffix.lower() in _KIND_SUFFIXES[k]), None)
        if kind not in kinds:
            raise NetslimError(
                f"Data file {str(path)!r}: expected {wanted}"
                + (" (images: give their folder)." if "images" in kinds else ".")
            )
        return kind
    if "table" in kinds and any((path / m).is_file() for m in DATASETS_MARKERS):
        return "datasets"
    for kind in KINDS:
        if kind in kinds and list_files(path, _KIND_SUFFIXES[kind]):
            return kind
    raise NetslimError(f"Data folder {str(path)!r} holds no {wanted}.")


def explicit_splits(entries: Iterable[str], where: str) -> dict[str, str] | None:
    """``{split: entry}`` when the top-level entry names (folder names or file stems) are all
    split names; None when none is; an error when they mix, repeat a split or lack train."""
    names = sorted(set(entries))
    splits = {n: SPLIT_NAMES[n.lower()] for n in names if n.lower() in SPLIT_NAMES}
    if not splits:
        return None
    others = [n for n in names if n not in splits]
    if others:
        raise NetslimError(
            f"{where}: mixes split entries ({', '.join(splits)}) with others "
            f"({shorten(', '.join(others))}); use only train / val / test at the top, or no split "
            "names at all."
        )
    out: dict[str, str] = {}
    for name, split in splits.items():
        if split in out:
            raise NetslimError(f"{where}: both {out[split]!r} and {name!r} hold the {split} split; keep one.")
        out[split] = name
    if "train" not in out:
        raise NetslimError(f"{where}: has {', '.join(sorted(out.values()))} but no train split; add a train entry.")
    return out


def decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise NetslimError(f"{where}: not UTF-8 text (byte {e.start}); save it as UTF-8.") from None


# ------------------------------------------------------------------------------ text
def read_documents(path: Path, hasher: ContentHash) -> dict[str, list[Document]]:
    """The text files of ``path`` (a file or a folder), by explicit split (``{"train": all}``
    when none is given). Keys are relative paths; empty files are an error."""
    if path.is_file():
        rels, base = [path.name], path.parent
    else:
        rels, base = list_files(path, TEXT_SUFFIXES), path

    def top(rel: str) -> str:  # what names an explicit split: a top folder, or a top-level file's stem
        return rel.split("/", 1)[0] if "/" in rel else Path(rel).stem

    given = explicit_splits(map(top, rels), str(path)) if path.is_dir() else None
    out: dict[str, list[Document]] = {}
    for rel in rels:
        split = "train" if given is None else SPLIT_NAMES[top(rel).lower()]
        where = str(base / rel)
        text = decode_text(hasher.read(base / rel, rel), where)
        if not text.strip():
            raise NetslimError(f"Text file {where!r} is empty; remove it or add text.")
        out.setdefault(split, []).append(Document(rel, text, where))
    return out


def units(text: str) -> list[str]:
    """Sentences of ``text`` for embeddings: paragraphs (split at blank lines) cut after
    ``.``, ``!`` or ``?`` followed by white space, white space collapsed, empty ones dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        flat = " ".join(para.split())
        out.extend(s for s in _SENTENCE_END.split(flat) if s)
    return out


# ------------------------------------------------------------------------ tokenised
def _separator_id(tokenizer: Any) -> int:
    for attr in ("eos_token_id", "sep_token_id"):
        tid = getattr(tokenizer, attr, None)
        if isinstance(tid, int):
            return tid
    raise NetslimError(f"Tokenizer {type(tokenizer).__name__} has no EOS (or SEP) token to separate documents.")


def _token_stream(tokenizer: Any, documents: Iterable[str]) -> Iterator[list[int]]:
    """Token ids of each document followed by the separator, in order."""
    sep = _separator_id(tokenizer)
    docs = iter(documents)
    while chunk := [d for _, d in zip(range(_ENCODE_CHUNK), docs)]:
        # verbose=False: documents are longer than model_max_length on purpose; blocks cut them.
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            yield [*ids, sep]


def token_blocks(
    tokenizer: Any,
    documents: Iterable[str],
    *,
    seq_len: int,
    num_blocks: int | None = None,
    what: str = "Text",
    fix: str = "",
) -> torch.Tensor:
    """``documents`` joined with EOS and cut into ``(N, seq_len)`` int64 blocks.

    The tail shorter than ``seq_len`` is dropped. ``num_blocks`` keeps the first N blocks
    (and stops tokenising once they are full). Fewer tokens than one block: an error
    "``what`` has N tokens: ...``fix``".
    """
    want = None if num_blocks is None else num_blocks * seq_len
    ids: list[int] = []
    for doc in _token_stream(tokenizer, documents):
        ids.extend(doc)
        if want is not None and len(ids) >= want:
            break
    n = len(ids) // seq_len if want is None else min(len(ids), want) // seq_len
    if n == 0:
        raise NetslimError(f"{what} has {len(ids)} tokens: fewer than one block of {seq_len}{fix}.")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)  # (N, L)


# -------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Row:
    """One record of a table: ``where`` ("data.csv:12", "data.parquet row 3") names it in messages."""

    where: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Table:
    rows: dict[str, list[Row]]  # by explicit split; {"train": every row} when none is given
    columns: tuple[str, ...]  # every column name seen, in first-seen order
    where: str


def _csv_rows(text: str, where: str) -> tuple[list[Row], list[str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = [Row(f"{where}:{reader.line_num}", r) for r in reader]
    except csv.Error as e:
        raise NetslimError(f"{where}:{reader.line_num}: not valid CSV ({e}).") from None
    if reader.fieldnames is None:
        raise NetslimError(f"{where}: empty CSV file (no header row).")
    for r in rows:
        if None in r.values:  # more fields than the header names
            raise NetslimError(f"{r.where}: more fields than the header's {len(reader.fieldnames)}.")
    return rows, list(reader.fieldnames)


def _jsonl_rows(text: str, where: str) -> tuple[list[Row], list[str]]:
    rows, columns = [], {}
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise NetslimError(f"{where}:{i}: not valid JSON ({e.msg}).") from None
        if not isinstance(obj, dict):
            raise NetslimError(f"{where}:{i}: expected a JSON object per line; got {type(obj).__name__}.")
        columns.update(dict.fromkeys(obj))
        rows.append(Row(f"{where}:{i}", obj))
    return rows, list(columns)


def _datasets_module():
    try:
        import datasets
    except ImportError:
        raise NetslimError(
            "Parquet files and saved `datasets` folders need the optional package datasets: pip install netslim[data]."
        ) from None
    return datasets


def _load(read: Callable[[], Any], where: str) -> Any:
    try:
        return read()
    except (OSError, ValueError) as e:  # arrow's errors are ValueErrors
        raise NetslimError(f"{where}: cannot be read by datasets ({reason(e)}).") from None


def _dataset_rows(ds: Any, where: str) -> tuple[list[Row], list[str]]:
    return [Row(f"{where} row {i}", r) for i, r in enumerate(ds)], list(ds.column_names)


def _read_datasets(path: Path, hasher: ContentHash) -> Table:
    """A ``save_to_disk`` folder (a Dataset, or a DatasetDict whose keys are split names)."""
    datasets = _datasets_module()
    for p in sorted(path.rglob("*")):
        if p.is_file() and _visible(p.relative_to(path)):
            hasher.add(p, p.relative_to(path).as_posix())
    loaded = _load(lambda: datasets.load_from_disk(str(path)), str(path))
    if isinstance(loaded, datasets.DatasetDict):
        parts = dict(loaded)
        given = explicit_splits(parts, str(path))
        if given is None and len(parts) != 1:
            raise NetslimError(
                f"{path}: DatasetDict splits {shorten(', '.join(parts))} are not train / val / test; "
                "rename them (or save one Dataset)."
            )
        given = given or {"train": next(iter(parts))}
    else:
        parts, given = {"train": loaded}, {"train": "train"}
    rows: dict[str, list[Row]] = {}
    columns: dict[str, None] = {}
    for split, name in given.items():
        r, c = _dataset_rows(parts[name], f"{path} [{name}]")
        rows[split] = r
        columns.update(dict.fromkeys(c))
    return Table(rows, tuple(columns), str(path))


def _read_table_file(path: Path, rel: str, hasher: ContentHash) -> tuple[list[Row], list[str]]:
    where = str(path)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        datasets = _datasets_module()
        hasher.add(path, rel)
        return _dataset_rows(_load(lambda: datasets.Dataset.from_parquet(str(path)), where), where)
    text = decode_text(hasher.read(path, rel), where)
    return _csv_rows(text, where) if suffix == ".csv" else _jsonl_rows(text, where)


def read_table(path: Path, hasher: ContentHash) -> Table:
    """Rows of a table file, a folder of them (by explicit split when the file stems are split
    names, else one table) or a ``datasets`` folder."""
    if path.is_dir() and any((path / m).is_file() for m in DATASETS_MARKERS):
        return _read_datasets(path, hasher)
    if path.is_file():
        rels, base = [path.name], path.parent
    else:
        rels, base = list_files(path, TABLE_SUFFIXES + PARQUET_SUFFIXES), path
    given = explicit_splits((Path(r).stem for r in rels), str(path)) if path.is_dir() else None
    if given is not None and len(given) != len(rels):
        raise NetslimError(
            f"{path}: split tables must sit at the top of the folder, one file per split; "
            f"found {shorten(', '.join(rels))}."
        )
    rows: dict[str, list[Row]] = {}
    columns: dict[str, None] = {}
    for rel in rels:
        r, c = _read_table_file(base / rel, rel, hasher)
        split = "train" if given is None else SPLIT_NAMES[Path(rel).stem.lower()]
        rows.setdefault(split, []).extend(r)
        columns.update(dict.fromkeys(c))
    return Table(rows, tuple(columns), str(path))


def require_column(table: Table, column: str, *, field: str) -> None:
    if column not in table.columns:
        raise NetslimError(
            f"{table.where}: no column {column!r} (the {field}); columns present: "
            f"{shorten(', '.join(table.columns) or '(none)')}; name the right one with {field}: in "
            "the data options (a recipe's data:)."
        )


def _value(row: Row, column: str) -> Any:
    if column not in row.values:
        raise NetslimError(f"{row.where}: no {column!r} field.")
    return row.values[column]


def text_of(row: Row, column: str) -> str:
    """The non-empty text in ``column`` of ``row``."""
    value = _value(row, column)
    if not isinstance(value, str):
        raise NetslimError(f"{row.where}: {column!r} must be text; got {shorten(repr(value))}.")
    if not value.strip():
        raise NetslimError(f"{row.where}: empty text in column {column!r}; remove the row or fill it in.")
    return value


def label_of(row: Row, column: str) -> int | str:
    """An int label, or a label name (a CSV cell of digits is an int)."""
    value = _value(row, column)
    if isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"-?\d+", s):
            return int(s)
        if s:
            return s
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise NetslimError(
        f"{row.where}: label {shorten(repr(value))} in column {column!r} must be an integer or a non-empty string."
    )


def split_of_row(row: Row, column: str) -> str:
    return split_name(_value(row, column), f"{row.where} (column {column!r})")


# -------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageFolder:
    root: Path
    files: dict[str, list[tuple[str, int]]]  # split -> (relative path, class id), sorted by path
    classes: tuple[str, ...]


def _class_images(base: Path, prefix: str) -> dict[str, list[str]]:
    """``{class folder: [relative image paths]}`` of ``base``; images directly in it: an error."""
    loose = [
        p.name
        for p in base.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    if loose:
        raise NetslimError(
            f"Image folder {str(base)!r}: images must sit in class subfolders "
            f"(e.g. {base / 'cat' / loose[0]}); found {loose[0]!r} at the top."
        )
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = list_files(d, IMAGE_SUFFIXES)
        if found:
            out[d.name] = [f"{prefix}{d.name}/{r}" for r in found]
    return out


def scan_image_folder(root: Path) -> ImageFolder:
    """The images of ``root`` by split and class (splits by the rules in the module docstring)."""
    tops = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    given = explicit_splits(tops, f"Image folder {str(root)!r}")
    by_split = (
        {s: _class_images(root / name, f"{name}/") for s, name in (given or {}).items()}
        if given
        else {"train": _class_images(root, "")}
    )
    classes = tuple(sorted({c for per_class in by_split.values() for c in per_class}))
    if not classes:
        raise NetslimError(
            f"Image folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class subfolders."
        )
    if len(classes) < 2:
        raise NetslimError(
            f"Image folder {str(root)!r} has one class ({classes[0]!r}); classification needs at "
            "least two class subfolders."
        )
    ids = {c: i for i, c in enumerate(classes)}
    labelled = {
        s: sorted((rel, ids[c]) for c, rels in per_class.items() for rel in rels) for s, per_class in by_split.items()
    }
    files = carve_splits(labelled, key=lambda item: item[0])
    for s in SPLITS:
        if not files[s]:
            n = sum(len(v) for v in files.values())
            raise NetslimError(
                f"Image folder {str(root)!r}: the {s} split got no images ({n} in all, split "
                "80/10/10 by a hash of each path); add images or give train/ val/ test/ folders."
            )
    return ImageFolder(root, files, classes)


def image_header(path: Path, rel: str):
    """Mode and size of an image without decoding its pixels (Pillow reads the header only)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode, img.size  # (W, H)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise NetslimError(f"Image {str(path)!r} cannot be read ({reason(e)}); replace or remove it.") from None


def read_image(path: Path, rel: str, *, hasher: ContentHash, prepare: Callable[[Any], Any]) -> torch.Tensor:
    """The image at ``path`` as a uint8 tensor (C, H, W), after ``prepare(PIL image)`` (which
    converts the mode and resizes)."""
    import numpy as np
    from PIL import Image

    data = hasher.read(path, rel)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(prepare(img), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise NetslimError(f"Image {str(path)!r} cannot be read ({reason(e)}); replace or remove it.") from None
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)  # (C, H, W)
