"""Sequential refit and output-sensitivity rank allocation of the ``svd`` step."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netslim.core.config import make_config
from netslim.core.errors import NetslimError
from netslim.lowrank import LowRankLinear, svd_compress


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
    svd_compress(a, select="rank", ranks={"2": 8}, data_aware=True, calibration=x)
    svd_compress(b, select="rank", ranks={"2": 8}, data_aware=True, sequential=True, calibration=x)
    torch.testing.assert_close(b[2].dense_weight(), a[2].dense_weight(), rtol=1e-4, atol=1e-5)


def test_sequential_refit_reduces_the_error_after_a_factorized_layer():
    x = _correlated_inputs(1024, 32)
    original = _mlp()
    oneshot, seq = copy.deepcopy(original), copy.deepcopy(original)
    ranks = {"0": 4, "2": 10}
    svd_compress(oneshot, select="rank", ranks=ranks, data_aware=True, calibration=x, damping=1e-6)
    svd_compress(seq, select="rank", ranks=ranks, data_aware=True, sequential=True, calibration=x, damping=1e-6)
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
    svd_compress(model, select="rank", ranks={"0": 6, "2": 16}, data_aware=True, sequential=True, calibration=x,
                 damping=1e-9)
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
    budget = dict(select="budget", target=0.5, target_scope="selected", calibration=x)
    svd_compress(spectral, **budget)
    svd_compress(output, allocation="output", **budget)
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


@pytest.mark.parametrize("bad, match", [
    ({"select": "budget", "target": 0.5, "sequential": True}, "sequential needs data_aware"),
    ({"select": "energy", "allocation": "output"}, "allocation 'output' needs select 'budget'"),
    ({"select": "budget", "target": 0.5, "allocation": "best"}, "allocation"),
])
def test_invalid_refine_options_name_the_field(bad, match):
    with pytest.raises(NetslimError, match=match):
        make_config({"method": "svd", **bad})


def test_output_allocation_without_calibration_is_a_clear_error():
    with pytest.raises(NetslimError, match="allocation='output' needs calibration"):
        svd_compress(_mlp(), select="budget", target=0.5, allocation="output", example=torch.randn(1, 32))
