"""Errors that netslim raises for bad input.

Every message says what is wrong, where, the allowed values and what was given, so
the CLI can print it as one line and exit with code 2.
"""
from __future__ import annotations

from typing import Any, Iterable


class NetslimError(ValueError):
    """Bad input detected by netslim (a config, a file, a model, a name)."""


class UnknownNameError(NetslimError, KeyError):
    """A name (model, dataset, method, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


def unknown_name(kind: str, given: Any, allowed: Iterable[str]) -> UnknownNameError:
    allowed = sorted(allowed)
    return UnknownNameError(f"Unknown {kind} {given!r}; allowed values: {', '.join(allowed) or '(none)'}.")


def bad_param(owner: str, field: str, rule: str, given: Any) -> NetslimError:
    """The scikit-learn style message: The 'x' parameter of Y must be ...; got z."""
    return NetslimError(f"The {field!r} parameter of {owner} must be {rule}; got {given!r}.")
