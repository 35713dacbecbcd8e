"""What ran on a model: the one ordering rule, checked from state on the model.

A method config declares (ClassVars of :class:`~netslim.core.config.MethodConfig`) which
methods must run before it (``requires``), whether it freezes the weights (``freezes``: after
it, nothing may change them), whether it changes weights at all (``modifies_weights``) and
whether it converts only layers still in float form (``float_layers_only``: it may follow a
freezing step, e.g. int8 embeddings after GPTQ's blocks).

:func:`netslim.core.config.apply` (and :func:`netslim.core.stream_io.stream_step` for a
streamed model) records on the model each step that changed or froze it (:class:`StepHistory`,
the plain attribute ``netslim_history``) and refuses a step that breaks the rule, naming both
steps; the recipe validator (``netslim.recipe.spec.validate_order``) runs the same rule over a
whole recipe before any work. Artifacts keep the history (the description's ``history``
field), so a loaded model still refuses a pruning step after GPTQ.

The same ``apply`` keeps on the model what its last step reported (:class:`StepReport`, the
plain attribute ``netslim_report``, read with :func:`report_of` / ``netslim.report_of``): the
method, its validated options, its notes (what a recipe records as the step's
``notes[method]``) and the modules it skipped. It lives in memory only (not saved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import NetslimError, shown

ATTR = "netslim_history"
REPORT_ATTR = "netslim_report"


@dataclass(frozen=True)
class StepHistory:
    applied: tuple[str, ...] = ()  # the steps that changed or froze the model, in the order they ran
    frozen_by: str | None = None  # the last step that froze the weights

    def problem(self, step: Any) -> str | None:
        """Why ``step`` (a config or config class) may not run now, or None: each of its
        ``requires`` must have run; nothing that changes weights may follow a freezing step,
        except steps that only convert layers still in float form."""
        for need in getattr(step, "requires", ()):
            if need not in self.applied:
                return f"needs a {need!r} step before it"
        if self.frozen_by and getattr(step, "modifies_weights", True) and not getattr(step, "float_layers_only", False):
            return f"changes weights after {self.frozen_by!r} froze them; move it before that step"
        return None

    def check(self, step: Any) -> None:
        """One NetslimError naming ``step`` and the step it conflicts with, when :meth:`problem` finds one."""
        problem = self.problem(step)
        if problem:
            raise NetslimError(
                f"Method {step.method!r} {problem} (steps applied to this model: {', '.join(self.applied) or 'none'})."
            )

    def after(self, step: Any) -> StepHistory:
        """The history once ``step`` has run: recorded if it changed or froze the model (``evaluate``
        and ``export`` leave it as it was, in memory and streamed alike)."""
        freezes = getattr(step, "freezes", False)
        if not (freezes or getattr(step, "modifies_weights", True)):
            return self
        return StepHistory((*self.applied, step.method), step.method if freezes else self.frozen_by)

    @classmethod
    def of(cls, model: Any) -> StepHistory:
        """The history recorded on ``model`` (empty for a model no netslim step ran on)."""
        got = getattr(model, "__dict__", {}).get(ATTR)
        return got if isinstance(got, StepHistory) else cls()

    def store(self, model: Any) -> None:
        model.__dict__[ATTR] = self  # a plain attribute (not a submodule, not state)

    def to_json(self) -> dict[str, Any]:
        return {"applied": list(self.applied), "frozen_by": self.frozen_by}

    @classmethod
    def from_json(cls, data: Any) -> StepHistory:
        """From a description's ``history`` field (``{"applied": [str, ...], "frozen_by": str | null}``)."""
        applied = data.get("applied") if isinstance(data, dict) else None
        frozen_by = data.get("frozen_by") if isinstance(data, dict) else None
        if (
            not isinstance(applied, list)
            or not all(isinstance(m, str) for m in applied)
            or not (frozen_by is None or isinstance(frozen_by, str))
        ):
            raise NetslimError(
                f"field 'history' must be {{'applied': [method names], 'frozen_by': a method name or "
                f"null}}; got {shown(data)}."
            )
        return cls(tuple(applied), frozen_by)


@dataclass(frozen=True)
class StepReport:
    """What one applied step reported, kept on the model it returned (see :func:`report_of`).

    ``options``: the step's validated config (JSON form, without ``method``); ``notes``: what the
    step wrote under ``ctx.notes[method]`` - the same value a recipe records as the step's
    ``notes[method]`` (None for a step that notes nothing); ``skipped``: the modules the step
    left alone, ``{"name", "reason"}`` each."""

    method: str
    options: dict[str, Any]
    notes: Any = None
    skipped: tuple[dict[str, str], ...] = ()

    def store(self, model: Any) -> None:
        model.__dict__[REPORT_ATTR] = self  # a plain attribute, like the history


def report_of(model: Any) -> StepReport:
    """The report of the last netslim step applied to ``model`` (by a family's function, by
    ``netslim.apply`` or by a recipe step); one NetslimError when none ran on it."""
    got = getattr(model, "__dict__", {}).get(REPORT_ATTR)
    if not isinstance(got, StepReport):
        raise NetslimError(
            f"report_of: no netslim step was applied to this {type(model).__name__} in this process "
            "(reports live in memory; a loaded model has its history, not its reports)."
        )
    return got
