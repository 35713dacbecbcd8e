"""Find and replace modules by qualified name."""

from __future__ import annotations

from torch import nn

from .errors import NetslimError


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise NetslimError(f"Model has no module named {name!r}.") from None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the submodule ``name`` with ``new``; returns the old module."""
    if not name:
        raise NetslimError("Cannot replace the root module; build a new model instead.")
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name)
    if not hasattr(parent, child):
        raise NetslimError(f"Model has no module named {name!r}.")
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
