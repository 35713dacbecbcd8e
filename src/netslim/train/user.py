"""``netslim train``: a zoo model on its dataset, or any model on the user's data.

Zoo CNNs without ``--data`` train with their benchmarked settings
(:mod:`netslim.train.pretrain`) into the checkpoint cache. Anything else (a
``file.py:factory`` model, a Hugging Face directory, an artifact; a zoo model on other data)
trains on the given data with stated defaults, overridable:

* Hugging Face transformers: AdamW, lr 5e-5, weight decay 0.01, 3 epochs, batch 32, 10 %
  warm-up then cosine (the usual fine-tuning setting);
* other modules: AdamW, lr 1e-3, weight decay 0.01, 10 epochs, batch 128, cosine (robust on
  a model nobody tuned for: SGD at the zoo's lr 0.05 collapsed the journey CNN to chance
  level in one 5-epoch run, BENCHMARKS.md issue 17).

The weights with the best validation metric are kept; the artifact records the data spec
(path, task, columns, split rule, content hash), so ``netslim eval`` re-scores the same data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from netslim.core.serialize import save

HF_DEFAULTS = {
    "optimizer": "adamw",
    "lr": 5e-5,
    "weight_decay": 0.01,
    "epochs": 3,
    "batch_size": 32,
    "warmup_epochs": 0.1,
}
MODULE_DEFAULTS = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "epochs": 10, "batch_size": 128}


def _is_transformers(model) -> bool:
    import sys

    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def default_out(name: str) -> Path:
    return Path("runs") / "train" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".safetensors")


def train_model(
    ref: Any,
    *,
    data: Any = None,
    weights=None,
    out: str | Path | None = None,
    seed: int = 0,
    limit: int | None = None,
    skip_existing: bool = False,
    **overrides: Any,
) -> str:
    """Train ``ref`` (anything ``--model`` accepts) and save it; returns a one-line summary."""
    from netslim.models import model_names
    from netslim.models.sources import open_model
    from netslim.recipe.inputs import resolve_task, run_info
    from netslim.train.loop import TrainConfig, fit
    from netslim.train.pretrain import DEFAULT_TRAINING

    if isinstance(ref, str) and ref in DEFAULT_TRAINING and ref in model_names() and data is None and weights is None:
        return _train_zoo(ref, out=out, seed=seed, limit=limit, skip_existing=skip_existing, **overrides)
    opened = open_model(ref, weights=weights)
    task = resolve_task(opened, data=data, options={"limit": limit})
    cfg = TrainConfig(
        **{**(HF_DEFAULTS if _is_transformers(opened.model) else MODULE_DEFAULTS), **overrides, "seed": seed}
    )
    path = Path(out) if out is not None else default_out(opened.name)
    if skip_existing and path.is_file():
        return f"exists: {path}"
    torch.manual_seed(seed)
    summary = fit(opened.model, task, cfg)
    save(opened.model, path, {**run_info(opened, task), "train": cfg.to_dict()})
    test = task.evaluate(opened.model, "test")
    return (
        f"trained {opened.name}: {summary['epochs']} epochs in {summary['seconds']:.0f} s "
        f"({cfg.optimizer}, lr {cfg.lr:g}, batch {cfg.batch_size}); test {task.metric} {test[task.metric]:.4f}; "
        f"saved {path}"
    )


def _train_zoo(name: str, *, out, seed: int, limit: int | None, skip_existing: bool, **overrides: Any) -> str:
    from netslim.core.cache import checkpoint_path
    from netslim.models import model_entry
    from netslim.train.pretrain import augment_option, train_baseline
    from netslim.train.tasks import get_task

    entry = model_entry(name)
    path = Path(out) if out is not None else checkpoint_path(name)
    if skip_existing and path.is_file():
        return f"checkpoint exists: {path}"
    task = get_task(entry.dataset, seed=seed, **augment_option(name), **({"limit": limit} if limit else {}))
    net, summary = train_baseline(name, task=task, seed=seed, **overrides)
    save(net, path, {"model": name, "dataset": entry.dataset})
    test = task.evaluate(net, "test")
    return (
        f"trained {name}: {summary['epochs']} epochs in {summary['seconds']:.0f} s; "
        f"test {task.metric} {test[task.metric]:.4f}; saved {path}"
    )
