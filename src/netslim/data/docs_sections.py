"""A labelled text-classification set from the Python docs: paragraphs labelled by top-level section.

The ``docs-sections`` task (:mod:`netslim.train.docs_task`) and ``benchmarks/byo_data.py
docs-jsonl`` (the same records as JSONL files, ``--data file.jsonl``) both read it from here,
so the zoo task and the files a user would pass are the same paragraphs in the same splits.

Rules (:data:`DOCS_RULES`, also written into the JSONL folder's README):

* files: every ``**/*.rst.txt`` under the docs ``_sources`` folder (:func:`netslim.data.pydocs.corpus_root`),
  in sorted relative path order;
* paragraphs: prose only (:func:`netslim.data.pydocs._prose_paragraphs`), without the "." that
  function appends after a final . ! ? : or ;, at least ``min_chars`` long; a text that occurs
  more than once anywhere is dropped, every copy, so no text is in two splits or under two labels;
* label: the first path component (library, reference, tutorial, howto, c-api, using, faq, ...);
  pages directly under ``_sources`` are "other"; a section with fewer than ``min_class``
  paragraphs merges into "other", and "other" is dropped if it is still that small;
* split: **by file**, so no file is in two splits: stratified per label (:func:`stratified_split`),
  or the plain path hash of :func:`netslim.data.pydocs.split_of` (``split="hash"``).

With the Debian python3.11-doc sources and the defaults: 30,510 paragraphs, 11 labels.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from pathlib import Path

from netslim.core.errors import NetslimError, bad_param
from netslim.data import pydocs

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"calibration": "train", "validation": "val", "test": "test"}  # pydocs split -> ours
OTHER = "other"
DEFAULT_MIN_CLASS = 200
DEFAULT_MIN_CHARS = 40  # drops "Example.", "Notes:." and other stubs left by the markup filter
SPLIT_RULES = ("stratified", "hash")  # the first is the default
HELD_OUT_PERCENT = 10  # stratified: test and val each take the files that keep them <= 10 % of a label

DOCS_RULES = """\
- Files: every `**/*.rst.txt` under the Python docs `_sources` folder, in sorted relative path order.
- Paragraphs: `netslim.data.pydocs._prose_paragraphs` (prose only: no code, directives, tables,
  headings), without the "." it appends to a paragraph that already ends in . ! ? : or ;.
  Kept if at least {min_chars} characters long. A text that occurs more than once (boilerplate
  such as "Return the result of the call on success, ...") is dropped, every copy of it, so no
  text is in two splits or under two labels.
- Label: the top-level section, i.e. the first path component under `_sources` (library,
  whatsnew, c-api, howto, reference, ...); pages directly under `_sources` (about, bugs,
  glossary, ...) are labelled "other".
- Small classes: a section with fewer than {min_class} kept paragraphs (all splits together) is
  merged into "other"; if "other" then has fewer than {min_class}, it is dropped.
- whatsnew is kept in full (it is large, but library is larger still; no cap).
- Split (`--split {split}`): whole files, so no file (and no paragraph) is in two splits.
{split_rule}- Deterministic: same sources, same files, same order, same splits.
"""
SPLIT_RULE_TEXT = {
    "stratified": """\
  Stratified by label, with T = the label's paragraphs (all splits): the label's files are
  ordered by the SHA-1 hex digest of their relative path (ties: the path). Test walks that
  order and takes every file that fits, i.e. keeps test's paragraphs <= {percent} % of T,
  skipping those that do not; if no file fits, it takes the smallest one (ties: SHA-1 order).
  Val then does the same over the files test left; train gets the rest. Reserves: test stops
  while only 2 of the label's files are left, val while only 1 is left. So test and val each
  hold <= {percent} % of a label (more only when not even one file fits), and every label with
  3 files or more has rows in train, val and test (2 files: val and train; 1 file: train).
""",
    "hash": """\
  `pydocs.split_of(relpath)` on every file (SHA-1 of the path: 80/10/10 calibration /
  validation / test -> train / val / test), whatever its label. A label with few files can
  miss from val or test entirely (see the counts).
