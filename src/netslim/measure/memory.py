"""Measured peak memory of a stretch of work: process RSS (and CUDA memory) at its highest.

:class:`PeakMemory` is a context manager. RSS: the kernel's high-water mark of the process
(``VmHWM`` in ``/proc/self/status``) only ever grows, so it says a stretch's peak only when
the stretch set a new one (and the kernel updates it lazily: it can trail a short-lived
peak); a sampling thread (every :data:`INTERVAL` s) sees the peak of a stretch below the
process's earlier high; the figure reported is the larger of the two (``method`` says which). The kernel's counter is never reset (a parent measuring this process with
``wait4`` / ``time -v`` still sees the true lifetime peak). CUDA: the allocator's exact peak
(``torch.cuda.max_memory_allocated``) since the stretch began.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

INTERVAL = 0.01  # seconds between RSS samples
_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.M)


def high_water_rss() -> int | None:
    """The process's lifetime peak RSS in bytes (Linux), else None."""
    try:
        m = _HWM.search(Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def current_rss() -> int:
    """Resident bytes of this process now."""
    return int(psutil.Process().memory_info().rss)


class PeakMemory:
    """``with PeakMemory() as mem: ...`` then ``mem.as_dict(fp32_bytes)``."""

    def __init__(self, interval: float = INTERVAL):
        self.interval = interval
        self.start_rss = self.peak_rss = self.end_rss = 0
        self.peak_cuda: int | None = None
        self.method = "sampled"
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self._hwm0 = high_water_rss()
        self.start_rss = self.peak_rss = self._proc.memory_info().rss
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
            self._cuda0 = True
        else:
            self._cuda0 = False
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, name="netslim-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.seconds = time.perf_counter() - self._t0
        self.end_rss = self._proc.memory_info().rss
        self.peak_rss = max(self.peak_rss, self.end_rss)
        hwm = high_water_rss()
        if hwm is not None and self._hwm0 is not None and hwm > max(self._hwm0, self.peak_rss):
            self.peak_rss, self.method = hwm, "high-water mark"
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.peak_cuda = int(torch.cuda.max_memory_allocated())

    def as_dict(self, fp32_bytes: int | None = None) -> dict[str, Any]:
        """``peak_rss_bytes`` (and its ratio to ``fp32_bytes``, the model's fp32 size), RSS at the
        start and end, ``peak_cuda_bytes`` (None without CUDA), wall ``seconds``, ``method``."""
        out: dict[str, Any] = {
            "peak_rss_bytes": int(self.peak_rss),
            "start_rss_bytes": int(self.start_rss),
            "end_rss_bytes": int(self.end_rss),
            "peak_cuda_bytes": self.peak_cuda,
            "seconds": round(self.seconds, 3),
            "method": self.method,
        }
        if fp32_bytes:
            out["fp32_model_bytes"] = int(fp32_bytes)
            out["peak_rss_x_fp32"] = round(self.peak_rss / fp32_bytes, 3)
        return out


def fp32_bytes(model: torch.nn.Module) -> int:
    """Bytes of the floating-point elements the model stores (parameters and persistent buffers)
    at 4 bytes each, tied tensors once (works on the meta device: shapes only)."""
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if id(t) not in seen and t.is_floating_point():
            seen.add(id(t))
            total += 4 * t.numel()
    return total
