"""A user's own data as a :class:`~netslim.train.tasks.Task`, so that every method runs on it.

* :func:`open_data` turns a :class:`DataSpec` (a path plus options) into a task, inferring the
  task from the data and the model. In-memory data (a ``DataLoader``, tensors, a ``Task``):
  :func:`netslim.train.object_tasks.task_from_object`.
* Which files are read and how they are split: :mod:`netslim.data.files`.

Task from data and model (``task: auto``)
-----------------------------------------
* an image folder -> ``image-classification`` (metric accuracy): fits a user's module that maps
  ``(N, C, H, W)`` float images to class logits, or a ``*ForImageClassification``;
* a table (CSV / JSONL / parquet / ``datasets``) with the label column ->
  ``text-classification`` (accuracy): ``model(input_ids, attention_mask).logits``, needs a
  ``*ForSequenceClassification``;
* text (``.txt`` / ``.md`` files, or a table without the label column: its text column) ->
  ``causal-lm`` (perplexity on blocks of ``seq_len`` tokens) for a ``*ForCausalLM``, or
  ``embedding`` (fidelity: mean cosine between the sentence embeddings of the model and of
  the user's *original* model, ``reference()``) for a transformers encoder without a head.

A task that does not fit the model is an error naming the task, the model kind and the fix.
:func:`~netslim.train.object_tasks.model_kind` decides the kind from the class and config alone.

Images
------
Mode: 1 channel if ``channels: 1``, or the image processor / model config says so, or every
image is grayscale; else RGB. Size (H, W): ``image_size`` if given, else the image
processor's (``height``/``width``; or ``shortest_edge`` then a centre crop to ``crop_size``,
square if none); else every image must already share one size. Resampling: the processor's,
else bilinear (Pillow). Values: pixels times the processor's ``rescale_factor`` (1/255), then
``(x - mean) / std`` per channel with ``mean`` / ``std`` from the spec if given, else from
the processor, else measured on the train split (population std; 1 where a channel is flat).
The mean and std used are written into the resolved spec. Tensors: float32 (N, C, H, W).

Labels (text classification)
----------------------------
All labels integers (JSON ints, or CSV cells of digits): ids, each in ``[0, num_labels)`` of
the model. All strings: mapped through the model config's ``label2id`` when it names real
labels (not the ``LABEL_0``, ``LABEL_1``, ... defaults), an unknown label being an error;
otherwise the sorted distinct names are ids 0..K-1 and K must equal ``num_labels``. Mixed
integers and names: an error. ``classes`` on the task lists the names by id.

Text
----
Causal LM: the documents of each split joined with EOS and cut into ``seq_len`` blocks (the
tail is dropped; ``limit`` keeps the first N blocks); calibration blocks come from train.
Embedding: the sentences of each split's documents (:func:`netslim.data.files.units`), a
sentence repeated anywhere kept once, at its first place (train, then val, then test);
``limit`` keeps N evenly spread.

Other rules
-----------
Tokenizer and image processor come from ``source`` (a Hugging Face model directory or a
built-in name), else from the zoo name a netslim model carries, else from the directory the
model was loaded from (``config._name_or_path``); text tasks without one are an error.
``limit`` keeps at most N samples per split, evenly spread over the split (first included)
for images and rows. The task's ``spec`` is resolved: absolute ``path``, ``task``, for images
``channels`` / ``mean`` / ``std``, and ``sha256``: the content hash
(:class:`netslim.data.files.ContentHash`) of the data as read, replacing any hash the given
spec carried (compare the two to tell whether the data changed since). ``describe()`` gives
``{"dataset": "files", "metric": ..., "data": <resolved spec>}``, and
``open_data(DataSpec(**d["data"]), model)`` rebuilds the same task. Same data and seed:
same splits, same batches.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator
from torch import nn

from netslim.core.config import build_config
from netslim.core.errors import NetslimError
from netslim.data import files
from netslim.data.calibration import take_samples
from netslim.data.files import SPLITS
from netslim.train.lm_tasks import CausalLMTask, EmbeddingTask, _corpus_split, encode_texts
from netslim.train.object_tasks import ClassifierTask, TensorClassificationTask, describe_spec, epoch_order, model_kind
from netslim.train.tasks import Task

TaskName = Literal["auto", "image-classification", "text-classification", "causal-lm", "embedding"]
_FITS = {
    "image-classification": ("image_classification", "module"),
    "text-classification": ("text_classification",),
    "causal-lm": ("causal_lm",),
    "embedding": ("embedding",),
}
# How messages name a model kind and a task setting (CLI --task, recipe data: {task: ...}).
_KIND_WORDS = {
    "causal_lm": "a causal LM",
    "text_classification": "a sequence classifier",
    "image_classification": "an image classifier",
    "embedding": "an encoder",
    "module": "a plain nn.Module",
}
_FIXES = {
    "image-classification": "image folders need a model mapping (N, C, H, W) images to class logits "
    "(your CNN, or a *ForImageClassification)",
    "text-classification": "text classification needs a *ForSequenceClassification with num_labels = the "
    "number of classes; to score text only, set --task causal-lm or embedding",
    "causal-lm": "perplexity needs a causal LM (*ForCausalLM / *LMHeadModel); for an encoder set --task embedding",
    "embedding": "embedding fidelity needs a transformers encoder without a head (AutoModel, e.g. BertModel); "
    "for a causal LM set --task causal-lm",
}


# ----------------------------------------------------------------------- the spec
class DataSpec(BaseModel):
    """Where a user's data is and how to read it (see the module docstrings for the rules)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1)  # a file or folder
    task: TaskName = "auto"
    text_column: str = Field("text", min_length=1)
    label_column: str = Field("label", min_length=1)
    split_column: str | None = None  # explicit split per row: train / val|validation / test
    image_size: int | tuple[int, int] | None = None  # resize to (H, W) (an int: square)
    channels: Literal[1, 3] | None = None  # image channels; None: from the processor / the images
    mean: tuple[float, ...] | None = None  # per-channel normalisation; None: processor, else train split
    std: tuple[float, ...] | None = None
    seq_len: StrictInt = Field(512, ge=2)  # causal-LM block length in tokens
    max_length: StrictInt = Field(128, ge=1)  # truncation for text classification / embedding
    limit: StrictInt | None = Field(None, ge=1)  # at most this many samples per split (quick runs)
    seed: StrictInt = 0
    sha256: str | None = None  # content hash, (re)computed when the data is opened

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, v):
        if v is not None and min((v, v) if isinstance(v, int) else v) < 1:
            raise ValueError("must be an int >= 1 or [height, width] of ints >= 1")
        return v

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, v, info):
        if v is not None and (len(v) not in (1, 3) or (info.field_name == "std" and min(v) <= 0)):
            raise ValueError(
                "must list 1 or 3 numbers (one per channel)" + (", each > 0" if info.field_name == "std" else "")
            )
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v):
        if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be 64 lowercase hex digits")
        return v

    def size_hw(self) -> tuple[int, int] | None:
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size


