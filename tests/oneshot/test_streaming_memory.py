"""Measured memory accounting (issue 19, part 2) on synthetic allocations and models."""

from __future__ import annotations

import time

import torch
from torch import nn

from netslim.measure.memory import PeakMemory, current_rss, fp32_bytes, high_water_rss

MB = 2**20


def _hold(n_bytes: int, seconds: float = 0.15) -> None:
    x = torch.ones(n_bytes // 4)  # written: every page resident
    time.sleep(seconds)  # long enough for several samples
    del x


def test_a_stretch_reports_its_own_peak_above_its_start():
    with PeakMemory() as mem:
        _hold(192 * MB)
    d = mem.as_dict(fp32_bytes=96 * MB)
    assert d["peak_rss_bytes"] >= d["start_rss_bytes"] + 0.9 * 192 * MB
    assert d["peak_rss_x_fp32"] == round(d["peak_rss_bytes"] / (96 * MB), 3)
    assert d["seconds"] >= 0.15 and d["method"] in ("high-water mark", "sampled")


def test_a_later_smaller_stretch_is_not_charged_the_earlier_peak():
    with PeakMemory() as big:
        _hold(256 * MB)
    with PeakMemory() as small:
        _hold(32 * MB)
    assert small.method == "sampled"  # below the process's high-water mark: sampled
    assert small.peak_rss >= small.start_rss + 0.8 * 32 * MB
    assert small.peak_rss < big.peak_rss - 128 * MB
    assert high_water_rss() >= 0.95 * big.peak_rss  # the kernel's counter is never reset (it trails a little)


def test_a_new_process_peak_is_at_least_the_kernel_high_water_mark():
    before = high_water_rss() or 0
    above = before - current_rss() + 64 * MB  # past the process's peak so far
    with PeakMemory() as mem:
        _hold(above, seconds=0.0)  # too short to be sampled: the kernel's counter has it
    after = high_water_rss()
    assert after >= before + 32 * MB
    assert mem.peak_rss >= after


def test_fp32_bytes_counts_stored_elements_once_on_any_device():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 8)
            self.head = nn.Linear(8, 100, bias=False)
            self.head.weight = self.emb.weight  # tied: stored once
            self.norm = nn.LayerNorm(8)
            self.register_buffer("steps", torch.zeros(3, dtype=torch.long))  # not floating
            self.register_buffer("cache", torch.zeros(50), persistent=False)  # not stored

    expected = 4 * (100 * 8 + 8 + 8)
    assert fp32_bytes(Tied()) == expected
    with torch.device("meta"):
        assert fp32_bytes(Tied()) == expected
