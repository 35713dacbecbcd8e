"""Sequential refit and output-sensitivity rank allocation of the ``svd`` step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netslim.core.config import make_config
from netslim.core.errors import NetslimError
from netslim.lowrank import LowRankLinear, SVDConfig, svd_compress, svd_layers


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[None, :]  # decaying input spectrum
    return torch.randn(n, d, generator=g) @ mix.T + 0.3


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 6)).eval()


def _layer_error(model, original, x, upto: int) -> float:
    """‖layer ``upto``'s output in ``model`` − in ``original``‖² on ``x``."""
    with torch.no_grad():
        return float((model[: upto + 1](x) - original[: upto + 1](x)).pow(2).sum())


def test_sequential_equals_data_aware_when_earlier_layers_are_untouched():
    """X̂ = X for the first factorized layer, so its refit target W* is W itself."""
    x = _correlated_inputs(512, 32)
    a, b = _mlp(), _mlp()
    svd_compress(a, x, select="rank", ranks={"2": 8}, data_aware=True, calibration_samples=len(x))
    svd_compress(b, x, select="rank", ranks={"2": 8}, data_aware=True, sequential=True, calibration_samples=len(x))
    torch.testing.assert_close(b[2].dense_weight(), a[2].dense_weight(), rtol=1e-4, atol=1e-5)


def test_sequential_refit_reduces_the_error_after_a_factorized_layer():
    x = _correlated_inputs(1024, 32)
    original = _mlp()
    oneshot, seq = copy.deepcopy(original), copy.deepcopy(original)
    ranks = {"0": 4, "2": 10}
    svd_compress(oneshot, x, select="rank", ranks=ranks, data_aware=True, damping=1e-6, calibration_samples=len(x))
    svd_compress(
        seq, x, select="rank", ranks=ranks, data_aware=True, sequential=True, damping=1e-6, calibration_samples=len(x)
    )
    assert isinstance(seq[0], LowRankLinear) and isinstance(seq[2], LowRankLinear)
    # Layer 0 sees the same inputs either way: identical factorization.
    torch.testing.assert_close(seq[0].dense_weight(), oneshot[0].dense_weight())
    e_one, e_seq = _layer_error(oneshot, original, x, 2), _layer_error(seq, original, x, 2)
    assert e_seq < 0.9 * e_one, (e_seq, e_one)


def test_sequential_refit_is_the_best_rank_r_least_squares_fit():
    """Oracle: the refit second layer gives the best rank-16 approximation of the
    least-squares fit X̂ W*ᵀ ≈ X Wᵀ (lstsq, then truncated SVD), up to the tiny damping."""
    torch.manual_seed(0)
    x = torch.randn(2048, 24)
    model = nn.Sequential(nn.Linear(24, 30), nn.Tanh(), nn.Linear(30, 60)).eval()  # break-even rank 20 > 16
    original = copy.deepcopy(model)
    svd_compress(
        model,
        x,
        select="rank",
        ranks={"0": 6, "2": 16},
        data_aware=True,
        sequential=True,
        damping=1e-9,
        calibration_samples=len(x),
    )
    with torch.no_grad():
        h, h_hat = original[:2](x), model[:2](x)  # (N, 30): layer 2's inputs, original and factorized
        target = h @ original[2].weight.T  # (N, 60)
        w_star = torch.linalg.lstsq(h_hat.double(), target.double()).solution.T  # (60, 30)
        # best rank-16 approximation in the X̂-weighted norm = truncated SVD of X̂ W*ᵀ's row space
        u, s, vh = torch.linalg.svd(h_hat.double() @ w_star.T, full_matrices=False)
        best = (u[:, :16] * s[:16]) @ vh[:16]  # (N, 60)
        got = h_hat.double() @ model[2].dense_weight().double().T
    assert float((got - best).norm() / best.norm()) < 1e-3


class _TwoBranch(nn.Module):
    """y = a(x) + scale · b(x): b's errors matter ``scale`` times less than a's."""

    def __init__(self, scale: float):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.scale = nn.Linear(64, 64), nn.Linear(64, 64), scale
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight)  # identical spectra: only the sensitivity differs
            self.b.bias.copy_(self.a.bias)

    def forward(self, x):
        return self.a(x) + self.scale * self.b(x)


