"""Method configs and the handler registry.

A config is a frozen, validated pydantic model with no runtime state; a handler is the
function that applies it. ``register(Config)`` ties them together and ``apply`` is the
one entry point: a recipe is just a list of configs.

Handlers have the signature ``handler(model, config, ctx) -> model``; ``ctx`` is a
:class:`netslim.core.context.StepContext` giving data, device and the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict

from .errors import NetslimError, clip, shown, unknown_name


class MethodConfig(BaseModel):
    """Base class of every method config. Subclasses set ``method`` (the recipe name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: ClassVar[str] = ""
    # Whole-recipe validation (netslim.recipe.spec.validate_order):
    requires: ClassVar[tuple[str, ...]] = ()  # methods that must run earlier
    freezes: ClassVar[bool] = False           # after it, nothing may change weights
    modifies_weights: ClassVar[bool] = True
    # Converts only layers still in float form and leaves converted ones (packed, sparse)
    # alone, so it may follow a freezing step (e.g. int8 embeddings after GPTQ's blocks).
    float_layers_only: ClassVar[bool] = False
    # Under torchrun (netslim.train.parallel): every rank runs the step, training data-parallel with
    # rank 0's pruning decisions. Steps without it run on rank 0 alone (one-shot calibrations excepted).
    data_parallel: ClassVar[bool] = False

    @classmethod
    def example(cls) -> "MethodConfig":
        """A small valid instance for contract tests (configs with required fields override)."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.model_dump(mode="json")}


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[MethodConfig]
    handler: Callable[..., Any]


_METHODS: dict[str, Method] = {}


def register(config_cls: type[MethodConfig]) -> Callable[[Callable], Callable]:
    """Decorator: ``@register(MagnitudeConfig) def apply_magnitude(model, cfg, ctx): ...``."""
    name = config_cls.method
    if not name:
        raise TypeError(f"{config_cls.__name__}.method must be set before registering")

    def deco(handler: Callable) -> Callable:
        if name in _METHODS and _METHODS[name].handler is not handler:
            raise TypeError(f"method {name!r} is registered twice")
        _METHODS[name] = Method(name, config_cls, handler)
        return handler

    return deco


def methods() -> dict[str, Method]:
    _load_builtin_methods()
    return dict(_METHODS)


def get_method(name: str) -> Method:
    _load_builtin_methods()
    if name not in _METHODS:
        raise unknown_name("method", name, _METHODS)
    return _METHODS[name]


# Technique families, imported explicitly (never discovered by scanning): each module
# registers its configs, module types, exporters and loaders at import.
FAMILIES: tuple[str, ...] = (
    "netslim.recipe.steps",
    "netslim.lowrank",
    "netslim.distill",
    "netslim.prune",
    "netslim.quantize",
    "netslim.prune.dynamic",
    "netslim.prune.l0",
    "netslim.prune.movement",
    "netslim.prune.obd",
    "netslim.codec",
    "netslim.prune.structured",
    "netslim.prune.cofi",
    "netslim.prune.oneshot", "netslim.quantize.gptq", "netslim.quantize.sparse_gptq",
    "netslim.search",
    "netslim.export.gguf",
    "netslim.export.hf",
)


def load_families() -> None:
    import importlib

    for name in FAMILIES:
        importlib.import_module(name)


_load_builtin_methods = load_families


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


def build_config(cls: type[C], cfg: C | None = None, overrides: Mapping[str, Any] | None = None,
                 where: str | None = None) -> C:
    """The one way to build a config from a call: ``cfg`` (an instance of ``cls`` or None)
    updated with ``overrides`` (keyword arguments or a dict), validated, errors in the house
    style (one :class:`NetslimError` line naming ``where`` - default the class name - and the
    field). Every plain-Python entry point and every config-from-dict site uses it.

    >>> build_config(MagnitudeConfig, None, {"sparsity": 0.5})            # doctest: +SKIP
    """
    if cfg is not None and not isinstance(cfg, cls):
        what = f" (method {cls.method!r})" if getattr(cls, "method", "") else ""
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

    Then the invariants declared on the model hold, or the step fails naming itself: layers
    pruned N:M by an earlier step are still N:M (:mod:`netslim.core.patterns`)."""
    from .patterns import check_patterns

    model = get_method(config.method).handler(model, config, ctx)
    if model is not None and hasattr(model, "get_submodule"):
        check_patterns(model, config.method)
    return model
