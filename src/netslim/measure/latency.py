"""CPU latency (warm-up, median of repeats, fixed threads) and peak memory."""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import psutil
import torch
from torch import nn


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

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _call(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    if isinstance(inputs, dict):
        return lambda: model(**inputs)
    return lambda: model(inputs)


@torch.inference_mode()
def measure_latency(model: nn.Module, inputs: Any, *, warmup: int = 5, repeats: int = 30,
                    threads: int | None = None, min_seconds: float = 0.0) -> Timing:
    """Median wall time of ``model(inputs)`` in eval mode.

    ``threads`` pins torch's intra-op threads for the measurement (None: current).
    Repeats continue until both ``repeats`` and ``min_seconds`` are reached.
    """
    was_training = model.training
    model.eval()
    fn = _call(model, inputs)
    with fixed_threads(threads):
        for _ in range(warmup):
            fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        used = torch.get_num_threads()
    model.train(was_training)
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return Timing(statistics.median(times), q[0], q[-1], len(times), used)


def interleaved_latency(models: dict[str, nn.Module], inputs: Any, *, rounds: int = 5,
                        repeats: int = 10, threads: int | None = None) -> dict[str, float]:
    """A/B(/C...) timing: rounds alternate between models; median over all repeats (ms).

    Shared, noisy machines drift; interleaving keeps the comparison fair.
    """
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            samples[k].append(measure_latency(m, inputs, warmup=2, repeats=repeats, threads=threads).median_ms)
    return {k: statistics.median(v) for k, v in samples.items()}


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
