"""The Python front door: ``netslim.compress`` (a whole recipe) and ``netslim.apply`` (one method).

```python
import netslim
result = netslim.compress("my_model_dir", "gptq_w4g128", data="corpus.txt")
result.model, result.report["final"], result.artifact
```

``model`` is anything ``--model`` accepts (an ``nn.Module``, a zoo name, an artifact, a
Hugging Face directory, ``"file.py:factory"``); ``data`` is a path (image folder, CSV/JSONL,
text files), a ``{path: ..., task: ...}`` mapping, a ``DataLoader``, a tensor, an ``(X, y)``
pair or a ``Task``; ``recipe`` is a YAML path, a shipped recipe name, a mapping, or a list of
method configs (``MethodConfig`` objects or ``{"method": ..., ...}`` mappings).

Every method also has a plain-Python function in its family, made by :func:`method_function`
(one convention for all of them)::

    model = netslim.quantize.quantize_weights(model, bits=4, group_size=128)
    netslim.report_of(model).notes  # what the step reported (a recipe records the same)

``fn(model, data=None, **options) -> nn.Module``: the model first, the data (anything ``data=``
takes here) second, the method's options keyword-only and validated by its config class; it
runs through :func:`apply` (the same ordering check and validation as a recipe step) and returns
the model, which may be a new object. The step's report is on the returned model
(:func:`~netslim.core.history.report_of`).
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.core.config import MethodConfig, build_config, make_config
from netslim.core.config import apply as apply_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError


@dataclass
class CompressResult:
    model: nn.Module  # the compressed model, in memory
    report: dict[str, Any]  # the content of OUT/report.json
    artifact: Path  # the file the run wrote last (its export, else OUT/model.safetensors)
    out_dir: Path


def load_any_recipe(recipe: Any):
    """A :class:`~netslim.recipe.spec.Recipe` from a path, a shipped name, a mapping or a list of configs."""
    from netslim.recipe import load_recipe, parse_recipe
    from netslim.recipe.spec import Recipe

    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, MethodConfig):
        recipe = [recipe]
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe_path(str(recipe)))
    if isinstance(recipe, Mapping):
        return parse_recipe(dict(recipe), "recipe")
    if isinstance(recipe, Sequence):
        steps = [s.to_dict() if isinstance(s, MethodConfig) else s for s in recipe]
        return parse_recipe({"name": "recipe", "steps": steps}, "recipe")
    raise NetslimError(
        f"recipe must be a path, a shipped recipe name, a mapping or a list of method configs; "
        f"got {type(recipe).__name__}."
    )


def recipes_dir() -> Path:
    """The shipped recipes: ``$NETSLIM_RECIPES``, else the package's own ``recipes`` folder."""
    import os

    return Path(os.environ.get("NETSLIM_RECIPES", Path(__file__).resolve().parent / "recipes"))


def recipe_path(ref: str) -> Path:
    """A recipe file: an existing path, or the shipped recipe of that name."""
    p = Path(ref)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    return recipes_dir() / f"{ref}.yaml"


def compress(
    model: Any,
    recipe: Any,
    data: Any = None,
    out: str | Path | None = None,
    *,
    weights: str | Path | None = None,
    limit: int | None = None,
    resume: bool = False,
    force: bool = False,
    verify: bool = True,
) -> CompressResult:
    """Run ``recipe`` on ``model`` with ``data``; writes OUT/report.{json,md,html} and the artifact.

    ``out``: the output folder (default: a new temporary folder, named in the result).
    ``model`` may be omitted (None) when the recipe names one; an ``nn.Module`` is compressed in
    place. ``resume`` / ``force`` / ``verify`` as the CLI's ``--resume`` / ``--force`` / ``--no-verify``.
    """
    from netslim.recipe.runner import execute_recipe

    rec = load_any_recipe(recipe)
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"netslim-{rec.name}-"))
    report, final = execute_recipe(
        rec,
        out_dir,
        model_ref=model,
        data=data,
        weights=weights,
        resume=resume,
        force=force,
        verify=verify,
        data_options={"limit": limit} if limit is not None else None,
    )
    return CompressResult(final, report, Path(report["artifact"]), out_dir)


