"""The sequential block engine: same activations as a full forward, same Hessians as capturing all at once."""

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.core.layerwise import block_linears, collect_hessians, decoder_blocks, run_sequential, weight_2d
from netslim.models.hf_tiny import tiny_bert, tiny_gpt2, tiny_llama
from netslim.prune.oneshot import sparsegpt, sparsegpt_prune

BUILDERS = [tiny_llama, tiny_gpt2]


def _ids(n=6, length=48, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _last_block_output(model, ids):
    _, blocks = decoder_blocks(model)
    seen = []
    h = blocks[-1].register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    h.remove()
    return seen[0]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("offload", [False, True])
def test_nothing_compressed_gives_the_full_forward(build, offload, tmp_path):
    model, ids = build(), _ids()
    calls = []
    out = run_sequential(
        model,
        ids,
        lambda i, name, block, feed: calls.append(name),
        batch_size=4,
        offload_dir=tmp_path if offload else None,
    )
    assert calls == [f"{decoder_blocks(model)[0]}.{i}" for i in range(2)]
    got = torch.cat([out.get(i) for i in range(len(out))])
    assert torch.allclose(got, _last_block_output(model, ids), atol=1e-5, rtol=1e-4)
    assert not list(tmp_path.iterdir()) or not offload or all(not p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("build", BUILDERS)
def test_sequential_engine_matches_capturing_everything_at_once(build):
    """Without propagation each block sees dense inputs: the result equals Hessians from one full forward."""
    ids = _ids()
    ref = build()
    prefix, _ = decoder_blocks(ref)
    layers = block_linears(ref, "", f"re:{prefix.replace('.', '[.]')}[.].*")
    hs = collect_hessians(layers, lambda: ref(input_ids=ids, use_cache=False))
    expected = {n: sparsegpt_prune(weight_2d(m), hs[n], sparsity=0.5)[0] for n, m in layers}

    model = build()
    sparsegpt(model, ids, sparsity=0.5, sequential=False, batch_size=4)
    for n, _ in layers:
        assert torch.allclose(weight_2d(model.get_submodule(n)), expected[n], atol=1e-4, rtol=1e-3), n


def test_propagation_changes_later_blocks_only():
    ids = _ids()
    a, b = tiny_llama(), tiny_llama()
    sparsegpt(a, ids, sparsity=0.5, sequential=True)
    sparsegpt(b, ids, sparsity=0.5, sequential=False)
    wa, wb = a.model.layers[0].mlp.down_proj.weight, b.model.layers[0].mlp.down_proj.weight
    assert torch.equal(wa, wb)  # block 0 sees the same inputs either way
    assert not torch.equal(a.model.layers[1].mlp.down_proj.weight, b.model.layers[1].mlp.down_proj.weight)


def test_unsupported_model_names_the_supported_families():
    with pytest.raises(NetslimError, match="not a supported decoder stack.*model.layers.*GPT-2.*OPT"):
        sparsegpt(tiny_bert(), _ids())


def test_bad_calibration_inputs():
    model = tiny_llama()
    with pytest.raises(NetslimError, match="context length 1024"):
        sparsegpt(model, torch.zeros(1, 1100, dtype=torch.long))
    with pytest.raises(NetslimError, match="256 tokens"):
        sparsegpt(model, torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(NetslimError, match="token ids"):
        run_sequential(model, torch.zeros(2, 300), lambda *a: None)
