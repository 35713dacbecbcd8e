"""netslim's cache folder: trained baselines, compiled C kernels, search tables, streamed copies."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$NETSLIM_CACHE``, else ``~/.cache/netslim`` (read on every call: tests point it elsewhere)."""
    return Path(os.environ.get("NETSLIM_CACHE", Path.home() / ".cache" / "netslim"))