def apply(model: nn.Module, config: Any = None, *, data: Any = None, **options: Any) -> nn.Module:
    """Apply one registered method to ``model``; returns the (possibly new) model, the step's
    report on it (:func:`~netslim.core.history.report_of`).

    ``config``: a ``MethodConfig``, a ``{"method": ..., ...}`` mapping, or a method name with
    its options as keywords (``netslim.apply(model, "magnitude", sparsity=0.5)``). ``data``
    (anything ``compress`` takes) supplies calibration / training data; a method that needs data
    and gets none says so. Files a step writes (an export, a stage report) go to a new temporary
    folder, named in its notes; a step that writes none leaves no folder behind. (A recipe's steps
    run through :func:`netslim.core.config.apply`, which takes the run's step context.)
    """
    cfg = _config(config, options)
    ctx = _context(model, data)
    try:
        return apply_config(model, cfg, ctx)
    finally:
        if not any(ctx.out_dir.iterdir()):
            ctx.out_dir.rmdir()


def _config(config: Any, options: Mapping[str, Any]) -> MethodConfig:
    if isinstance(config, MethodConfig):
        return make_config({**config.to_dict(), **options}, "apply") if options else config
    if isinstance(config, str):
        return make_config({"method": config, **options}, "apply")
    if isinstance(config, Mapping):
        return make_config({**config, **options}, "apply")
    raise NetslimError(
        f"apply: config must be a MethodConfig, a mapping or a method name; got {type(config).__name__}."
    )


class _NoData:
    """Stands in for the task when ``apply`` got no data: any use says what is missing."""

    def __getattr__(self, name: str):
        raise NetslimError(
            f"This method needs data (it asked for task.{name}): pass data= (an image folder, a CSV/JSONL file, "
            "text files, a DataLoader, a tensor of inputs or a Task)."
        )


def _context(model: nn.Module, data: Any) -> StepContext:
    from netslim.models.sources import OpenedModel, module_source
    from netslim.recipe.inputs import resolve_task

    task: Any = _NoData()
    if data is not None:
        task = resolve_task(OpenedModel(model, type(model).__name__, source=module_source(model)), data=data)
    out = Path(tempfile.mkdtemp(prefix="netslim-apply-"))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # train where the model is
    return StepContext(task=task, out_dir=out, device=device, info={"model": type(model).__name__})


def method_function(config_cls: type[MethodConfig], name: str) -> Callable[..., nn.Module]:
    """The plain-Python function of the method ``config_cls`` names, called ``name`` in its family:
    ``name(model, data=None, **options) -> nn.Module`` (see the module docstring). Its signature
    lists the config's fields as keyword-only options; a wrong option is one NetslimError naming
    the function, the method and the field. The one way a family exposes a method in Python."""
    method = config_cls.method
    where = f"{name} (method {method!r})"

    def run(model: nn.Module, data: Any = None, **options: Any) -> nn.Module:
        if isinstance(data, MethodConfig):
            raise NetslimError(
                f"{name}: data must be data, got a {type(data).__name__}; pass the method's options as "
                f"keywords ({name}(model, data, **cfg.model_dump())) or run the config with netslim.apply(model, cfg)."
            )
        return apply(model, build_config(config_cls, None, options, where), data=data)

    fields = [
        inspect.Parameter(
            field,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if info.is_required() else info.get_default(call_default_factory=True),
            annotation=info.annotation,
        )
        for field, info in config_cls.model_fields.items()
    ]
    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=nn.Module),
            inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
            *fields,
        ],
        return_annotation=nn.Module,
    )
    run.__name__ = run.__qualname__ = name
    run.__module__ = config_cls.__module__
    run.__doc__ = (
        f"Apply method {method!r} to ``model`` (``data``: calibration / training data, anything "
        f"``netslim.apply(data=)`` takes); returns the model (maybe a new object), its report on it "
        f"(``netslim.report_of(model)``). Options: the fields of :class:`{config_cls.__name__}`.\n\n"
        + inspect.cleandoc(config_cls.__doc__ or "")
    )
    run.config_cls = config_cls  # type: ignore[attr-defined]
    return run
