"""Rank pruning after training that measures the error after the nonlinearity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netslim
from netslim.core.errors import NetslimError
from netslim.lowrank import LowRankLinear, activation_rank
from netslim.lowrank.activation import activated_errors, layer_outputs


def _mlp(seed: int = 0, decay: float = 0.0) -> nn.Sequential:
    """A small MLP; ``decay`` > 0 gives the first layer a spectrum falling like exp(-decay·i)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    if decay:
        U, _, Vh = torch.linalg.svd(model[0].weight.detach(), full_matrices=False)  # (32, 20), (20, 20)
        with torch.no_grad():
            model[0].weight.copy_(U * torch.exp(-decay * torch.arange(20.0)) @ Vh)
    return model


def test_outputs_in_a_subspace_are_kept_exactly_at_that_rank():
    torch.manual_seed(0)
    layer = nn.Linear(24, 30)
    with torch.no_grad():  # W = A B: every output lies in a 4-dim affine subspace
        layer.weight.copy_(torch.randn(30, 4) @ torch.randn(4, 24))
    model = nn.Sequential(layer, nn.ReLU())
    x = torch.randn(256, 24)
    ref = model(x)
    activation_rank(model, x, tolerance=1e-6)
    assert isinstance(model[0], LowRankLinear) and model[0].rank <= 4
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)


def test_activated_error_stays_within_tolerance_on_calibration_data():
    model = _mlp(decay=0.5)
    x = torch.randn(512, 20)
    ref = model[:2](x)
    activation_rank(model, x, tolerance=0.05, exclude=("4",), calibration_samples=len(x))
    assert isinstance(model[0], LowRankLinear)
    err = (model[:2](x) - ref).norm() / ref.norm()
    assert err <= 0.05 + 1e-6
    assert isinstance(model[4], nn.Linear)  # excluded: the logits have no ReLU after them


def test_relu_discards_directions_that_stay_negative():
    # Outputs 0-1 carry signal; output 2 varies a lot but is always far below zero, so the
    # ReLU erases it: the post-activation rank is lower than the pre-activation one.
    torch.manual_seed(0)
    z = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)
    z[:, 2] -= 100.0
    z[:, :2] += 3.0
    _, _, error = activated_errors(z, "relu")  # directions from the activated outputs
    assert error(2, "relu") < 1e-9
    assert error(2, "identity") > 0.01
    assert error(3, "identity") < 1e-9
    _, _, by_variance = activated_errors(z, "pre")  # the big negative direction comes first
    assert by_variance(2, "relu") > 0.01


def test_step_picks_the_basis_that_needs_fewer_directions():
    # 8 outputs: two copies of each of two signals, and four that are always far below
    # zero but have the largest variance. By variance (pre-activation PCA) rank 3 is needed;
    # the activated outputs' basis needs 2, the break-even rank of an 8x3 layer.
    torch.manual_seed(0)
    x = torch.randn(1000, 3)
    wide = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
    with torch.no_grad():
        w = torch.zeros(8, 3)
        w[0, 0] = w[1, 0] = w[2, 1] = w[3, 1] = 1.0
        w[4:, 2] = 3.0
        wide[0].weight.copy_(w)
        wide[0].bias.copy_(torch.tensor([3.0, 3.0, 3.0, 3.0, -100.0, -100.0, -100.0, -100.0]))
    ref = wide(x)
    activation_rank(wide, x, tolerance=1e-6, calibration_samples=len(x))
    assert isinstance(wide[0], LowRankLinear) and wide[0].rank == 2
    torch.testing.assert_close(wide(x), ref, atol=1e-4, rtol=1e-4)


def test_error_is_non_increasing_in_rank_and_zero_at_full_rank():
    model = _mlp(1)
    z = layer_outputs(model, "0", torch.randn(300, 20))
    _, _, error = activated_errors(z)
    errs = [error(k, "identity") for k in range(1, 33)]
    assert all(a >= b - 1e-12 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-9
    assert error(32, "gelu") < 1e-9


def test_a_layer_stays_dense_when_no_saving_rank_meets_the_tolerance():
    model = _mlp(2)
    x = torch.randn(256, 20)
    activation_rank(model, x, tolerance=1e-9, include=("0",))
    assert isinstance(model[0], nn.Linear)  # full-rank random outputs: break-even rank is not enough


def test_pruned_model_round_trips(tmp_path):
    model = netslim.build_model("lenet300")
    x = torch.randn(256, 1, 28, 28)
    activation_rank(model, x, tolerance=0.5, exclude=("fc3",))
    assert isinstance(model.fc1, LowRankLinear)
    path = netslim.save(model, tmp_path / "m.safetensors")
    again = netslim.load(path)
    torch.testing.assert_close(again(x), model(x))


def test_bad_tolerance_is_named():
    with pytest.raises(NetslimError, match="tolerance"):
        activation_rank(_mlp(), torch.randn(8, 20), tolerance=1.5)


def test_gelu_option_matches_functional_gelu():
    z = torch.randn(50, 6, dtype=torch.float64)
    _, _, error = activated_errors(z)
    k = 3
    U = torch.linalg.eigh((z - z.mean(0)).T @ (z - z.mean(0)))[1].flip(-1)[:, :k]
    approx = (z - z.mean(0)) @ U @ U.T + z.mean(0)
    want = float((F.gelu(approx) - F.gelu(z)).norm() / F.gelu(z).norm())
    assert error(k, "gelu") == pytest.approx(want, rel=1e-9)
