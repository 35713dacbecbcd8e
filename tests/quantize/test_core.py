"""Quantizer core and observers: error bounds, torch oracle, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netslim.core.errors import NetslimError
from netslim.quantize.core import QScheme, dequantize, fake_quantize, qparams_from_range, quantize, to_rows
from netslim.quantize.observers import OBSERVERS, make_observer


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    gran=st.sampled_from(["tensor", "channel", "group"]),
    seed=st.integers(0, 10_000),
    scale_exp=st.floats(-4, 3),
)
def test_qdq_error_at_most_half_a_step(bits, symmetric, gran, seed, scale_exp):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 32, generator=g) * (10**scale_exp)
    scheme = QScheme(bits, symmetric, gran, axis=0, group_size=8)
    obs = make_observer("minmax", scheme)
    obs.observe(x)
    qp = obs.qparams()
    q = quantize(x, qp)
    assert int(q.min()) >= scheme.qmin and int(q.max()) <= scheme.qmax
    err = (dequantize(q, qp) - x).abs()
    step = qp.scale.reshape(-1, 1)
    # inside the observed range the error is at most half a step (plus float rounding)
    slack = 4 * torch.finfo(torch.float32).eps * x.abs().max()  # float rounding of x itself
    assert (to_rows(err, scheme) <= step / 2 + slack).all()
    assert torch.equal(fake_quantize(x, qp), dequantize(q, qp))


@pytest.mark.parametrize("bits,symmetric", [(8, False), (8, True), (4, False), (4, True)])
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_matches_torch(bits, symmetric, axis):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    scheme = QScheme(bits, symmetric, "channel", axis=axis)
    obs = make_observer("minmax", scheme)
    obs.observe(w)
    qp = obs.qparams()
    ref = torch.fake_quantize_per_channel_affine(w, qp.scale, qp.zero_point.int(), axis, scheme.qmin, scheme.qmax)
    assert torch.equal(fake_quantize(w, qp), ref)


def test_per_tensor_matches_torch():
    x = torch.randn(4, 100) * 3
    qp = qparams_from_range(x.min().reshape(1), x.max().reshape(1), QScheme(8))
    ref = torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point), 0, 255)
    assert torch.equal(fake_quantize(x, qp), ref)


@pytest.mark.parametrize("name", sorted(OBSERVERS))
@pytest.mark.parametrize("bad", ["empty", "nan", "inf", "constant"])
def test_observers_reject_bad_input(name, bad):
    obs = make_observer(name)
    x = {
        "empty": torch.empty(0),
        "nan": torch.tensor([1.0, float("nan")]),
        "inf": torch.tensor([1.0, float("inf")]),
        "constant": torch.full((10,), 3.0),
    }[bad]
    with pytest.raises(NetslimError, match="empty|non-finite|constant"):
        obs.observe(x)
        obs.qparams()


def test_unsupported_bits_and_group_rejected():
    with pytest.raises(NetslimError, match="one of 2, 3, 4, 5, 6, 7, 8"):
        QScheme(bits=9)
    with pytest.raises(NetslimError, match="divisor of the row length 48"):
        make_observer("minmax", QScheme(4, granularity="group", group_size=32)).observe(torch.randn(4, 48))
    with pytest.raises(NetslimError, match="Unknown observer"):
        make_observer("magic")


def test_pruned_channel_gets_finite_scale():
    w = torch.randn(4, 16)
    w[2] = 0
    obs = make_observer("minmax", QScheme(8, True, "channel"))
    obs.observe(w)
    qp = obs.qparams()
    assert torch.isfinite(qp.scale).all() and (qp.scale > 0).all()
    assert torch.equal(fake_quantize(w, qp)[2], torch.zeros(16))


def test_clipping_observers_beat_minmax_on_outliers():
    torch.manual_seed(0)
    x = torch.randn(20000)
    x[:5] = 40.0  # a few outliers stretch min/max
    scheme = QScheme(4, True)
    errs = {}
    for name in ("minmax", "percentile", "mse", "entropy"):
        obs = make_observer(name, scheme, **({"percentile": 99.9} if name == "percentile" else {}))
        obs.observe(x)
        errs[name] = float((fake_quantize(x, obs.qparams()) - x).pow(2).mean())
    assert errs["mse"] < errs["minmax"] / 2
    assert errs["percentile"] < errs["minmax"]
    assert errs["entropy"] < errs["minmax"]


def test_moving_average_tracks_batches():
    obs = make_observer("moving_avg", momentum=0.5)
    obs.observe(torch.tensor([-1.0, 1.0]))
    obs.observe(torch.tensor([-3.0, 3.0]))
    assert obs.range()[1].item() == pytest.approx(2.0)
