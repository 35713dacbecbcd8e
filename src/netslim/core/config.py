"""Method configs and the handler registry.

A config is a frozen, validated pydantic model with no runtime state; a handler is the
function that applies it. ``register(Config)`` ties them together and ``apply`` is the
one entry point: a recipe is just a list of configs.

Handlers have the signature ``handler(model, config, ctx) -> model`` and are named
``run_<method>``; ``ctx`` is a :class:`netslim.core.context.StepContext` giving data, device
and the report. A handler writes its notes under ``ctx.notes[cfg.method]`` (and nowhere else):
the recipe records them as the step's notes, ``apply`` keeps them on the model's
:class:`~netslim.core.history.StepReport`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict

from . import registry
from .errors import NetslimError, clip, shown
from .history import StepHistory, StepReport


class MethodConfig(BaseModel):
    """Base class of every method config. Subclasses set ``method`` (the recipe name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: ClassVar[str] = ""
    # The ordering rule (netslim.core.history), checked by apply() and by recipe validation:
    requires: ClassVar[tuple[str, ...]] = ()  # methods that must run earlier
    freezes: ClassVar[bool] = False  # after it, nothing may change weights
    modifies_weights: ClassVar[bool] = True
    # Converts only layers still in float form and leaves converted ones (packed, sparse)
    # alone, so it may follow a freezing step (e.g. int8 embeddings after GPTQ's blocks).
    float_layers_only: ClassVar[bool] = False
    # Under torchrun (netslim.train.parallel): every rank runs the step, training data-parallel with
    # rank 0's pruning decisions. Steps without it run on rank 0 alone (one-shot calibrations excepted).
    data_parallel: ClassVar[bool] = False

    @classmethod
    def example(cls) -> MethodConfig:
        """A small valid instance for contract tests (configs with required fields override)."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.model_dump(mode="json")}


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[MethodConfig]
    handler: Callable[..., Any]


_METHODS: registry.Registry[Method] = registry.Registry("method")


def register(config_cls: type[MethodConfig]) -> Callable[[Callable], Callable]:
    """Decorator, the one way a method joins netslim (``netslim.register``):
    ``@register(MagnitudeConfig) def run_magnitude(model, cfg, ctx) -> model``.

    netslim's families call it where they live; so does a user's own module or a plugin
    (:mod:`netslim.core.registry`), without editing netslim. A name already taken raises a
    :class:`NetslimError` naming both handlers (outside netslim's own modules the registry's
    sources are loaded first, so a clash with a built-in method is caught at the decorator)."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)):
        raise NetslimError(f"register: expected a MethodConfig subclass; got {shown(config_cls)}.")
    name = config_cls.method
    if not isinstance(name, str) or not name:
        raise NetslimError(
            f"register: {config_cls.__name__}.method must be set to the method's name (e.g. "
            "method: ClassVar[str] = 'my_method'); it is empty."
        )

    def deco(handler: Callable) -> Callable:
        if not callable(handler):
            raise NetslimError(
                f"register({config_cls.__name__}): the handler must be a function "
                f"(model, cfg, ctx) -> model; got {shown(handler)}."
            )
        _METHODS.add(
            name, Method(name, config_cls, handler), handler, f"give {config_cls.__name__}.method another name"
        )
        return handler

    return deco


def methods() -> dict[str, Method]:
    return _METHODS.entries()


def get_method(name: str) -> Method:
    return _METHODS.get(name)


def _format_validation_error(err: pydantic.ValidationError, owner: str) -> str:
    """One line for a pydantic error; every echoed value (field names included: an unknown
    key is the user's text) goes through :func:`~netslim.core.errors.shown`."""
    parts = []
    for e in err.errors(include_url=False)[:5]:
        field = clip(".".join(str(p) for p in e["loc"]) or "(config)")
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field {field!r}")
        elif e["type"] == "missing":
            parts.append(f"field {field!r} is required")
        else:
            msg = clip(e["msg"][0].lower() + e["msg"][1:])
            parts.append(f"field {field!r} {msg}; got {shown(e.get('input'))}")
    more = err.error_count() - len(parts)
    return f"{owner}: " + "; ".join(parts) + (f"; and {more} more error(s)" if more > 0 else "") + "."


C = TypeVar("C", bound=BaseModel)


def build_config(
    cls: type[C], cfg: C | None = None, overrides: Mapping[str, Any] | None = None, where: str | None = None
) -> C:
    """The one way to build a config from a call: ``cfg`` (an instance of ``cls`` or None)
    updated with ``overrides`` (keyword arguments or a dict), validated, errors in the house
    style (one :class:`NetslimError` line naming ``where`` - default the class name - and the
    field). Every plain-Python entry point and every config-from-dict site uses it.

    >>> build_config(MagnitudeConfig, None, {"sparsity": 0.5})            # doctest: +SKIP
    """
    if cfg is not None and not isinstance(cfg, cls):
        method = getattr(cls, "method", "")
        what = f" (method {method!r})" if method else ""
        raise NetslimError(f"Expected a {cls.__name__}{what}; got {type(cfg).__name__}.")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise NetslimError(f"{where or cls.__name__}: expected a mapping of fields; got {shown(overrides)}.")
    data = {**(cfg.model_dump() if cfg is not None else {}), **(overrides or {})}
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise NetslimError(f"{where or cls.__name__}: field names must be strings; got {shown(bad[0])}.")
    try:
        return cls(**data)
    except pydantic.ValidationError as err:
        raise NetslimError(_format_validation_error(err, where or cls.__name__)) from None


def make_config(data: Mapping[str, Any], where: str = "config") -> MethodConfig:
    """Build a validated config from ``{"method": name, **params}``.

    ``where`` prefixes error messages (e.g. "recipe step 2").
    """
    if not isinstance(data, Mapping):
        raise NetslimError(f"{where}: expected a mapping with a 'method' key; got {shown(data)}.")
    params = dict(data)
    bad = [k for k in params if not isinstance(k, str)]
    if bad:
        raise NetslimError(f"{where}: field names must be strings; got {shown(bad[0])}.")
    name = params.pop("method", None)
    if name is None:
        raise NetslimError(f"{where}: missing 'method'; allowed values: {', '.join(sorted(methods()))}.")
    try:
        method = get_method(str(name))
    except NetslimError as e:
        raise NetslimError(f"{where}: {e}") from None
    return build_config(method.config_cls, None, params, f"{where} (method {name!r})")


def apply(model, config: MethodConfig, ctx):
    """Apply any registered method config to ``model``; returns the (possibly new) model.

    Before: the step must be allowed after what already ran on the model (``requires``,
    ``freezes``: :class:`~netslim.core.history.StepHistory`, recorded on the model), else one
    NetslimError naming both steps. After: the step is recorded, and the invariants declared on
    the model hold, or the step fails naming itself: layers pruned N:M by an earlier step are
    still N:M (:mod:`netslim.core.patterns`). The step's report (its options and
    ``ctx.notes[method]``: :class:`~netslim.core.history.StepReport`) is kept on the model."""
    from .patterns import check_patterns

    method = get_method(config.method)
    history = StepHistory.of(model)
    history.check(config)
    skipped_before = len(getattr(ctx, "skipped", ()))
    model = method.handler(model, config, ctx)
    if model is not None and hasattr(model, "get_submodule"):
        check_patterns(model, config.method)
        history.after(config).store(model)
        notes = getattr(ctx, "notes", {}).get(config.method)
        skipped = tuple(getattr(ctx, "skipped", ())[skipped_before:])
        StepReport(config.method, config.model_dump(mode="json"), notes, skipped).store(model)
    return model