def parse_data_spec(value: str | os.PathLike | Mapping | DataSpec, where: str = "data") -> DataSpec:
    """A :class:`DataSpec` from a path, a mapping (a recipe's ``data:``) or a spec."""
    if isinstance(value, DataSpec):
        return value
    if isinstance(value, (str, os.PathLike)):
        value = {"path": os.fspath(value)}
    if not isinstance(value, Mapping):
        raise NetslimError(
            f"{where}: expected a path or a mapping with 'path' (and task, text_column, ...); "
            f"got {type(value).__name__}."
        )
    return build_config(DataSpec, None, value, where)  # echoed values are capped there


# ----------------------------------------------------------------------- the model
def _check_fit(task: str, model: nn.Module, where: str) -> None:
    kind = model_kind(model)
    if kind not in _FITS[task]:
        raise NetslimError(
            f"{where}: task {task!r} does not fit {_KIND_WORDS[kind]} ({type(model).__name__}); {_FIXES[task]}."
        )


# --------------------------------------------------------------------- text classification
class TextClassificationTask(ClassifierTask):
    """Texts and label ids per split; batches are tokenised on the fly (padded to the longest)."""

    def __init__(
        self,
        tokenizer: Any,
        splits: Mapping[str, tuple[list[str], torch.Tensor]],
        *,
        spec: DataSpec,
        classes: tuple[str, ...],
        eval_batch_size: int = 32,
    ):
        self.tokenizer, self.splits, self.spec, self.classes = tokenizer, dict(splits), spec, tuple(classes)
        self.seed, self.max_length, self.eval_batch_size = spec.seed, spec.max_length, eval_batch_size

    def _encode(self, texts: list[str], fixed: bool = False) -> dict[str, torch.Tensor]:
        return encode_texts(self.tokenizer, texts, self.max_length, fixed)

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        texts, y = self.splits["train"]
        for idx in epoch_order(len(texts), batch_size, self.seed, epoch):
            yield self._encode([texts[i] for i in idx.tolist()]), y[idx]

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.splits["train"][0]) // batch_size)

    def _eval_batches(self, split: str) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        texts, y = self.splits[split]
        for i in range(0, len(texts), self.eval_batch_size):
            yield self._encode(texts[i : i + self.eval_batch_size]), y[i : i + self.eval_batch_size]

    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        texts = self.splits["test"][0]
        return self._encode([texts[i % len(texts)] for i in range(batch_size)], fixed=True)  # (B, max_length)

    def calibration_inputs(self, num_samples: int, seed: int = 0) -> dict[str, torch.Tensor]:
        texts = self.splits["train"][0]
        idx = take_samples(torch.arange(len(texts)), num_samples, seed)
        return self._encode([texts[i] for i in idx.tolist()], fixed=True)  # (n, max_length)


