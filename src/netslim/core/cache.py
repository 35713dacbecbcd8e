"""netslim's cache folder: trained baselines, compiled C kernels, search tables, streamed copies."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$NETSLIM_CACHE``, else ``~/.cache/netslim`` (read on every call: tests point it elsewhere)."""
    return Path(os.environ.get("NETSLIM_CACHE", Path.home() / ".cache" / "netslim"))


def checkpoint_path(name: str) -> Path:
    """Where ``netslim train NAME`` keeps the trained baseline of zoo model ``name``."""
    return cache_dir() / "models" / f"{name}.safetensors"