def test_output_allocation_gives_rank_to_the_layer_the_output_depends_on():
    x = torch.randn(256, 64)
    spectral, output = _TwoBranch(0.05), _TwoBranch(0.05)
    budget = dict(select="budget", target=0.5, target_scope="selected", calibration_samples=len(x))
    svd_compress(spectral, x, **budget)
    svd_compress(output, x, allocation="output", **budget)
    assert abs(spectral.a.rank - spectral.b.rank) <= 1  # same spectra: an even split
    assert output.a.rank > output.b.rank + 5
    # The budget holds, and the model's output error is lower.
    dense = 2 * 64 * 64
    for m in (spectral, output):
        assert (m.a.rank + m.b.rank) * 128 <= 0.5 * dense
    ref = _TwoBranch(0.05)
    with torch.no_grad():
        err = {k: float((m(x) - ref(x)).pow(2).sum()) for k, m in (("spectral", spectral), ("output", output))}
    assert err["output"] < err["spectral"]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"select": "budget", "target": 0.5, "sequential": True}, "sequential needs data_aware"),
        ({"select": "energy", "allocation": "output"}, "allocation 'output' needs select 'budget'"),
        ({"select": "budget", "target": 0.5, "allocation": "best"}, "allocation"),
        ({"select": "budget", "target": 0.5, "output_aware": True}, "output_aware needs data_aware"),
    ],
)
def test_invalid_refine_options_name_the_field(bad, match):
    with pytest.raises(NetslimError, match=match):
        make_config({"method": "svd", **bad})


def test_output_allocation_without_calibration_is_a_clear_error():
    with pytest.raises(NetslimError, match="allocation='output' needs calibration"):
        svd_layers(_mlp(), SVDConfig(select="budget", target=0.5, allocation="output"), example=torch.randn(1, 32))


# ------------------------------------------------------------------ output-aware (two-sided)
def _lower(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=g, dtype=torch.float64).tril(-1) * 0.3 + torch.diag(
        torch.rand(n, generator=g, dtype=torch.float64) + 0.2
    )


def test_two_sided_factors_reach_the_eckart_young_bound():
    """‖Rᵀ(W − AB)L‖² must equal the dropped σ² of Rᵀ W L (the optimum), beat the one-sided
    factors in that norm, and reproduce W at full rank."""
    from netslim.lowrank import svd_factors
    from netslim.lowrank.svd import spectrum

    torch.manual_seed(0)
    w = torch.randn(20, 16, dtype=torch.float64)
    L, R = _lower(16, 1), _lower(20, 2)
    sigma = spectrum(w, L, R)
    for r in (3, 8):
        a, b = svd_factors(w, r, L, R)
        err = float((R.T @ (w - a @ b) @ L).pow(2).sum())
        assert err == pytest.approx(float(sigma[r:].pow(2).sum()), rel=1e-9)
        a1, b1 = svd_factors(w, r, L)
        assert err < float((R.T @ (w - a1 @ b1) @ L).pow(2).sum())
    a, b = svd_factors(w, 16, L, R)
    torch.testing.assert_close(a @ b, w)


def test_output_gradient_grams_estimate_the_gauss_newton_metric():
    """For y = W₂(W₁x): ∂(vᵀy)/∂(W₁x) = W₂ᵀv, so E[GᵀG]/N = W₂ᵀW₂ (and I for the last layer);
    the model's parameters keep requires_grad False and get no .grad."""
    from netslim.lowrank.calib import output_gradient_grams

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 5)).requires_grad_(False)
    n = 40_000
    grams = output_gradient_grams(model, ["0", "1"], torch.randn(n, 6), batch_size=4096)
    w2 = model[1].weight.double()
    est, want = grams["0"] / n, w2.T @ w2
    assert float((est - want).norm() / want.norm()) < 0.03
    assert float((grams["1"] / n - torch.eye(5, dtype=torch.float64)).norm()) < 0.05
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_output_aware_lowers_the_error_at_the_model_output():
    """Layer 0 feeds a last layer that reads mostly a few of its outputs: weighting by the
    output's sensitivity spends the rank there and cuts the model's output error."""
    torch.manual_seed(0)
    x = _correlated_inputs(2048, 32)
    original = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 6)).eval()
    with torch.no_grad():
        original[2].weight.mul_(torch.logspace(0, -2, 48)[torch.randperm(48)])  # anisotropic reader
    one, two = copy.deepcopy(original), copy.deepcopy(original)
    opts = dict(select="rank", ranks={"0": 4}, data_aware=True, damping=1e-4, calibration_samples=len(x))
    svd_compress(one, x, **opts)
    svd_compress(two, x, output_aware=True, **opts)
    with torch.no_grad():
        ref = original(x)
        e_one, e_two = (float((m(x) - ref).pow(2).sum()) for m in (one, two))
    assert e_two < 0.7 * e_one, (e_two, e_one)
