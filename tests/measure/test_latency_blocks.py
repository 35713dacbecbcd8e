"""Blocked timing samples of measure.latency.interleaved_timings (``number`` calls per sample)."""

from __future__ import annotations

import torch
from torch import nn

from netslim.measure.latency import interleaved_timings


class _Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + 1


def test_blocks_per_model_count_calls_and_samples():
    a, b = _Counter(), _Counter()
    t = interleaved_timings({"a": a, "b": b}, torch.zeros(3), rounds=2, repeats=3, number={"a": 4})
    assert a.calls == 2 * (2 + 3 * 4) and b.calls == 2 * (2 + 3)  # 2 warm-up calls per round, then the blocks
    assert t["a"].repeats == t["b"].repeats == 6  # one sample per block, pooled over rounds
    assert t["a"].q1_ms <= t["a"].median_ms <= t["a"].q3_ms
    c = _Counter()
    interleaved_timings({"c": c}, torch.zeros(3), rounds=1, repeats=2, number=5)
    assert c.calls == 2 + 2 * 5
