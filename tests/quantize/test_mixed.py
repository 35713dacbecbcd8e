"""Mixed precision: exact allocation (brute-force oracle), sensitivities, end-to-end widths."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netslim.core.errors import NetslimError
from netslim.models import build_model
from netslim.quantize.int8_modules import Int8Conv2d, Int8Linear
from netslim.quantize.mixed import (
    allocate_bits,
    hessian_sensitivity,
    kl_sensitivity,
    mixed_precision,
)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), seed=st.integers(0, 1000), avg=st.floats(2.0, 8.0))
def test_allocation_is_exact(n, seed, avg):
    g = torch.Generator().manual_seed(seed)
    names = [f"l{i}" for i in range(n)]
    sizes = {k: int(torch.randint(1, 50, (1,), generator=g)) for k in names}
    sens = {k: {2: float(torch.rand(1, generator=g)) + 1, 4: float(torch.rand(1, generator=g)), 8: 0.0} for k in names}
    budget = avg * sum(sizes.values())
    best = min(
        (c for c in itertools.product([2, 4, 8], repeat=n) if sum(b * sizes[k] for b, k in zip(c, names)) <= budget),
        key=lambda c: sum(sens[k][b] for b, k in zip(c, names)),
    )
    got = allocate_bits(sens, sizes, avg)
    assert sum(sens[k][got[k]] for k in names) == pytest.approx(sum(sens[k][b] for b, k in zip(best, names)))
    assert sum(got[k] * sizes[k] for k in names) <= budget


def test_allocation_below_smallest_width_rejected():
    with pytest.raises(NetslimError, match="avg_bits"):
        allocate_bits({"a": {4: 0.1, 8: 0.0}}, {"a": 10}, 3.0)


def test_sensitivities_fall_with_bits(fmnist_small):
    torch.manual_seed(0)
    model = build_model("lenet5")
    batch = fmnist_small.calibration_inputs(64)
    for fn in (kl_sensitivity, hessian_sensitivity):
        sens = fn(model, batch, ["conv1", "fc1"], [2, 8])
        for table in sens.values():
            assert table[2] > table[8] >= 0


def test_mixed_precision_end_to_end(fmnist_small, tmp_path):
    import netslim

    torch.manual_seed(0)
    model = build_model("lenet5")
    calib = fmnist_small.calibration_inputs(64)
    q = mixed_precision(model, calib, avg_bits=5.0)
    layers = [m for m in q.modules() if isinstance(m, (Int8Conv2d, Int8Linear))]
    sizes = [m.weight_numel for m in layers]
    avg = sum(m.weight_bits * s for m, s in zip(layers, sizes)) / sum(sizes)
    assert avg <= 5.0 and len({m.weight_bits for m in layers}) >= 2
    loaded = netslim.load(netslim.save(q, tmp_path / "mp.safetensors"))
    assert [m.weight_bits for m in loaded.modules() if hasattr(m, "weight_bits")] == [m.weight_bits for m in layers]