# --------------------------------------------------------------------------- text
class TextFilesLMTask(CausalLMTask):
    """:class:`CausalLMTask` on a user's texts (``texts[split]``: the documents of each split)."""

    name = "files"

    def __init__(self, tokenizer: Any, texts: Mapping[str, list[str]], *, spec: DataSpec):
        super().__init__(
            model_name="files", seq_len=spec.seq_len, limit=spec.limit, seed=spec.seed, tokenizer=tokenizer
        )
        self.texts, self.spec = {_corpus_split(s): t for s, t in texts.items()}, spec

    def documents(self, corpus: str) -> list[str]:
        return self.texts[corpus]

    def _too_short(self, corpus: str) -> tuple[str, str]:
        split = next(s for s in SPLITS if _corpus_split(s) == corpus)
        return f"{self.spec.path}: split {split!r}", f" (seq_len={self.seq_len}); set seq_len lower or give more text"

    describe = describe_spec


class TextFilesEmbeddingTask(EmbeddingTask):
    """:class:`EmbeddingTask` on the sentences of a user's texts, against ``reference()``."""

    name = "files"

    def __init__(
        self, tokenizer: Any, sentences: Mapping[str, list[str]], *, spec: DataSpec, reference: Callable[[], nn.Module]
    ):
        super().__init__(
            model_name="files",
            max_length=spec.max_length,
            limit=spec.limit,
            seed=spec.seed,
            tokenizer=tokenizer,
            reference=reference,
        )
        self.units, self.spec = {_corpus_split(s): u for s, u in sentences.items()}, spec

    def corpus_sentences(self, corpus: str) -> list[str]:
        return self.units[corpus]

    describe = describe_spec


