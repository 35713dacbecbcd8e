"""Models by name. Zoo models carry ``netslim_arch`` so that ``netslim.save`` can rebuild them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from netslim.core.errors import NetslimError, unknown_name
from netslim.core.serialize import register_arch


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    task: str  # "classification" | "causal_lm" | "embedding"
    dataset: str  # default dataset name for this model
    description: str = ""
    pretrained: bool = False  # True: weights come from a package (HF), no training needed
    defaults: dict[str, Any] = field(default_factory=dict)
    # True: the model describes itself to netslim.save (a transformers model: class + config), so
    # no zoo arch is recorded and its artifacts rebuild from the config, not by this builder.
    self_described: bool = False


_MODELS: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> None:
    _MODELS[entry.name] = entry


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)
    return _MODELS[name]


def model_names() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name (random init for CNNs; packaged weights for HF models)."""
    entry = model_entry(name)
    params = inspect.signature(entry.builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(kwargs) - set(params))
        if bad:
            raise NetslimError(
                f"Model {name!r} does not take {', '.join(map(repr, bad))}; allowed: {', '.join(params) or '(none)'}."
            )
    model = entry.builder(**{**entry.defaults, **kwargs})
    if not (entry.pretrained or entry.self_described):
        # HF models describe themselves through their config instead (see models.hf_arch).
        model.netslim_arch = {"name": name, "kwargs": {**entry.defaults, **kwargs}}
    return model


def _describe_zoo(model: nn.Module) -> dict | None:
    arch = getattr(model, "netslim_arch", None)
    return dict(arch) if isinstance(arch, dict) else None


def _build_zoo(arch: dict) -> nn.Module:
    return build_model(arch["name"], **arch.get("kwargs", {}))


register_arch("zoo", _describe_zoo, _build_zoo)
