"""Sparse storage and execution: CSR round-trips, kernel == dense, smaller files, sparsify."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.export import exporter
from netslim.core.masks import make_permanent, masked_params
from netslim.prune import SparseConv2d, SparseLinear, kernels, magnitude_prune, save_sparse
from netslim.prune.sparse import from_csr, to_csr


def pruned_linear(rows, cols, sparsity, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(cols, rows, bias=bias)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < sparsity] = 0
    return lin


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 70), density=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_csr_round_trip_is_bit_exact(rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < density)
    crow, col, values = to_csr(w)
    assert crow.dtype == torch.int32 and col.dtype == torch.int16 and values.numel() == int((w != 0).sum())
    assert torch.equal(from_csr(crow, col, values, (rows, cols)), w)


def test_column_indices_above_32767_survive_int16_storage():
    w = torch.zeros(2, 40000)
    w[0, 39999], w[1, 32768], w[1, 5] = 1.5, -2.0, 3.0
    crow, col, values = to_csr(w)
    assert torch.equal(from_csr(crow, col, values, w.shape), w)
    x = torch.randn(3, 40000)
    lin = nn.Linear(40000, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    torch.testing.assert_close(SparseLinear.from_dense(lin)(x), lin(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(SparseLinear.from_dense(lin)(x[:1]), lin(x[:1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_kernel", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 64, 70, 130])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_sparse_linear_matches_dense(batch, sparsity, use_kernel, monkeypatch):
    if not use_kernel:
        monkeypatch.setattr(kernels, "_library", lambda: None)
    lin = pruned_linear(96, 200, sparsity)
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(batch, 200)
    with torch.inference_mode():
        torch.testing.assert_close(sp(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


def test_sparse_linear_handles_leading_dims_and_no_bias():
    lin = pruned_linear(16, 24, 0.8, bias=False)
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(SparseLinear.from_dense(lin)(x), lin(x), rtol=1e-5, atol=1e-5)


def test_kernel_is_compiled_here():
    # The dev machine has gcc; CI without one uses the fallback (covered above).
    if not shutil.which("gcc"):
        pytest.skip("no C compiler")
    assert kernels.kernel_available()


def test_sparse_conv_matches_dense():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.8] = 0
    x = torch.randn(2, 6, 9, 9)
    assert torch.equal(SparseConv2d.from_dense(conv)(x), conv(x))


def test_sparse_export_round_trips_bit_exactly_and_is_smaller(tiny_mlp, tmp_path):
    magnitude_prune(tiny_mlp, sparsity=0.95)
    x = torch.randn(4, 1, 28, 28)
    write, suffix = exporter("sparse")
    path = write(tiny_mlp, tmp_path / f"m{suffix}", {"note": "x"})
    assert path.name.endswith(".sparse.safetensors")
    loaded = netslim.load(path)
    assert isinstance(loaded.fc1, SparseLinear)
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(getattr(loaded, name).weight, getattr(tiny_mlp, name).weight), name
        assert torch.equal(getattr(loaded, name).bias, getattr(tiny_mlp, name).bias), name
    with torch.inference_mode():
        assert torch.equal(loaded(x), tiny_mlp.eval()(x))
    assert masked_params(tiny_mlp) == ["fc1.weight", "fc2.weight", "fc3.weight"]  # the model is untouched
    dense_path = netslim.save(make_permanent(tiny_mlp), tmp_path / "dense.safetensors")
    assert path.stat().st_size <= 0.15 * dense_path.stat().st_size


def test_sparse_export_of_a_cnn_stores_convs_compactly(tiny_cnn, tmp_path):
    magnitude_prune(tiny_cnn, sparsity=0.9, scope="layer")
    path = save_sparse(tiny_cnn, tmp_path / "c.sparse.safetensors")
    loaded = netslim.load(path)
    assert isinstance(loaded.conv2, SparseConv2d)
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(loaded(x), tiny_cnn.eval()(x))


def test_sparsify_keeps_only_faster_layers_and_reloads(tmp_path, fmnist_small):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 10))
    magnitude_prune(model, sparsity=0.97, scope="layer", exclude="3")
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    cfg = make_config({"method": "sparsify", "batch_sizes": [1], "rounds": 2, "repeats": 5})
    x = torch.randn(3, 1, 28, 28)
    ref = model(x).detach()
    out = apply(model, cfg, ctx)
    notes = ctx.notes["sparsify"]["layers"]
    assert set(notes) == {"1", "3"}
    for name, result in notes.items():
        assert isinstance(out.get_submodule(name), SparseLinear) == result["faster"]
    skipped = {s["name"] for s in ctx.skipped}
    assert skipped == {n for n, r in notes.items() if not r["faster"]}
    torch.testing.assert_close(out(x), ref, rtol=1e-5, atol=1e-5)


def test_sparse_modules_round_trip_through_save_load(tmp_path):
    from netslim.models import build_model

    model = build_model("lenet300")
    magnitude_prune(model, sparsity=0.9)
    make_permanent(model)
    model.fc1 = SparseLinear.from_dense(model.fc1, "sparse")
    path = netslim.save(model, tmp_path / "s.safetensors")
    loaded = netslim.load(path)
    assert isinstance(loaded.fc1, SparseLinear) and loaded.fc1.kernel == "sparse"
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model.eval()(x))


def test_sparsify_config_validation():
    with pytest.raises(NetslimError, match="batch_sizes"):
        make_config({"method": "sparsify", "batch_sizes": []})
    with pytest.raises(NetslimError, match="freez|froze"):
        from netslim.recipe.spec import parse_recipe

        parse_recipe({"model": "lenet300", "steps": [{"method": "sparsify"}, {"method": "finetune"}]})


def test_bad_module_arguments():
    with pytest.raises(NetslimError, match="kernel"):
        SparseLinear(4, 4, kernel="fast")
    with pytest.raises(NetslimError, match="index_bits"):
        SparseLinear(4, 4, index_bits=8)


def test_fallback_when_no_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("NETSLIM_NO_EXT", "1")
    kernels._library.cache_clear()
    try:
        assert not kernels.kernel_available()
        lin = pruned_linear(8, 12, 0.5)
        x = torch.randn(2, 12)
        torch.testing.assert_close(SparseLinear.from_dense(lin)(x), lin(x), rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.delenv("NETSLIM_NO_EXT")
        kernels._library.cache_clear()