""",
}


def rules_text(
    min_class: int = DEFAULT_MIN_CLASS, min_chars: int = DEFAULT_MIN_CHARS, split: str = SPLIT_RULES[0]
) -> str:
    """The rules above as Markdown, for a README next to the data."""
    _check_options(min_class, min_chars, split)
    return DOCS_RULES.format(
        min_class=min_class,
        min_chars=min_chars,
        split=split,
        split_rule=SPLIT_RULE_TEXT[split].format(percent=HELD_OUT_PERCENT),
    )


def _check_options(min_class: int, min_chars: int, split: str) -> None:
    for name, value in (("min_class", min_class), ("min_chars", min_chars)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_param("docs_sections", name, "an int >= 1", value)
    if split not in SPLIT_RULES:
        raise bad_param("docs_sections", "split", f"one of {', '.join(SPLIT_RULES)}", split)


# ------------------------------------------------------------------------- records
def sorted_relpaths(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob(pydocs.PATTERN) if p.is_file())


def paragraphs(path: Path) -> list[str]:
    """Prose paragraphs of one docs file, without the "." pydocs appends after a final . ! ? : or ;."""
    paras = pydocs._prose_paragraphs(pydocs.read_text(path))
    return [p[:-1] if len(p) > 1 and p[-1] == "." and p[-2] in ".!?:;" else p for p in paras]


def section_of(relpath: str) -> str:
    return relpath.split("/", 1)[0] if "/" in relpath else OTHER


def docs_records(root: Path, min_chars: int) -> list[dict]:
    """Every kept paragraph as ``{"text", "label", "file"}``, labelled by section (before merging)."""
    records = [
        {"text": text, "label": section_of(rel), "file": rel}
        for rel in sorted_relpaths(root)
        for text in paragraphs(root / rel)
        if len(text) >= min_chars
    ]
    copies = Counter(r["text"] for r in records)
    return [r for r in records if copies[r["text"]] == 1]


def merge_small_classes(records: list[dict], min_class: int) -> list[dict]:
    """Classes under ``min_class`` records become "other"; "other" under ``min_class`` is dropped."""
    sizes = Counter(r["label"] for r in records)
    merged = [{**r, "label": r["label"] if sizes[r["label"]] >= min_class else OTHER} for r in records]
    other = sum(r["label"] == OTHER for r in merged)
    return [r for r in merged if r["label"] != OTHER or other >= min_class]


# -------------------------------------------------------------------------- splits
def path_hash(relpath: str) -> str:
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()


def stratified_split(sizes: dict[str, int], percent: int = HELD_OUT_PERCENT) -> dict[str, str]:
    """The split ("train" / "val" / "test") of each file of ONE label; ``sizes``: paragraphs per file.

    In SHA-1 order of the paths, test takes every file that keeps it <= ``percent`` % of the
    label's paragraphs (none fits: the smallest file), then val does the same over what is
    left, then train takes the rest; test leaves at least 2 files, val at least 1.
    """
    total = sum(sizes.values())
    left = sorted(sizes, key=lambda rel: (path_hash(rel), rel))
    out = {}
    for split, reserve in (("test", 2), ("val", 1)):  # reserve: files kept for the splits after it
        taken = []
        for rel in list(left):
            if len(left) <= reserve:
                break
            if 100 * (sum(sizes[t] for t in taken) + sizes[rel]) <= percent * total:
                taken.append(rel)
                left.remove(rel)
        if not taken and len(left) > reserve:
            smallest = min(left, key=lambda rel: sizes[rel])  # min keeps the first in SHA-1 order on ties
            taken.append(smallest)
            left.remove(smallest)
        out.update(dict.fromkeys(taken, split))
    out.update(dict.fromkeys(left, "train"))
    return out


def split_files(records: list[dict], rule: str) -> dict[str, str]:
    """The split of every file of ``records`` under ``rule`` (one of :data:`SPLIT_RULES`)."""
    if rule == "hash":
        return {r["file"]: SPLIT_NAMES[pydocs.split_of(r["file"])] for r in records}
    sizes: dict[str, Counter] = {}
    for r in records:  # every paragraph of a file has the file's label
        sizes.setdefault(r["label"], Counter())[r["file"]] += 1
    return {rel: split for per_file in sizes.values() for rel, split in stratified_split(per_file).items()}


def build(
    root: str | os.PathLike | None = None,
    *,
    min_class: int = DEFAULT_MIN_CLASS,
    min_chars: int = DEFAULT_MIN_CHARS,
    split: str = SPLIT_RULES[0],
) -> dict[str, list[dict]]:
    """The records of each split (``train``, ``val``, ``test``), in corpus order, read now."""
    _check_options(min_class, min_chars, split)
    base = pydocs.corpus_root(root)
    records = merge_small_classes(docs_records(base, min_chars), min_class)
    if len({r["label"] for r in records}) < 2:
        raise NetslimError(
            f"Docs sections under {str(base)!r}: fewer than 2 labels have {min_class} paragraphs "
            f"of >= {min_chars} characters; lower min_class or point to the full docs sources."
        )
    where = split_files(records, split)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in records:
        out[where[r["file"]]].append(r)
    return out


@functools.lru_cache(maxsize=4)
def _cached(root: str, min_class: int, min_chars: int, split: str) -> tuple[tuple[tuple[str, str, str], ...], ...]:
    built = build(root, min_class=min_class, min_chars=min_chars, split=split)
    return tuple(tuple((r["text"], r["label"], r["file"]) for r in built[s]) for s in SPLITS)


def load(
    root: str | os.PathLike | None = None,
    *,
    min_class: int = DEFAULT_MIN_CLASS,
    min_chars: int = DEFAULT_MIN_CHARS,
    split: str = SPLIT_RULES[0],
) -> dict[str, list[dict]]:
    """:func:`build`, read once per process (the corpus is parsed in ~1.5 s)."""
    _check_options(min_class, min_chars, split)
    rows = _cached(str(pydocs.corpus_root(root).resolve()), min_class, min_chars, split)
    return {s: [{"text": t, "label": lab, "file": f} for t, lab, f in part] for s, part in zip(SPLITS, rows)}


def labels(
    root: str | os.PathLike | None = None, *, min_class: int = DEFAULT_MIN_CLASS, min_chars: int = DEFAULT_MIN_CHARS
) -> list[str]:
    """The sorted labels (class ids are positions in this list)."""
    return sorted({r["label"] for rows in load(root, min_class=min_class, min_chars=min_chars).values() for r in rows})


def count_table(by_split: dict[str, list[dict]]) -> str:
    """Markdown table: paragraphs per label (rows, largest first) and split (columns)."""
    counts = {s: Counter(r["label"] for r in rows) for s, rows in by_split.items()}
    names = sorted(set().union(*counts.values()), key=lambda lab: (-sum(c[lab] for c in counts.values()), lab))
    lines = ["| label | " + " | ".join(by_split) + " |", "|---|" + "---:|" * len(by_split)]
    lines += [f"| {lab} | " + " | ".join(str(counts[s][lab]) for s in by_split) + " |" for lab in names]
    lines.append("| total | " + " | ".join(str(len(rows)) for rows in by_split.values()) + " |")
    return "\n".join(lines)
