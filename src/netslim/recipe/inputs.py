"""What a run works on: the model (:func:`netslim.models.sources.open_model`) and its data as a Task.

Data comes, in this order of precedence, from

1. ``data`` given to the run (CLI ``--data``, ``netslim.compress(data=...)``): a path or a
   ``{path: ..., task: ..., ...}`` mapping (the user's files, :mod:`netslim.train.file_tasks`),
   or, from Python, a ``DataLoader``, a tensor, an ``(X, y)`` pair or a ``Task``
   (:mod:`netslim.train.object_tasks`). The recipe's ``data:`` options that are data-file
   options (columns, sizes, ``seq_len``, ...) apply to these files too; what ``data`` itself
   sets wins;
2. the recipe's ``data:`` when it has a ``path`` (files), else the recipe's ``dataset:``
   with ``data:`` as that dataset's options;
3. the dataset an artifact was made on (its stored data spec or dataset name);
4. a zoo model's default dataset.

Nothing here writes anything: a run resolves its inputs before it creates its output folder,
so bad input fails before any work and leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.models.sources import OpenedModel

_TEXT_DATASETS = ("pydocs", "pydocs-sentences")


def _is_files(data: Any) -> bool:
    return isinstance(data, (str, Path)) or (isinstance(data, Mapping) and "path" in data)


def file_spec(data: Any, options: Mapping[str, Any] | None = None, where: str = "data"):
    """A validated DataSpec from a path or mapping, with run options (e.g. ``limit``) merged in."""
    from netslim.train.file_tasks import parse_data_spec

    spec = dict(data) if isinstance(data, Mapping) else {"path": str(data)}
    spec.update({k: v for k, v in (options or {}).items() if v is not None})
    return parse_data_spec(spec, where)


def resolve_task(
    opened: OpenedModel,
    *,
    data: Any = None,
    recipe_data: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    options: Mapping[str, Any] | None = None,
    reference: Callable[[], nn.Module] | None = None,
):
    """The Task of a run (see the module docstring); ``options`` are run-level data options (``limit``)."""
    from netslim.train.tasks import Task, get_task

    options = {k: v for k, v in (options or {}).items() if v is not None}
    recipe_data = dict(recipe_data or {})
    if data is not None and not _is_files(data):
        if isinstance(data, Mapping) and not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise NetslimError(
                f"data: a mapping needs a 'path' key (the data file or folder); got keys "
                f"{', '.join(map(str, data))[:200]}."
            )
        if options:
            raise NetslimError(f"Data options {sorted(options)} apply to data files, not to a {type(data).__name__}.")
        if isinstance(data, Task):
            return data
        from netslim.train.object_tasks import task_from_object

        return task_from_object(data, opened.model)
    if data is not None or "path" in recipe_data:
        base = recipe_data
        if data is not None:
            given = dict(data) if isinstance(data, Mapping) else {"path": str(data)}
            base = {**_file_options(recipe_data), **given}  # what the run's own data says wins
        spec = file_spec(base, options, where="--data" if data is not None else "recipe data")
        return _open_files(spec, opened, reference)
    stored = opened.info.get("data") if opened.info else None
    if dataset is None and isinstance(stored, Mapping):  # an artifact made on the user's files
        spec = file_spec(stored, options, where="the artifact's stored data")
        return _open_files(spec, opened, reference)
    name = dataset or opened.dataset
    if name is None:
        raise NetslimError(
            f"Model {opened.name!r} has no default dataset: pass --data PATH (an image folder, a CSV/JSONL file, "
            "text files) or data= in Python, or set 'dataset:' / 'data: {path: ...}' in the recipe."
        )
    task_options = {
        **(opened.info.get("data_options", {}) if opened.info and not dataset else {}),
        **recipe_data,
        **options,
    }
    if name in _TEXT_DATASETS and opened.source and "model_name" not in task_options:
        task_options["model_name"] = opened.source  # the model's own tokenizer
    if name == "pydocs-sentences" and reference is not None:
        task_options["reference"] = reference  # fidelity to this run's original, not a stock model
    return get_task(name, **task_options)


def _file_options(recipe_data: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's data options that apply to a user's files too (columns, sizes, seq_len, ...):
    the DataSpec fields other than ``path``; the rest (e.g. ``augment``) are options of the
    recipe's own dataset."""
    from netslim.train.file_tasks import DataSpec

    return {k: v for k, v in recipe_data.items() if k in DataSpec.model_fields and k != "path"}


def _open_files(spec, opened: OpenedModel, reference):
    from netslim.train.file_tasks import open_data

    return open_data(spec, opened.model, source=opened.source, reference=reference)


def task_info(task) -> dict[str, Any]:
    """What an artifact stores about its data so that ``netslim eval`` can rebuild the same task."""
    d = task.describe()
    out: dict[str, Any] = {"dataset": d.get("dataset", getattr(task, "name", "?"))}
    if isinstance(d.get("data"), Mapping):
        out["data"] = dict(d["data"])
    else:
        out["data_options"] = {
            k: v
            for k, v in d.items()
            if k not in ("dataset", "metric", "data") and isinstance(v, (int, float, str, bool, type(None)))
        }
    return out


def run_info(
    opened: OpenedModel, task, recipe: str | None = None, reference: str | Path | None = None
) -> dict[str, Any]:
    """The ``info`` block every artifact of a run carries: model, data, tokenizer source, and
    the run's unmodified model (``reference``: what fidelity is measured against)."""
    info: dict[str, Any] = {"model": opened.name, **task_info(task), "source": opened.source}
    if recipe is not None:
        info["recipe"] = recipe
    if reference is not None:
        info["reference"] = str(Path(reference).resolve())
    return info


def stored_reference(opened: OpenedModel) -> Callable[[], nn.Module] | None:
    """The original model of the run that made an artifact (its ``baseline.safetensors``), if still there."""
    from netslim.core.serialize import load

    path = opened.info.get("reference") if opened.info else None
    if not path or not Path(path).is_file():
        return None
    return lambda: load(path, base=opened.base)
