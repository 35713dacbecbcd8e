"""``docs-sections``: Python docs paragraphs classified by their top-level section (accuracy).

The data and its rules are :mod:`netslim.data.docs_sections` (split by file; the same records
``benchmarks/byo_data.py docs-jsonl`` writes as JSONL). Batches are tokenised on the fly as in
any text-classification task (:class:`netslim.train.file_tasks.TextClassificationTask`),
truncated to ``max_length`` tokens (128: the paragraphs' median is far below it). Class ids are
positions in the sorted label list, as the ``minilm-docs`` zoo model's ``id2label`` has them.

Options: ``model_name`` (whose tokenizer; default "minilm"), ``max_length``, ``limit`` (at most
N paragraphs per split, evenly spread over it), ``seed`` (training order, calibration draws),
``eval_batch_size``, ``root`` (docs sources; default ``$NETSLIM_TEXT`` or the Debian folder),
``min_class`` / ``min_chars`` (the labelling rules). ``describe()`` lists them, so an artifact
made on this task is re-scored by ``netslim eval`` on the same paragraphs.
"""

from __future__ import annotations

from typing import Any

import torch

from netslim.core.errors import bad_param
from netslim.data import docs_sections, files
from netslim.train.file_tasks import TextClassificationTask
from netslim.train.tasks import register_task


class DocsSectionsTask(TextClassificationTask):
    name = "docs-sections"
    metric = "accuracy"

    def __init__(
        self,
        model_name: str = "minilm",
        max_length: int = 128,
        limit: int | None = None,
        seed: int = 0,
        eval_batch_size: int = 64,
        root: str | None = None,
        min_class: int = docs_sections.DEFAULT_MIN_CLASS,
        min_chars: int = docs_sections.DEFAULT_MIN_CHARS,
        *,
        tokenizer: Any = None,
    ):
        for field, value, allow_none in (
            ("max_length", max_length, False),
            ("limit", limit, True),
            ("eval_batch_size", eval_batch_size, False),
        ):
            if not (allow_none and value is None) and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise bad_param("docs-sections", field, "an int >= 1" + (" or None" if allow_none else ""), value)
        if tokenizer is None:
            from netslim.models.hf_tokenizers import load_tokenizer

            tokenizer = load_tokenizer(model_name)
        by_split = docs_sections.load(root, min_class=min_class, min_chars=min_chars)
        classes = sorted({r["label"] for rows in by_split.values() for r in rows})
        ids = {name: i for i, name in enumerate(classes)}
        splits = {}
        for s in docs_sections.SPLITS:
            rows = files.spread(by_split[s], limit)
            splits[s] = ([r["text"] for r in rows], torch.tensor([ids[r["label"]] for r in rows], dtype=torch.long))
        self.tokenizer, self.splits, self.spec, self.classes = tokenizer, splits, None, tuple(classes)
        self.seed, self.max_length, self.eval_batch_size = seed, max_length, eval_batch_size
        self.options = {
            "model_name": model_name,
            "max_length": max_length,
            "limit": limit,
            "seed": seed,
            "eval_batch_size": eval_batch_size,
            "root": None if root is None else str(root),
            "min_class": min_class,
            "min_chars": min_chars,
        }

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "metric": self.metric, **self.options}


register_task("docs-sections", DocsSectionsTask)