# ------------------------------------------------------------------------ sources
def _source_of(model: nn.Module, source: str | None) -> str | None:
    """The tokenizer / image processor source: ``source``, else the zoo name a netslim HF model
    carries, else the directory the model was loaded from."""
    if source is not None:
        return os.fspath(source)
    named = getattr(model, "netslim_source", None)
    if named:
        return named
    loaded_from = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return loaded_from if loaded_from and Path(loaded_from).is_dir() else None


def _tokenizer(source: str | None, task: str, where: str) -> Any:
    from netslim.models.hf_tokenizers import load_tokenizer

    if source is None:
        raise NetslimError(
            f"{where}: task {task!r} needs a tokenizer; pass source= a Hugging Face model directory "
            "(with tokenizer files) or a built-in model name (minilm, smollm2, tiny-llama, ...)."
        )
    return load_tokenizer(source)


def _image_processor(source: str | None) -> Any:
    """The Hugging Face image processor in directory ``source``, or None."""
    if source is None or not (Path(source) / "preprocessor_config.json").is_file():
        return None
    from netslim.models.hf_offline import transformers_module

    tf = transformers_module()
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "torchvision is not installed, using the PIL backend": expected here
    try:
        # The Pillow implementation (no torchvision): "backend" from transformers 5, "use_fast" before.
        kw = {"backend": "pil"} if int(tf.__version__.split(".")[0]) >= 5 else {"use_fast": False}
        return tf.AutoImageProcessor.from_pretrained(source, local_files_only=True, **kw)
    except (OSError, ValueError) as e:
        raise NetslimError(f"{source}/preprocessor_config.json cannot be read ({files.reason(e)}).") from None
    finally:
        hf_logging.set_verbosity(level)


# ------------------------------------------------------------------------- images
@dataclass(frozen=True)
class _ImagePrep:
    """Mode conversion and resizing of one Pillow image (see "Images" in the module docstring)."""

    mode: str  # "L" or "RGB"
    size: tuple[int, int] | None  # (H, W) exact
    shortest_edge: int | None  # resize the shortest edge to this, keeping the aspect ratio ...
    crop: tuple[int, int] | None  # ... then centre-crop to (H, W)
    resample: int

    def __call__(self, img):
        img = img.convert(self.mode)
        if self.size is not None:
            h, w = self.size
            return img if img.size == (w, h) else img.resize((w, h), resample=self.resample)
        if self.shortest_edge is not None:
            w, h = img.size
            scale = self.shortest_edge / min(w, h)
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample=self.resample)
            ch, cw = self.crop or (self.shortest_edge, self.shortest_edge)
            left, top = (img.size[0] - cw) // 2, (img.size[1] - ch) // 2
            return img.crop((left, top, left + cw, top + ch))
        return img


def _processor_geometry(proc: Any, where: str) -> tuple[tuple[int, int] | None, int | None, tuple[int, int] | None]:
    size, crop = getattr(proc, "size", None) or {}, getattr(proc, "crop_size", None) or {}
    if size.get("height") and size.get("width"):
        return (int(size["height"]), int(size["width"])), None, None
    if size.get("shortest_edge"):
        has_crop = getattr(proc, "do_center_crop", False) and crop.get("height") and crop.get("width")
        return None, int(size["shortest_edge"]), (int(crop["height"]), int(crop["width"])) if has_crop else None
    raise NetslimError(
        f"{where}: the image processor's size {size!r} is not height/width or shortest_edge; set image_size: [H, W]."
    )


