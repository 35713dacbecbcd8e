"""Selectors: which modules a step touches.

A selector is a string (or a list of them):

* ``"features.0"``       exact qualified name
* ``"layer1.*.conv1"``   glob (``fnmatch``; ``*`` also crosses dots)
* ``"re:layer[12]\\..*"`` regular expression, full match
* ``"type:Conv2d"``      module class name (or dotted path ``type:torch.nn.Conv2d``)

When several selectors map to different settings (``settings_for``), the most specific
kind wins: exact name > regex > glob > type; within one kind, the first listed wins.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Mapping, Sequence, TypeVar

from torch import nn

from .errors import NetslimError

T = TypeVar("T")
_PRECEDENCE = {"exact": 0, "regex": 1, "glob": 2, "type": 3}


def _kind(sel: str) -> str:
    if sel.startswith("re:"):
        return "regex"
    if sel.startswith("type:"):
        return "type"
    if any(c in sel for c in "*?["):
        return "glob"
    return "exact"


def matches(sel: str, name: str, module: nn.Module) -> bool:
    kind = _kind(sel)
    if kind == "regex":
        try:
            return re.fullmatch(sel[3:], name) is not None
        except re.error as e:
            raise NetslimError(f"Selector {sel!r} is not a valid regular expression: {e}.") from None
    if kind == "type":
        want = sel[5:]
        cls = type(module)
        return want in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}") or any(
            want in (c.__name__, f"{c.__module__}.{c.__qualname__}") for c in cls.__mro__[1:-1]
        )
    if kind == "glob":
        return fnmatch.fnmatchcase(name, sel)
    return name == sel


def _as_list(sel: str | Sequence[str] | None) -> list[str]:
    if sel is None:
        return []
    return [sel] if isinstance(sel, str) else list(sel)


def select(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    *,
    types: tuple[type, ...] | None = None,
    required: bool = True,
) -> list[str]:
    """Qualified names of modules matching ``include`` (all if None) minus ``exclude``.

    ``types`` restricts to modules a method can handle. With ``required`` an include
    selector that matches nothing raises, naming the selector.
    """
    inc, exc = _as_list(include), _as_list(exclude)
    named = [(n, m) for n, m in model.named_modules() if n and (types is None or isinstance(m, types))]
    if required:
        for sel in inc:
            if not any(matches(sel, n, m) for n, m in named):
                kinds = ", ".join(sorted({type(m).__name__ for _, m in named})) or "none"
                raise NetslimError(
                    f"Selector {sel!r} matches no module of the supported types ({kinds})."
                )
    out = []
    for n, m in named:
        if inc and not any(matches(s, n, m) for s in inc):
            continue
        if any(matches(s, n, m) for s in exc):
            continue
        out.append(n)
    return out


def settings_for(name: str, module: nn.Module, table: Mapping[str, T]) -> T | None:
    """The value of the most specific selector in ``table`` that matches ``name``."""
    best: tuple[int, int] | None = None
    value = None
    for i, (sel, v) in enumerate(table.items()):
        if matches(sel, name, module):
            key = (_PRECEDENCE[_kind(sel)], i)
            if best is None or key < best:
                best, value = key, v
    return value


def names_of(items: Iterable[str]) -> str:
    return ", ".join(items)
