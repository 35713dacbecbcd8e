"""Oracles for the factorizations: full rank reproduces the layer; error falls with rank."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netslim
from netslim.core.errors import NetslimError
from netslim.lowrank import LowRankConv2d, LowRankLinear, factorize_conv, factorize_linear, tucker2
from netslim.lowrank.conv import conv_matrix, tucker_factors
from netslim.lowrank.svd import svd_factors, whitening_factor


def test_full_rank_linear_reproduces_layer():
    torch.manual_seed(0)
    layer, x = nn.Linear(20, 12), torch.randn(7, 20)
    f = factorize_linear(layer, 12)
    torch.testing.assert_close(f(x), layer(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.dense_weight(), layer.weight, atol=1e-5, rtol=1e-5)


def test_truncated_linear_is_the_eckart_young_optimum():
    torch.manual_seed(0)
    layer = nn.Linear(30, 16)
    S = torch.linalg.svdvals(layer.weight.double())
    for r in (1, 5, 15):
        err = (factorize_linear(layer, r).dense_weight() - layer.weight).double().norm()
        assert err.item() == pytest.approx(S[r:].norm().item(), rel=1e-4)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_full_rank_conv_reproduces_layer(scheme):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    x = torch.randn(2, 6, 11, 13)
    full = min(conv_matrix(conv.weight, scheme).shape)
    f = factorize_conv(conv, full, scheme=scheme)
    torch.testing.assert_close(f(x), conv(x), atol=1e-4, rtol=1e-4)


def test_full_rank_tucker_reproduces_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(tucker2(conv, (6, 8))(x), conv(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("iters", [0, 2])
def test_tucker_error_decreases_with_rank(iters):
    torch.manual_seed(0)
    w = torch.randn(12, 10, 3, 3)
    errors = []
    for r in range(1, 13):  # (r_in, r_out) up to the full (10, 12)
        U_out, core, U_in = tucker_factors(w, (min(r, 10), r), iters)
        approx = torch.einsum("rsyx,or,is->oiyx", core, U_out, U_in)
        errors.append((approx - w.double()).norm().item())
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-9 * w.norm().item()


def test_hooi_never_worse_than_hosvd():
    torch.manual_seed(1)
    w = torch.randn(16, 12, 3, 3)
    for r in (2, 5, 8):
        e = [
            (torch.einsum("rsyx,or,is->oiyx", c, uo, ui) - w.double()).norm()
            for uo, c, ui in (tucker_factors(w, (r, r), it) for it in (0, 3))
        ]
        assert e[1] <= e[0] + 1e-9


def test_data_aware_beats_plain_svd_on_correlated_inputs():
    torch.manual_seed(0)
    n, m, N = 40, 30, 2000
    mix = torch.randn(n, 6) @ torch.randn(6, n) + 0.05 * torch.randn(n, n)  # low-dimensional, correlated inputs
    X = torch.randn(N, n) @ mix.T  # (N, n)
    layer = nn.Linear(n, m, bias=False)
    L = whitening_factor(X.double().T @ X.double(), damping=1e-4)
    for r in (2, 4, 8):
        plain = factorize_linear(layer, r)
        aware = factorize_linear(layer, r, whitening=L)
        e_plain = (plain(X) - layer(X)).norm()
        e_aware = (aware(X) - layer(X)).norm()
        assert e_aware < 0.9 * e_plain, (r, e_aware, e_plain)
        # Factors balanced per rank-1 term, as plain SVD's are (fine-tuning needs it).
        torch.testing.assert_close(
            aware.first.weight.norm(dim=1), aware.second.weight.norm(dim=0), rtol=1e-4, atol=1e-6
        )


def test_rank_above_min_dimension_is_rejected_with_the_allowed_range():
    with pytest.raises(NetslimError, match=r"'rank'.*\[1, 12\]; got 13"):
        factorize_linear(nn.Linear(20, 12), 13)
    with pytest.raises(NetslimError, match=r"'rank'.*got 0"):
        factorize_linear(nn.Linear(20, 12), 0)
    with pytest.raises(NetslimError, match="r_out"):
        tucker2(nn.Conv2d(4, 5, 3), (4, 6))
    with pytest.raises(NetslimError, match="groups=4"):
        factorize_conv(nn.Conv2d(4, 4, 3, groups=4), 2)
    with pytest.raises(NetslimError, match="rank"):
        svd_factors(torch.randn(3, 4), 5)


def test_factorized_layers_round_trip_through_save_load(tmp_path):
    torch.manual_seed(0)
    model = netslim.build_model("resnet20", width=4)
    model.layer1[0].conv1 = factorize_conv(model.layer1[0].conv1, 3)
    model.layer1[0].conv2 = factorize_conv(model.layer1[0].conv2, 3, scheme="spatial")
    model.layer2[0].conv1 = tucker2(model.layer2[0].conv1, (2, 3))
    model.fc = factorize_linear(model.fc, 4)
    model.eval()
    path = netslim.save(model, tmp_path / "m.safetensors")
    back = netslim.load(path)
    assert isinstance(back.fc, LowRankLinear) and isinstance(back.layer1[0].conv2, LowRankConv2d)
    assert back.layer1[0].conv2.scheme == "spatial"
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(back(x), model(x))