def _image_prep(
    spec: DataSpec, model: nn.Module, proc: Any, headers: dict[str, tuple[str, tuple[int, int]]], where: str
) -> _ImagePrep:
    from PIL import Image

    channels = spec.channels or getattr(getattr(model, "config", None), "num_channels", None)
    if channels is None and proc is not None:
        channels = len(getattr(proc, "image_mean", None) or (0, 0, 0))
    if channels is None:
        channels = 1 if all(mode in files.GRAY_MODES for mode, _ in headers.values()) else 3
    size, edge, crop = spec.size_hw(), None, None
    if size is None and proc is not None:
        size, edge, crop = _processor_geometry(proc, where)
    if size is None and edge is None:
        sizes: dict[tuple[int, int], str] = {}
        for rel, (_, wh) in headers.items():
            sizes.setdefault(wh, rel)
        if len(sizes) > 1:
            (a, ra), (b, rb) = list(sizes.items())[:2]
            raise NetslimError(
                f"{where}: images differ in size ({ra} is {a[0]}x{a[1]}, {rb} is {b[0]}x{b[1]}, WxH); "
                "set image_size: [H, W] to resize them all."
            )
    resample = int(getattr(proc, "resample", None) or Image.Resampling.BILINEAR)
    return _ImagePrep("L" if channels == 1 else "RGB", size, edge, crop, resample)


def _normalisation(spec: DataSpec, proc: Any, train: torch.Tensor, where: str) -> tuple[tuple, tuple]:
    """Per-channel (mean, std): the spec's, else the processor's, else the train split's."""
    c = train.shape[1]
    if spec.mean is not None or spec.std is not None:
        mean, std = spec.mean or (0.0,) * c, spec.std or (1.0,) * c
    elif proc is not None:
        norm = getattr(proc, "do_normalize", True)
        mean = tuple(proc.image_mean) if norm else (0.0,) * c
        std = tuple(proc.image_std) if norm else (1.0,) * c
    else:
        mean = tuple(train.mean(dim=(0, 2, 3)).tolist())
        std = tuple(s if s > 0 else 1.0 for s in train.std(dim=(0, 2, 3), correction=0).tolist())
    for field, v in (("mean", mean), ("std", std)):
        if len(v) != c:
            raise NetslimError(f"{where}: {field} has {len(v)} values for {c}-channel images; give {c}.")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _open_images(spec: DataSpec, model: nn.Module, source: str | None, hasher: files.ContentHash):
    path = Path(spec.path)
    folder = files.scan_image_folder(path)
    picked = {s: files.spread(folder.files[s], spec.limit) for s in SPLITS}
    # Every image's header (cheap: no pixels), so that mode and size do not depend on ``limit``.
    headers = {rel: files.image_header(path / rel, rel) for s in SPLITS for rel, _ in folder.files[s]}
    proc = _image_processor(_source_of(model, source))
    where = f"Image folder {spec.path!r}"
    prep = _image_prep(spec, model, proc, headers, where)
    rescale = float(getattr(proc, "rescale_factor", 1 / 255)) if getattr(proc, "do_rescale", True) else 1.0
    x = {
        s: torch.stack([files.read_image(path / rel, rel, hasher=hasher, prepare=prep) for rel, _ in picked[s]]).float()
        * rescale
        for s in SPLITS
    }  # (N, C, H, W)
    mean, std = _normalisation(spec, proc, x["train"], where)
    m, sd = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if model_kind(model) == "image_classification" and num_labels != len(folder.classes):
        raise NetslimError(
            f"{where}: {len(folder.classes)} class folders but the model has num_labels={num_labels}; "
            "load the model with num_labels set to the number of classes."
        )
    splits = {s: ((x[s] - m) / sd, torch.tensor([c for _, c in picked[s]], dtype=torch.long)) for s in SPLITS}
    resolved = {"channels": 1 if prep.mode == "L" else 3, "mean": mean, "std": std}
    return splits, folder.classes, resolved


# --------------------------------------------------------------------------- rows
def _meaningful(label2id: Mapping | None) -> dict[str, int] | None:
    if not label2id or all(re.fullmatch(r"LABEL_\d+", str(k)) for k in label2id):
        return None
    return {str(k): int(v) for k, v in label2id.items()}


