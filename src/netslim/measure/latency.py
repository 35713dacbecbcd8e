"""CPU latency (warm-up, median and quartiles of repeats, fixed threads) and peak memory."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import torch
from torch import nn

from netslim.core.hooks import eval_mode


@contextlib.contextmanager
def fixed_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    threads: int
    q1_ms: float = 0.0  # quartiles of the repeats: the spread every reported latency carries
    q3_ms: float = 0.0

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "iqr_ms": self.iqr_ms}


def timing_of(times: list[float], threads: int) -> Timing:
    """Median, quartiles and 10th / 90th percentiles of per-call times (ms)."""
    if len(times) < 2:
        return Timing(times[0], times[0], times[0], len(times), threads, times[0], times[0])
    dec = statistics.quantiles(times, n=10)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Timing(statistics.median(times), dec[0], dec[-1], len(times), threads, q1, q3)


class Latency(float):
    """A median latency (ms) that carries the spread of its repeats (``q1_ms``, ``q3_ms``,
    ``iqr_ms``, ``repeats``): arithmetic, ``round`` and JSON see the plain median, so code
    that takes a float keeps working while a report can show the spread."""

    q1_ms: float
    q3_ms: float
    repeats: int

    def __new__(cls, median_ms: float, q1_ms: float, q3_ms: float, repeats: int) -> Latency:
        obj = super().__new__(cls, median_ms)
        obj.q1_ms, obj.q3_ms, obj.repeats = q1_ms, q3_ms, repeats
        return obj

    @classmethod
    def of(cls, timing: Timing) -> Latency:
        return cls(timing.median_ms, timing.q1_ms, timing.q3_ms, timing.repeats)

    def __reduce__(self):  # copy / pickle keep the spread
        return type(self), (float(self), self.q1_ms, self.q3_ms, self.repeats)

    @property
    def median_ms(self) -> float:
        return float(self)

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms


def latency_fields(key: str, value: Any) -> dict[str, float]:
    """``{key: median, key_iqr: IQR}`` for a :class:`Latency` (or ``Timing``); ``{key: value}``
    for a bare number (its spread unknown)."""
    median = getattr(value, "median_ms", value)
    iqr = getattr(value, "iqr_ms", None)
    return {key: float(median)} if iqr is None else {key: float(median), f"{key}_iqr": float(iqr)}


def _call(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    if isinstance(inputs, dict):
        return lambda: model(**inputs)
    return lambda: model(inputs)


@torch.inference_mode()
def _sample(
    model: nn.Module, inputs: Any, warmup: int, repeats: int, min_seconds: float = 0.0, number: int = 1
) -> list[float]:
    """Per-call wall times (ms) of ``model(inputs)`` in eval mode, after ``warmup`` calls; each
    sample the mean of a block of ``number`` back-to-back calls."""
    fn = _call(model, inputs)
    times: list[float] = []
    with eval_mode(model):
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / number)
    return times


def measure_latency(
    model: nn.Module,
    inputs: Any,
    *,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    min_seconds: float = 0.0,
) -> Timing:
    """Median wall time of ``model(inputs)`` in eval mode, with its quartiles.

    ``threads`` pins torch's intra-op threads for the measurement (None: current).
    Repeats continue until both ``repeats`` and ``min_seconds`` are reached.
    """
    with fixed_threads(threads):
        times = _sample(model, inputs, warmup, repeats, min_seconds)
        used = torch.get_num_threads()
    return timing_of(times, used)


def interleaved_timings(
    models: dict[str, nn.Module],
    inputs: Any,
    *,
    rounds: int = 5,
    repeats: int = 10,
    threads: int | None = None,
    number: int | dict[str, int] = 1,
) -> dict[str, Timing]:
    """A/B(/C...) timing: rounds alternate between models; median and quartiles over the
    repeats of all rounds pooled (the spread includes the drift between rounds).

    ``number``: calls per timed block (one value, or one per model), each repeat being a block's
    mean, as in ``torch.utils.benchmark``'s blocked measurements: blocks of a few milliseconds
    keep the timer's and the scheduler's jitter out of fast calls' medians and IQRs.
    """
    samples: dict[str, list[float]] = {k: [] for k in models}
    with fixed_threads(threads):
        for _ in range(rounds):
            for k, m in models.items():
                n = number.get(k, 1) if isinstance(number, dict) else number
                samples[k] += _sample(m, inputs, 2, repeats, number=n)
        used = torch.get_num_threads()
    return {k: timing_of(v, used) for k, v in samples.items()}


def interleaved_latency(
    models: dict[str, nn.Module], inputs: Any, *, rounds: int = 5, repeats: int = 10, threads: int | None = None
) -> dict[str, Latency]:
    """A/B(/C...) timing: rounds alternate between models; median over all repeats (ms),
    each a :class:`Latency` that also carries its quartiles.

    Shared, noisy machines drift; interleaving keeps the comparison fair.
    """
    t = interleaved_timings(models, inputs, rounds=rounds, repeats=repeats, threads=threads)
    return {k: Latency.of(v) for k, v in t.items()}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


@torch.inference_mode()
def peak_memory_mb(model: nn.Module, inputs: Any) -> float:
    """Increase of resident memory over one forward pass, sampled around the call (MiB).

    On CUDA it is the allocator's exact peak; on CPU RSS is the honest, coarse proxy.
    """
    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(p.device)
        base = torch.cuda.memory_allocated(p.device)
        _call(model, inputs)()
        return (torch.cuda.max_memory_allocated(p.device) - base) / 2**20
    before = current_rss_mb()
    _call(model, inputs)()
    return max(0.0, psutil.Process().memory_info().rss / 2**20 - before)
