"""Preflight: check a whole recipe against the actual model and task before any work runs.

:func:`check_recipe` raises one :class:`NetslimError` listing every problem that the recipe,
the model and the task already show — a ``re:`` selector that does not compile, a selector
that matches no module, N:M or a group size that fits no selected layer, a schedule that
ends after its run, a step that changes layers an earlier step froze into shared weights —
each naming the step, the method and the field. It costs no training and no calibration:
at most a forward pass on ``task.example_inputs(1)`` (CNN ``layers`` steps list their
removable residual blocks that way).

Checks come from two places:

* generic ones here, read from the configs: the ``include`` / ``exclude`` selectors of every
  step, ``re:`` keys of selector tables (``bits``, ``weight_bits``, ``ranks``, ``ratios``), and
  the order rule of :attr:`converts_layers` (see below);
* each method's own, where its config defines ``preflight(model, task)`` (one mechanism for all
  methods): it raises a NetslimError for what would fail at run time, calling the same
  selection and schedule functions its handler calls, and returns the layers it will skip
  (``[{"name", "reason"}]``, logged here; skipping is allowed and reported at run time).
  ``model`` is None once an earlier step may have renamed, removed or reshaped modules:
  then only model-independent checks run (no false errors on a model we cannot see).

Class attributes a config may set (read with defaults, like ``freezes``):

* ``keeps_modules`` — the step leaves module names, types and shapes as they are (masks,
  training), so later steps are still checked against the model; default: only steps that do
  not change weights (evaluate, export).
* ``converts_layers`` — a description of the frozen layer kind the step leaves (weight
  sharing): a later step that selects layers (has an ``include`` field) to change their
  weights is an error naming it; training steps (finetune, distill) may follow.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from netslim.core.config import MethodConfig
from netslim.core.errors import NetslimError
from netslim.core.selectors import regex_error, selector_problems

log = logging.getLogger(__name__)
SELECTOR_FIELDS = ("include", "exclude")
SHOWN_SKIPS = 8


def check_recipe(recipe: Any, model: nn.Module, task: Any) -> None:
    """Raise one NetslimError naming every problem of ``recipe``'s steps on ``model`` / ``task``
    that is knowable before running them; log the layers steps will skip. Touches nothing."""
    problems: list[str] = []
    current: nn.Module | None = model  # the model as the next step sees it, while it is known
    frozen: tuple[str, str] | None = None  # (step, what) of the last step that converted layers
    for i, step in enumerate(recipe.steps, start=1):
        where = f"step {i} ({step.method})"
        found = _order_problems(step, frozen) + config_problems(step, current)
        if not found:
            found = _method_problems(step, current, task, where)
        problems += [f"{where}: {p}" for p in found]
        if getattr(step, "converts_layers", ""):
            frozen = (where, step.converts_layers)
        if not keeps_modules(step):
            current = None
    if problems:
        head = f"Recipe {getattr(recipe, 'name', 'recipe')!r} does not fit {type(model).__name__} (nothing was run)"
        raise NetslimError(head + (": " + problems[0] if len(problems) == 1 else ":\n  " + "\n  ".join(problems)))


def keeps_modules(step: MethodConfig) -> bool:
    return bool(getattr(step, "keeps_modules", not getattr(step, "modifies_weights", True)))


def config_problems(step: MethodConfig, model: nn.Module | None) -> list[str]:
    """Selector problems of one step: its include / exclude selectors against ``model`` (only
    that they compile when it is None), and ``re:`` keys of its selector tables."""
    out = []
    for field in SELECTOR_FIELDS:
        if field in type(step).model_fields:
            out += [f"field {field!r}: {p}" for p in selector_problems(model, getattr(step, field))]
    for field in type(step).model_fields:
        table = getattr(step, field)
        if isinstance(table, dict):
            out += [f"field {field!r}: {bad}" for key in table if isinstance(key, str) and (bad := regex_error(key))]
    return out


def _order_problems(step: MethodConfig, frozen: tuple[str, str] | None) -> list[str]:
    selects_layers = "include" in type(step).model_fields
    if (
        frozen is None
        or not selects_layers
        or not getattr(step, "modifies_weights", True)
        or getattr(step, "float_layers_only", False)
    ):
        return []
    where, what = frozen
    return [
        f"changes the weights of layers that {where} froze: it {what}; nothing can prune, quantize or "
        f"factorize those layers any more. Move {step.method!r} before that step (training steps such as "
        "finetune may follow it)."
    ]


def _method_problems(step: MethodConfig, model: nn.Module | None, task: Any, where: str) -> list[str]:
    hook = getattr(step, "preflight", None)
    if hook is None:
        return []
    try:
        skipped = hook(model, task) or []
    except NetslimError as e:
        return [str(e)]
    for s in skipped[:SHOWN_SKIPS]:
        log.info("%s will skip %s: %s", where, s["name"], s["reason"])
    if len(skipped) > SHOWN_SKIPS:
        log.info("%s will skip %d more layers", where, len(skipped) - SHOWN_SKIPS)
    return []