def _label_ids(rows: list[files.Row], column: str, model: nn.Module, where: str) -> tuple[dict, tuple[str, ...]]:
    """``({label: id}, class names by id)`` for the labels of ``rows`` (rules in the module docstring)."""
    config = model.config
    num = int(config.num_labels)
    labels = [(r, files.label_of(r, column)) for r in rows]
    ints = [(r, v) for r, v in labels if isinstance(v, int)]
    names = [(r, v) for r, v in labels if isinstance(v, str)]
    if ints and names:
        raise NetslimError(
            f"{where}: column {column!r} mixes integer labels ({ints[0][0].where}: {ints[0][1]}) and "
            f"names ({names[0][0].where}: {names[0][1]!r}); use one kind."
        )
    known = _meaningful(getattr(config, "label2id", None))
    id2name = {i: n for n, i in known.items()} if known else {}
    classes = tuple(id2name.get(i, str(i)) for i in range(num))
    if ints:
        for r, v in ints:
            if not 0 <= v < num:
                raise NetslimError(
                    f"{r.where}: label {v} is outside [0, {num}) (the model's num_labels); "
                    "fix the label or give the model more labels."
                )
        return {v: v for _, v in ints}, classes
    if known:
        for r, v in names:
            if v not in known:
                raise NetslimError(
                    f"{r.where}: label {v!r} is not one of the model's labels "
                    f"({files.shorten(', '.join(sorted(known)))})."
                )
        return known, classes
    distinct = sorted({v for _, v in names})
    if len(distinct) != num:
        raise NetslimError(
            f"{where}: {len(distinct)} label names ({files.shorten(', '.join(distinct))}) but the "
            f"model has num_labels={num}; build the classifier with num_labels={len(distinct)} "
            "(and label2id)."
        )
    return {n: i for i, n in enumerate(distinct)}, tuple(distinct)


def _rows_by_split(table: files.Table, spec: DataSpec) -> dict[str, list[files.Row]]:
    """Explicit splits (split column, else split files) with the missing ones carved by text hash."""
    if spec.split_column is None:
        given = table.rows
    else:
        files.require_column(table, spec.split_column, field="split_column")
        given: dict[str, list[files.Row]] = {}
        for rows in table.rows.values():
            for r in rows:
                given.setdefault(files.split_of_row(r, spec.split_column), []).append(r)
        if "train" not in given:
            raise NetslimError(f"{table.where}: column {spec.split_column!r} names no train rows.")
    return files.carve_splits(given, key=lambda r: files.text_of(r, spec.text_column))


def _open_text_classification(spec: DataSpec, model: nn.Module, table: files.Table, tokenizer: Any):
    for column, field in ((spec.text_column, "text_column"), (spec.label_column, "label_column")):
        files.require_column(table, column, field=field)
    by_split = _rows_by_split(table, spec)
    ids, classes = _label_ids([r for s in SPLITS for r in by_split[s]], spec.label_column, model, table.where)
    splits = {}
    for s in SPLITS:
        rows = files.spread(by_split[s], spec.limit)
        if not rows:
            raise NetslimError(f"{table.where}: the {s} split has no rows; give more rows or a split column / file.")
        texts = [files.text_of(r, spec.text_column) for r in rows]
        splits[s] = (texts, torch.tensor([ids[files.label_of(r, spec.label_column)] for r in rows]))
    if getattr(tokenizer, "pad_token", "") is None:
        raise NetslimError(f"{table.where}: the tokenizer has no padding token; set tokenizer.pad_token and save it.")
    return splits, classes


# --------------------------------------------------------------------------- text
def _documents(spec: DataSpec, table: files.Table | None, hasher: files.ContentHash) -> dict[str, list[str]]:
    if table is None:
        given = files.read_documents(Path(spec.path), hasher)
    else:
        files.require_column(table, spec.text_column, field="text_column")
        given = {}
        for split, rows in table.rows.items():
            for r in rows:
                s = split if spec.split_column is None else files.split_of_row(r, spec.split_column)
                text = files.text_of(r, spec.text_column)
                given.setdefault(s, []).append(files.Document(text, text, r.where))
    return files.split_documents(given, spec.path)


