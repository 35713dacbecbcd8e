"""Blocks parked on disk during the pass, made-permanent pruning, and the exact N:M pattern choice."""

import itertools

import pytest
import torch

from netslim.core.brain_surgeon import inverse_cholesky, obs_solve
from netslim.core.errors import NetslimError
from netslim.core.layerwise import BlockStore, decoder_blocks, run_sequential
from netslim.core.masks import make_permanent, masked_params
from netslim.models.hf_tiny import tiny_gpt2, tiny_llama
from netslim.prune.oneshot import SparseGPTConfig, sparsegpt, sparsegpt_prune, wanda
from netslim.quantize.gptq import gptq


def _ids(n=6, length=48, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("method", ["sparsegpt", "gptq"])
def test_parked_blocks_give_the_same_model(build, method, tmp_path):
    ids = _ids()
    kw = {"sparsity": 0.5} if method == "sparsegpt" else {"bits": 4, "group_size": 32}
    fn = {"sparsegpt": sparsegpt, "gptq": gptq}[method]
    a, b = build(), build()
    fn(a, ids, batch_size=4, **kw)
    fn(b, ids, batch_size=4, offload_dir=str(tmp_path), offload_blocks=True, **kw)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no activation or block file left behind
    with torch.no_grad():  # the model runs as a whole again
        assert torch.equal(a(input_ids=ids[:2]).logits, b(input_ids=ids[:2]).logits)


def test_blocks_come_back_after_an_error(tmp_path):
    model, ids = tiny_llama(), _ids()
    before = _state(model)
    params = {n: p for n, p in model.named_parameters()}

    def boom(i, name, block, feed):
        if i == 1:
            raise RuntimeError("compression failed")

    with pytest.raises(RuntimeError, match="compression failed"):
        run_sequential(model, ids, boom, batch_size=4, offload_dir=tmp_path, offload_blocks=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p is params[n] for n, p in model.named_parameters())  # same Parameter objects


def test_block_store_round_trip_keeps_identity_dtype_and_masks(tmp_path):
    model = tiny_llama()
    sparsegpt(model, _ids(), sparsity=0.5, batch_size=3)  # masks: bool buffers inside parametrizations
    block = decoder_blocks(model)[1][0]
    before = {n: t.detach().clone() for n, t in BlockStore._tensors(block).items()}
    objs = BlockStore._tensors(block)
    assert any(t.dtype == torch.bool for t in before.values())
    store = BlockStore(tmp_path)
    store.park(0, block)
    assert all(t.numel() == 0 for t in objs.values())
    store.restore(0, block)
    now = BlockStore._tensors(block)
    assert all(now[n] is objs[n] and now[n].dtype == before[n].dtype and torch.equal(now[n], before[n]) for n in before)
    assert not list(tmp_path.iterdir())


def test_offload_blocks_needs_an_offload_dir():
    with pytest.raises(NetslimError, match="'offload_blocks' parameter"):
        sparsegpt(tiny_llama(), _ids(), sparsity=0.5, offload_blocks=True)


@pytest.mark.parametrize("method", [sparsegpt, wanda])
def test_permanent_equals_masks_made_permanent(method):
    ids = _ids()
    a, b = tiny_llama(), tiny_llama()
    method(a, ids, sparsity=0.5, batch_size=3)
    method(b, ids, sparsity=0.5, batch_size=3, permanent=True)
    assert masked_params(a) and not masked_params(b)
    make_permanent(a)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    w = b.model.layers[0].mlp.down_proj.weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def _layer(seed, rows=32, cols=64, tokens=512):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + torch.randn(cols, cols, generator=g) / 4)
    return torch.randn(rows, cols, generator=g), 2 * x.T @ x / tokens


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8)])
def test_exact_nm_choice_is_the_best_pattern_of_a_group(n, m):
    """One group of m columns: 'exact' reaches the lowest OBS loss over every allowed pattern (brute force)."""
    w, h = _layer(n * 10 + m, cols=m)
    u, _, _ = inverse_cholesky(h, w.clone())
    w_exact, keep, loss_exact = obs_solve(w, u, nm=(n, m), nm_select="exact")
    assert (keep.sum(1) == n).all()
    losses = torch.stack(
        [
            torch.tensor(
                [
                    obs_solve(w[r : r + 1], u, fixed_prune=torch.tensor([[j in p for j in range(m)]]))[2]
                    for p in itertools.combinations(range(m), m - n)
                ]
            )
            for r in range(len(w))
        ]
    )
    assert loss_exact == pytest.approx(float(losses.min(1).values.sum()), rel=1e-5)
    _, _, loss_diag = obs_solve(w, u, nm=(n, m), nm_select="diag")
    assert loss_exact <= loss_diag + 1e-6


def test_exact_nm_choice_on_a_whole_layer():
    w, h = _layer(3, rows=48, cols=256)
    w_new, keep = sparsegpt_prune(w, h, nm=(2, 4), nm_select="exact")
    assert (keep.reshape(-1, 4).sum(1) == 2).all() and (w_new[~keep] == 0).all()
    with pytest.raises(NetslimError, match="'nm_select' parameter"):
        sparsegpt_prune(w, h, nm=(2, 4), nm_select="best")
    with pytest.raises(ValueError, match="nm_select"):
        SparseGPTConfig(n=2, m=4, nm_select="best")
