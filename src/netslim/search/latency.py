"""Per-layer-shape latency lookup table (NetAdapt's "empirical measurements").

The latency of a candidate is predicted as ``overhead + sum over Conv2d/Linear layers of
LUT[layer shape]``, where a shape is (type, in, out, kernel, stride, padding, groups,
input H x W, batch) and each entry is the median time of that layer alone, measured once
and stored in a JSON file (so later searches reuse it).

What the table does not cover (BN, activations, dispatch) is not constant under pruning:
BN and activations shrink with the channels too. So the prediction is *calibrated*:
``latency ~ alpha + beta * LUT sum``, fitted by least squares on a few models timed for
real (the dense model and uniform prunings, A/B interleaved); without calibration,
``overhead`` = dense measured latency minus its LUT sum. The final model is always timed
for real as well, so the prediction error is reported, not hidden.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.core.hooks import eval_mode
from netslim.core.serialize import atomic_write
from netslim.measure.latency import interleaved_latency, measure_latency


class LatencyTable:
    def __init__(
        self, path: str | os.PathLike | None = None, *, batch_size: int = 1, threads: int = 1, repeats: int = 40
    ):
        self.path = Path(path) if path else None
        self.batch_size, self.threads, self.repeats = batch_size, threads, repeats
        self.table: dict[str, float] = {}
        if self.path and self.path.is_file():
            self.table = json.loads(self.path.read_text())
        self._hw: dict[int, dict[str, tuple[int, int]]] = {}
        self._overhead: dict[int, float] = {}
        self._fit: dict[int, tuple[float, float]] = {}
        self.measured = 0

    def _input_hw(self, model: nn.Module, example: Any) -> dict[str, tuple[int, int]]:
        key = id(model)
        if key not in self._hw:
            hw: dict[str, tuple[int, int]] = {}
            hooks = {
                m: lambda mod, a, n=n: hw.__setitem__(n, tuple(a[0].shape[2:4]))
                for n, m in model.named_modules()
                if isinstance(m, nn.Conv2d)
            }
            with eval_mode(model, hooks, kind="pre", grad=False):
                model(example[:1])
            self._hw[key] = hw
        return self._hw[key]

    def _key(self, m: nn.Module, cin: int, cout: int, hw: tuple[int, int] | None) -> str:
        if isinstance(m, nn.Conv2d):
            groups = cin if (m.groups > 1 and m.groups == m.in_channels == m.out_channels) else m.groups
            return (
                f"conv|{cin}|{cout}|{m.kernel_size[0]}x{m.kernel_size[1]}|s{m.stride[0]}|p{m.padding[0]}"
                f"|g{groups}|{hw[0]}x{hw[1]}|b{self.batch_size}|t{self.threads}"
            )
        return f"linear|{cin}|{cout}|b{self.batch_size}|t{self.threads}"

    def _measure(self, key: str) -> float:
        parts = key.split("|")
        if parts[0] == "conv":
            cin, cout = int(parts[1]), int(parts[2])
            k = tuple(int(v) for v in parts[3].split("x"))
            stride, pad, groups = int(parts[4][1:]), int(parts[5][1:]), int(parts[6][1:])
            h, w = (int(v) for v in parts[7].split("x"))
            layer = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)
            x = torch.randn(self.batch_size, cin, h, w)
        else:
            layer = nn.Linear(int(parts[1]), int(parts[2]))
            x = torch.randn(self.batch_size, int(parts[1]))
        t = measure_latency(layer, x, warmup=3, repeats=self.repeats, threads=self.threads).median_ms
        self.measured += 1
        return t

    def lookup(self, key: str) -> float:
        if key not in self.table:
            self.table[key] = self._measure(key)
        return self.table[key]

    def layer_sum(self, model: nn.Module, example: Any, shapes: dict[str, tuple[int, int]] | None = None) -> float:
        hw = self._input_hw(model, example)
        total = 0.0
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                cin, cout = (shapes or {}).get(
                    name,
                    (
                        getattr(m, "in_channels", getattr(m, "in_features", 0)),
                        getattr(m, "out_channels", getattr(m, "out_features", 0)),
                    ),
                )
                total += self.lookup(self._key(m, cin, cout, hw.get(name)))
        return total

    def calibrate(
        self, model: nn.Module, example: Any, samples: list[tuple[dict, nn.Module]], rounds: int = 9
    ) -> dict[str, float]:
        """Fit ``alpha + beta * LUT sum`` on real timings of ``model`` and ``samples`` ((shapes, pruned model))."""
        import numpy as np

        x = example[: self.batch_size]
        models = {"dense": model, **{f"s{i}": m for i, (_, m) in enumerate(samples)}}
        # Timings on a shared machine drift by 10 %+ between runs; many short interleaved rounds
        # (median of medians) keep the fitted line close to what a later A/B run measures.
        real = interleaved_latency(models, x, rounds=rounds, repeats=max(10, self.repeats // 2), threads=self.threads)
        sums = [self.layer_sum(model, example)] + [self.layer_sum(model, example, sh) for sh, _ in samples]
        a = np.vstack([np.ones(len(sums)), sums]).T
        alpha, beta = np.linalg.lstsq(a, np.array(list(real.values())), rcond=None)[0]
        self._fit[id(model)] = (float(alpha), float(beta))
        pred = [alpha + beta * s for s in sums]
        return {
            "alpha": float(alpha),
            "beta": float(beta),
            "measured_ms": list(real.values()),
            "predicted_ms": [float(p) for p in pred],
        }

    def predict(self, model: nn.Module, example: Any, shapes: dict[str, tuple[int, int]] | None = None) -> float:
        """Predicted latency (ms) of ``model`` with its Conv/Linear layers resized to ``shapes``."""
        if id(model) in self._fit:
            alpha, beta = self._fit[id(model)]
            return alpha + beta * self.layer_sum(model, example, shapes)
        if id(model) not in self._overhead:
            dense = measure_latency(
                model, example[: self.batch_size], warmup=5, repeats=max(self.repeats, 50), threads=self.threads
            ).median_ms
            self._overhead[id(model)] = max(0.0, dense - self.layer_sum(model, example))
        return self._overhead[id(model)] + self.layer_sum(model, example, shapes)

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.table, indent=0, sort_keys=True)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