def _sentences(texts: Mapping[str, list[str]], where: str) -> dict[str, list[str]]:
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for s in SPLITS:
        out[s] = [u for t in texts[s] for u in files.units(t) if not (u in seen or seen.add(u))]
        if not out[s]:
            raise NetslimError(f"{where}: the {s} split has no sentences once repeats are dropped; give more text.")
    return out


# ---------------------------------------------------------------------- open_data
# What each task reads (files.data_kind looks for nothing else).
_READS = {
    "auto": files.KINDS,
    "image-classification": ("images",),
    "text-classification": ("table",),
    "causal-lm": ("table", "text"),
    "embedding": ("table", "text"),
}


def _infer_task(spec: DataSpec, kind: str, table: files.Table | None, model: nn.Module) -> str:
    if spec.task != "auto":
        return spec.task
    if kind == "images":
        return "image-classification"
    if table is not None and spec.label_column in table.columns:
        return "text-classification"
    mk = model_kind(model)
    if mk in ("causal_lm", "embedding"):
        return "causal-lm" if mk == "causal_lm" else "embedding"
    if table is not None and mk == "text_classification":  # a classifier and a table: the label column is missing
        files.require_column(table, spec.label_column, field="label_column")
    labels = "" if table is None else f" (no {spec.label_column!r} column for text classification)"
    raise NetslimError(
        f"data {spec.path!r}: text without labels{labels} scores a causal LM (perplexity) or an encoder "
        f"(embedding fidelity); got {_KIND_WORDS[mk]} ({type(model).__name__}). Give a *ForCausalLM or "
        "an encoder, or a table with a label column."
    )


def open_data(
    spec: DataSpec, model: nn.Module, *, source: str | None = None, reference: Callable[[], nn.Module] | None = None
) -> Task:
    """The task for ``spec`` and ``model`` (module docstring); its ``spec`` is the resolved one.

    ``source``: where the tokenizer / image processor come from (a Hugging Face model
    directory or a built-in name; default: the model's own, see :func:`_source_of`).
    ``reference``: returns the user's original model, the fidelity reference of the
    embedding task (default: a copy of ``model`` as it is now).
    """
    spec = parse_data_spec(spec)
    path = Path(spec.path).expanduser().resolve()
    kind = files.data_kind(path, _READS[spec.task])
    spec = spec.model_copy(update={"path": str(path)})
    hasher = files.ContentHash()
    table = files.read_table(path, hasher) if kind in ("table", "datasets") else None
    task = _infer_task(spec, kind, table, model)
    _check_fit(task, model, f"data {spec.path!r}")
    resolved: dict[str, Any] = {"task": task}
    if task == "image-classification":
        splits, classes, extra = _open_images(spec, model, source, hasher)
        resolved.update(extra)
    elif task == "text-classification":
        tokenizer = _tokenizer(_source_of(model, source), task, f"data {spec.path!r}")
        splits, classes = _open_text_classification(spec, model, table, tokenizer)
    else:
        tokenizer = _tokenizer(_source_of(model, source), task, f"data {spec.path!r}")
        texts = _documents(spec, table, hasher)
    spec = spec.model_copy(update={**resolved, "sha256": hasher.hexdigest()})  # the data as read now
    if task == "image-classification":
        return TensorClassificationTask(splits, seed=spec.seed, spec=spec, classes=classes)
    if task == "text-classification":
        return TextClassificationTask(tokenizer, splits, spec=spec, classes=classes)
    if task == "causal-lm":
        lm = TextFilesLMTask(tokenizer, texts, spec=spec)
        for s in SPLITS:
            lm.blocks(s)  # tokenise now: a split too short for one block is an error here, not mid-run
        return lm
    if reference is None:
        snapshot = copy.deepcopy(model).eval()
        reference = lambda: snapshot  # noqa: E731
    return TextFilesEmbeddingTask(tokenizer, _sentences(texts, spec.path), spec=spec, reference=reference)
