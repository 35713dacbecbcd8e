"""Artifact formats for the ``export`` step: name -> writer. The modules that write a format
register it where they live (found through :mod:`netslim.core.registry`, loaded before any lookup)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from .errors import unknown_name
from .registry import failure_note, load_sources
from .serialize import save

Exporter = Callable[[nn.Module, Path, dict], Path]
_EXPORTERS: dict[str, tuple[Exporter, str]] = {}


def register_exporter(name: str, fn: Exporter, suffix: str) -> None:
    _EXPORTERS[name] = (fn, suffix)


def exporter(name: str) -> tuple[Exporter, str]:
    load_sources()
    if name not in _EXPORTERS:
        err = unknown_name("export format", name, _EXPORTERS)
        raise type(err)(str(err) + failure_note())
    return _EXPORTERS[name]


def export_formats() -> list[str]:
    load_sources()
    return sorted(_EXPORTERS)


register_exporter("safetensors", lambda model, path, info: save(model, path, info), ".safetensors")
