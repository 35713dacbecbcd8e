"""Single-layer oracles for SparseGPT / Wanda / magnitude / GPTQ on correlated inputs."""

import pytest
import torch

from netslim.core.brain_surgeon import inverse_cholesky, layer_error, obs_solve
from netslim.core.errors import NetslimError
from netslim.prune.oneshot import magnitude_mask, sparsegpt_prune, wanda_mask
from netslim.quantize.gptq import gptq_quantize
from netslim.quantize.packing import dequantize_groups, quantize_groups


def _layer(seed=0, rows=48, cols=128, tokens=2048):
    """W (rows, cols) and H = 2 XᵀX / n for inputs X with correlated, unevenly scaled columns."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scale = torch.exp(torch.randn(cols, generator=g))  # some inputs far larger than others
    x = (torch.randn(tokens, cols, generator=g) @ mix) * scale  # (n, cols)
    w = torch.randn(rows, cols, generator=g)
    return w, 2 * x.T @ x / tokens, x


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_error_ranks_sparsegpt_below_wanda_below_magnitude(seed, nm):
    w, h, _ = _layer(seed)
    w_mag = w * magnitude_mask(w, 0.5, nm=nm)
    w_wanda = w * wanda_mask(w, torch.diag(h), sparsity=0.5, nm=nm)
    w_sgpt, keep = sparsegpt_prune(w, h, sparsity=0.5, nm=nm)
    e_mag, e_wanda, e_sgpt = (layer_error(w, x, h=h) for x in (w_mag, w_wanda, w_sgpt))
    assert e_sgpt < e_wanda < e_mag
    assert (w_sgpt[~keep] == 0).all() and keep.float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_layer_error_is_the_output_error():
    w, h, x = _layer(3)
    w_hat = w * magnitude_mask(w, 0.5)
    direct = 2 * (x @ w.T - x @ w_hat.T).pow(2).sum() / len(x)
    assert layer_error(w, w_hat, h=h) == pytest.approx(float(direct), rel=1e-3)


def test_sparsegpt_without_pruning_reproduces_the_weights():
    w, h, _ = _layer(4)
    w_new, keep = sparsegpt_prune(w, h, sparsity=0.0)
    assert keep.all() and torch.equal(w_new, w)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_is_exact(n, m):
    w, h, _ = _layer(5)
    for keep in (
        sparsegpt_prune(w, h, sparsity=0.0, nm=(n, m))[1],
        wanda_mask(w, torch.diag(h), sparsity=0.5, nm=(n, m)),
    ):
        assert (keep.reshape(-1, m).sum(1) == n).all()
    w_new, keep = sparsegpt_prune(w, h, sparsity=0.0, nm=(n, m))
    assert ((w_new != 0).reshape(-1, m).sum(1) <= n).all()


@pytest.mark.parametrize(
    "bits,group,act_order",
    [
        (4, 32, False),
        (4, 32, True),
        (3, 32, False),
        (3, 32, True),
        (4, None, False),
        (4, None, True),
        (8, 128, False),
        (2, 64, True),
    ],
)  # 2-bit needs act-order to beat RTN here
def test_gptq_beats_round_to_nearest(bits, group, act_order):
    w, h, _ = _layer(6)
    codes, scale, zero, w_hat = gptq_quantize(w, h, bits=bits, group_size=group, act_order=act_order)
    # the packed format reproduces exactly what GPTQ optimised
    assert torch.equal(dequantize_groups(codes, scale, zero), w_hat)
    assert int(codes.max()) < 2**bits
    rtn_bits = 4 if bits == 3 else bits
    if bits == 3:  # RTN at 3 bits: min-max codes on the 3-bit grid
        from netslim.quantize.packing import codes_for, minmax_params

        g = group or w.shape[1]
        s, z = minmax_params(w.reshape(-1, g), 3, False)
        w_rtn = ((codes_for(w.reshape(-1, g), s, z, 3) - z[:, None]) * s[:, None]).reshape(w.shape)
    else:
        w_rtn = dequantize_groups(*quantize_groups(w, rtn_bits, group))
    assert layer_error(w, w_hat, h=h) < layer_error(w, w_rtn, h=h)


def test_gptq_clip_search_and_joint_sparsity():
    w, h, _ = _layer(7)
    e_rtn = layer_error(w, dequantize_groups(*quantize_groups(w, 4, 32)), h=h)
    e_clip = layer_error(w, gptq_quantize(w, h, bits=4, group_size=32, clip_search=True)[3], h=h)
    assert e_clip < e_rtn
    codes, scale, zero, w_hat = gptq_quantize(w, h, bits=4, group_size=32, nm=(2, 4))
    assert ((w_hat != 0).reshape(-1, 4).sum(1) <= 2).all()
    assert torch.equal(dequantize_groups(codes, scale, zero), w_hat)  # pruned entries decode to exact 0


def test_dead_inputs_and_singular_hessian_never_give_nan(caplog):
    w, h, x = _layer(8, cols=64, tokens=16)  # 16 tokens for 64 inputs: rank 16
    x[:, :5] = 0
    h = 2 * x.T @ x / len(x)
    for damp in (0.0, 0.01):
        w_new, _ = sparsegpt_prune(w, h, sparsity=0.5, damp=damp)
        assert torch.isfinite(w_new).all() and (w_new[:, :5] == 0).all()
        assert torch.isfinite(gptq_quantize(w, h, bits=4, group_size=32, damp=damp)[3]).all()


def test_hopeless_hessian_has_a_clear_message():
    h = torch.full((8, 8), float("nan"))
    with pytest.raises(NetslimError, match="NaN"):
        inverse_cholesky(h, torch.zeros(4, 8))
    h = -torch.eye(8)  # negative definite: no damping helps within the tries
    with pytest.raises(NetslimError, match="singular.*damp"):
        inverse_cholesky(h, torch.zeros(4, 8), damp=0.0, max_tries=2)


def test_obs_solve_lazy_blocks_match_one_block():
    w, h, _ = _layer(9)
    u, _, _ = inverse_cholesky(h, w.clone())
    a = obs_solve(w, u, nm=(2, 4), blocksize=16)[0]
    b = obs_solve(w, u, nm=(2, 4), blocksize=128)[0]
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
