"""Modules that keep state derived from their tensors (a decoded weight, a packed kernel
operand): the derived state is dropped whenever the tensors move, change dtype or are loaded."""

from __future__ import annotations

from typing import Any

from torch import nn


class DerivedState(nn.Module):
    """Mixin: :meth:`_reset_derived` runs before every ``_apply`` (``.to``, ``.half``, ``.cuda``, …)
    and before a state-dict load, so nothing decoded from the old tensors outlives them.
    A subclass overriding ``_load_from_state_dict`` calls ``super()`` first."""

    def _reset_derived(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _reset_derived")

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._reset_derived()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        self._reset_derived()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
