"""Progress bars that are quiet when output is not a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    if os.environ.get("NETSLIM_PROGRESS") in ("0", "1"):
        return os.environ["NETSLIM_PROGRESS"] == "1"
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    return tqdm(items, desc=desc, total=total, disable=not progress_enabled(), leave=False, dynamic_ncols=True)
