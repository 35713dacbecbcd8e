"""Errors that netslim raises for bad input.

Every message says what is wrong, where, the allowed values and what was given, so
the CLI can print it as one line and exit with code 2. A given value is echoed through
:func:`shown`: capped (a 1 MiB YAML string or a billion-laughs list must not become a
1 MiB error line).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SHOWN_LIMIT = 200  # characters of a user's value echoed in a message


class NetslimError(ValueError):
    """Bad input detected by netslim (a config, a file, a model, a name)."""


class UnknownNameError(NetslimError, KeyError):
    """A name (model, dataset, method, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


def clip(text: str, limit: int = SHOWN_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: ``'abc… (5,000 chars)'``."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} chars)"


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """``repr(value)`` capped at about ``limit`` characters: ``'aaaa… (1,048,578 chars)``.

    Never builds the full repr: a 1 MiB string costs ``limit`` characters, a container its
    first few items (a YAML alias structure of 10^9 shared leaves is not walked), a
    10^5-digit int its bit count (``repr`` of it would raise in Python >= 3.11).
    """
    if isinstance(value, (str, bytes, bytearray)):
        if len(value) <= limit:
            return repr(value)
        return f"{repr(value[:limit])[:limit]}… ({len(value):,} {'chars' if isinstance(value, str) else 'bytes'})"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"<an int of {value.bit_length():,} bits>"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        text = _container(value, limit, depth=0)
        return text if len(text) <= limit else f"{text[:limit]}… ({len(value):,} item{'s' * (len(value) != 1)})"
    return clip(repr(value), limit)


def _container(value: Any, budget: int, depth: int) -> str:
    """A repr of ``value`` that stops once about ``budget`` characters are written."""
    if not isinstance(value, (list, tuple, dict, set, frozenset)):
        return shown(value, budget)
    if depth > 8:
        return "..."
    brackets = "[]" if isinstance(value, list) else "()" if isinstance(value, tuple) else "{}"
    parts, used = [], 0
    for item in value.items() if isinstance(value, dict) else value:
        if used > budget:
            parts.append("...")
            break
        inner = max(budget // 2, 20)  # an item's own cap keeps its "(N chars)" inside the outer one
        text = (
            f"{_container(item[0], inner, depth + 1)}: {_container(item[1], inner, depth + 1)}"
            if isinstance(value, dict)
            else _container(item, inner, depth + 1)
        )
        parts.append(text)
        used += len(text) + 2
    return brackets[0] + ", ".join(parts) + brackets[1]


def unknown_name(kind: str, given: Any, allowed: Iterable[str]) -> UnknownNameError:
    allowed = sorted(allowed)
    return UnknownNameError(f"Unknown {kind} {shown(given)}; allowed values: {', '.join(allowed) or '(none)'}.")


def bad_param(owner: str, field: str, rule: str, given: Any) -> NetslimError:
    """The scikit-learn style message: The 'x' parameter of Y must be ...; got z."""
    return NetslimError(f"The {field!r} parameter of {owner} must be {rule}; got {shown(given)}.")
