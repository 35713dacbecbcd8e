"""Artifact formats for the ``export`` step: name -> writer. Later methods add theirs."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from .errors import unknown_name
from .serialize import save

Exporter = Callable[[nn.Module, Path, dict], Path]
_EXPORTERS: dict[str, tuple[Exporter, str]] = {}


def register_exporter(name: str, fn: Exporter, suffix: str) -> None:
    _EXPORTERS[name] = (fn, suffix)


def exporter(name: str) -> tuple[Exporter, str]:
    if name not in _EXPORTERS:
        raise unknown_name("export format", name, _EXPORTERS)
    return _EXPORTERS[name]


def export_formats() -> list[str]:
    return sorted(_EXPORTERS)


register_exporter("safetensors", lambda model, path, info: save(model, path, info), ".safetensors")
