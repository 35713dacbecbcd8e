"""The latency lookup table: keys per layer shape, persistence, and the calibrated prediction.

Timings are replaced by deterministic functions of the layer shape (monkeypatched), so the
oracle is exact: a table whose entries are the layers' MACs and "real" latencies that are
``alpha + beta * LUT sum`` must give back alpha and beta, and the space's latency cost of a
policy must be that line at the shrunk model's LUT sum.
"""

import pytest
import torch
from torch import nn

import netslim.search.latency as latency_mod
from netslim.measure.counts import macs_per_layer
from netslim.search.channels import ChannelSpace
from netslim.search.latency import LatencyTable

X = torch.randn(1, 1, 28, 28)
ALPHA, BETA = 0.25, 3.0


def _fake_layer_ms(self, key: str) -> float:
    """Milliseconds of a layer alone := its MACs / 1e4 (a function of the key only)."""
    p = key.split("|")
    self.measured += 1
    if p[0] == "conv":
        cin, cout, groups = int(p[1]), int(p[2]), int(p[6][1:])
        kh, kw = (int(v) for v in p[3].split("x"))
        stride, pad = int(p[4][1:]), int(p[5][1:])
        h, w = (int(v) for v in p[7].split("x"))
        oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
        return cin // groups * cout * kh * kw * oh * ow / 1e4
    return int(p[1]) * int(p[2]) / 1e4


def _fake_real(models, x, **kw):
    """A model's "measured" latency: ALPHA + BETA * (its MACs / 1e4), exactly on the line."""
    return {k: ALPHA + BETA * sum(macs_per_layer(m, x).values()) / 1e4 for k, m in models.items()}


@pytest.fixture
def fake_timing(monkeypatch):
    monkeypatch.setattr(LatencyTable, "_measure", _fake_layer_ms)
    monkeypatch.setattr(latency_mod, "interleaved_latency", _fake_real)


def test_calibration_recovers_the_line_and_the_cost_follows_it(fake_timing, tiny_resnet, tmp_path):
    lut = LatencyTable(tmp_path / "lut.json")
    space = ChannelSpace(tiny_resnet, X, options=(0.0, 0.25, 0.5), metric="latency", latency=lut)
    cal = space.calibration
    assert cal["alpha"] == pytest.approx(ALPHA, abs=1e-6)
    assert cal["beta"] == pytest.approx(BETA, rel=1e-6)
    assert cal["predicted_ms"] == pytest.approx(cal["measured_ms"], rel=1e-6)
    assert len(cal["measured_ms"]) == 3  # dense + the two uniform prunings
    pol = {space.names[0]: 0.5, space.names[-1]: 0.25}
    shrunk = space.apply(pol)
    expected = ALPHA + BETA * sum(macs_per_layer(shrunk, X).values()) / 1e4
    assert space.cost(pol) == pytest.approx(expected, rel=1e-6)
    assert space.cost(pol) < space.dense_cost()


def test_table_persists_and_is_reused(fake_timing, tiny_resnet, tmp_path):
    path = tmp_path / "lut.json"
    lut = LatencyTable(path)
    total = lut.layer_sum(tiny_resnet, X)
    assert lut.measured == len(lut.table) > 0
    lut.save()
    again = LatencyTable(path)
    assert again.layer_sum(tiny_resnet, X) == pytest.approx(total)
    assert again.measured == 0  # every shape came from the file


def test_keys_separate_shapes_and_depthwise_groups():
    lut = LatencyTable(batch_size=1, threads=1)
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    full = nn.Conv2d(8, 8, 3, padding=1)
    k_dw, k_full = lut._key(dw, 8, 8, (14, 14)), lut._key(full, 8, 8, (14, 14))
    assert k_dw != k_full and "|g8|" in k_dw and "|g1|" in k_full
    # a pruned depthwise conv keeps groups == channels
    assert "|g5|" in lut._key(dw, 5, 5, (14, 14))
    assert lut._key(full, 8, 8, (7, 7)) != k_full


def test_uncalibrated_prediction_uses_the_dense_overhead(monkeypatch, tiny_resnet, tmp_path):
    from types import SimpleNamespace

    monkeypatch.setattr(LatencyTable, "_measure", _fake_layer_ms)
    monkeypatch.setattr(latency_mod, "measure_latency", lambda *a, **k: SimpleNamespace(median_ms=1e6))
    lut = LatencyTable(tmp_path / "lut.json")
    space = ChannelSpace(tiny_resnet, X, options=(0.0, 0.5), metric="latency", latency=lut, calibrate=False)
    assert space.calibration is None
    assert space.dense_cost() == pytest.approx(1e6)
    pol = {space.names[0]: 0.5}
    drop = lut.layer_sum(tiny_resnet, X) - lut.layer_sum(tiny_resnet, X, space.shapes(space.plan(pol)))
    assert space.cost(pol) == pytest.approx(1e6 - drop)
