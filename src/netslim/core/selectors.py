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
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, TypeVar

from pydantic import BeforeValidator
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


def _shown(sel: str, limit: int = 200) -> str:
    return repr(sel) if len(sel) <= limit else f"{sel[:limit]!r}… ({len(sel):,} chars)"


def regex_error(sel: str) -> str | None:
    """Why a ``re:`` selector does not compile (None when it does, or is not a regex)."""
    if _kind(sel) != "regex":
        return None
    try:
        re.compile(sel[3:])
    except re.error as e:
        return f"selector {_shown(sel)} is not a valid regular expression: {e}"
    return None


def _normalize_selector(value):
    """Pydantic "before" validator of :data:`Selector`: a string or a list / tuple of strings
    becomes a tuple of strings (None stays None); a ``re:`` pattern must compile."""
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError("must be a selector string or a list of them (exact name, glob, 're:' regex, 'type:' class)")
    for sel in items:
        problem = regex_error(sel)
        if problem:
            raise ValueError(problem)
    return tuple(items)


# The one selector type of every config field that picks modules (``include`` / ``exclude`` /
# per-layer keys): a string or a list of strings in a recipe, a tuple of strings (or None) on
# the validated config.
Selector = Annotated[tuple[str, ...] | None, BeforeValidator(_normalize_selector)]


def matches(sel: str, name: str, module: nn.Module) -> bool:
    kind = _kind(sel)
    if kind == "regex":
        try:
            return re.fullmatch(sel[3:], name) is not None
        except re.error as e:
            raise NetslimError(f"Selector {_shown(sel)} is not a valid regular expression: {e}.") from None
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
                raise NetslimError(f"Selector {_shown(sel)} matches no module of the supported types ({kinds}).")
    out = []
    for n, m in named:
        if inc and not any(matches(s, n, m) for s in inc):
            continue
        if any(matches(s, n, m) for s in exc):
            continue
        out.append(n)
    return out


def selector_problems(model: nn.Module | None, selectors: str | Sequence[str] | None) -> list[str]:
    """What is wrong with ``selectors``, without touching ``model``: a ``re:`` pattern that
    does not compile, or (with a model) a selector that matches no module of it.

    One message per bad selector, naming it and a few of the modules there are; [] when
    all resolve.
    """
    problems, named = [], None
    for sel in _as_list(selectors):
        if not isinstance(sel, str):
            problems.append(f"a selector must be a string; got a {type(sel).__name__}")
            continue
        bad = regex_error(sel)
        if bad or model is None:
            problems += [bad] if bad else []
            continue
        if named is None:
            named = [(n, m) for n, m in model.named_modules() if n]
        if not any(matches(sel, n, m) for n, m in named):
            problems.append(
                f"selector {_shown(sel)} matches no module of {type(model).__name__}; {_some_modules(named, sel)}"
            )
    return problems


def _some_modules(named: list[tuple[str, nn.Module]], sel: str, shown: int = 8) -> str:
    """A hint for a selector that matched nothing: the types present for ``type:``, else layer names."""
    if _kind(sel) == "type":
        kinds = sorted({type(m).__name__ for _, m in named})
        return f"types present: {', '.join(kinds[:20]) or 'none'}" + (" ..." if len(kinds) > 20 else "")
    # layers (modules holding parameters themselves) say more than containers
    layers = [n for n, m in named if next(m.parameters(recurse=False), None) is not None] or [n for n, _ in named]
    more = f" ... ({len(layers)} in all)" if len(layers) > shown else ""
    return f"modules there: {', '.join(layers[:shown]) or 'none'}{more}"


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
