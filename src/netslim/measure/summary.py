"""The metrics block ``M`` of a report: metric, params, non-zeros, MACs, bytes, latency."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from .counts import count_nonzero, count_params, macs_per_layer
from .latency import Latency, latency_fields, measure_latency


def size_on_disk(model: nn.Module, path: str | os.PathLike | None = None) -> int:
    """Bytes of the artifact at ``path`` (a directory: the sum of its files); without a path,
    of a temporary ``netslim.save``."""
    if path is not None:
        path = Path(path)
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    from netslim.core.serialize import save

    with tempfile.TemporaryDirectory() as d:
        return save(model, Path(d) / "m.safetensors").stat().st_size


def model_summary(
    model: nn.Module,
    task,
    *,
    artifact: str | os.PathLike | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    repeats: int = 20,
    evaluate: bool = True,
    split: str = "test",
) -> dict[str, Any]:
    """``{metric, params, nonzero, macs, size_bytes, latency_ms_b1, latency_ms_bN}``.

    ``size_bytes`` is the size of the file at ``artifact`` (or of a temporary save); each
    latency is a :class:`Latency` (median) with its spread beside it (``latency_ms_b1_iqr``).
    """
    model.eval()
    out: dict[str, Any] = {}
    if evaluate:
        out.update({k: v for k, v in task.evaluate(model, split).items() if k == task.metric})
    out["params"] = count_params(model)
    out["nonzero"] = count_nonzero(model)
    out["macs"] = int(sum(macs_per_layer(model, task.example_inputs(1)).values()))
    out["size_bytes"] = size_on_disk(model, artifact)
    for key, batch, reps in (("latency_ms_b1", 1, repeats), ("latency_ms_bN", batch_size, max(5, repeats // 2))):
        t = measure_latency(model, task.example_inputs(batch), repeats=reps, threads=threads)
        out.update(latency_fields(key, t))
        out[key] = Latency.of(t)
    out["batch_N"] = batch_size
    return out
