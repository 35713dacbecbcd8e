"""Small C kernels, compiled once on the user's machine and called through ctypes.

:func:`c_library` compiles one C source with ``gcc -O3 -march=native -fopenmp`` into
``$NETSLIM_CACHE/ext/`` (keyed by the source, the flags and the CPU's feature flags, so a
changed source or another machine rebuilds) and loads it; no torch headers, so a build takes
about a second. It returns None - and callers fall back to plain torch - without a compiler,
with ``NETSLIM_NO_EXT=1``, or when the build fails (logged once).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from .cache import cache_dir

log = logging.getLogger(__name__)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11")


def cpu_tag() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(source: Path, out: Path, compiler: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", tmp, str(source)], check=True, capture_output=True, timeout=120)
        os.replace(tmp, out)  # atomic: concurrent builders never load a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def c_library(source: Path, name: str) -> ctypes.CDLL | None:
    """The compiled ``source`` (built on first use into the cache as ``name_<hash>.so``), or None."""
    if os.environ.get("NETSLIM_NO_EXT"):  # outside the build cache: clearing a caller's cache re-reads it
        return None
    return _compiled(source, name)


@cache
def _compiled(source: Path, name: str) -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        log.info("no C compiler found; %s uses its torch fallback", name)
        return None
    try:
        key = hashlib.sha256(source.read_bytes() + " ".join([compiler, *FLAGS, cpu_tag()]).encode()).hexdigest()[:16]
        path = cache_dir() / "ext" / f"{name}_{key}.so"
        if not path.is_file():
            _build(source, path, compiler)
        return ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("building %s failed (%s); using its torch fallback", name, e)
        return None
