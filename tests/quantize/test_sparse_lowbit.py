"""Issue 21: pruned + quantized layers - sparse low-bit storage, the sparse int8 kernel, masks through quantization."""

from __future__ import annotations

import copy
import ctypes
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netslim
from netslim.core import serialize
from netslim.core.config import apply
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.masks import get_mask, make_permanent
from netslim.models import build_model
from netslim.prune import magnitude_prune, nm_prune
from netslim.quantize import sparse_codes as sc
from netslim.quantize import sparse_int8
from netslim.quantize.int8_modules import Int8Conv2d, Int8Linear
from netslim.quantize.ptq import ptq_int8
from netslim.quantize.qat import convert_qat, prepare_qat
from netslim.quantize.sparse_lowbit import (
    SparseInt8Conv2d,
    SparseInt8Linear,
    SparseQuantizedLinear,
    compact_form,
    fill_violations,
    sparse_static,
)
from netslim.quantize.weight_only import QuantizedLinear, quantize_weights

X = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def _codes(shape, bits, keep_share, seed=0, fill_value=None):
    g = torch.Generator().manual_seed(seed)
    fill = torch.full(shape, 2 ** (bits - 1) if fill_value is None else fill_value, dtype=torch.uint8)
    codes = torch.randint(0, 2**bits, shape, generator=g, dtype=torch.int64).to(torch.uint8)
    drop = torch.rand(shape, generator=g) >= keep_share
    return torch.where(drop, fill, codes), fill


def _roundtrip(codes, fill, layout, bits):
    index, values, nnz = sc.encode(codes, fill, layout, bits)
    shape = tuple(codes.shape)
    assert index.numel() == sc.index_bytes(layout, shape, nnz) and values.numel() == sc.value_bytes(
        layout, shape, nnz, bits
    )
    sc.check_stored("t", index, values, layout, bits, shape, nnz)
    assert torch.equal(sc.decode(index, values, fill, layout, bits, shape, nnz), codes)
    return index, values, nnz


# ------------------------------------------------------------------------------- codec
def _gaps(codes, fill):
    return sc.Layout("gaps", size=len(sc._gap_index(codes != fill)[0]))


@pytest.mark.parametrize("bits", range(2, 9))
def test_bitmask_and_gap_layouts_roundtrip_bit_exact_at_every_width(bits):
    codes, fill = _codes((13, 37), bits, 0.3, seed=bits)
    _roundtrip(codes, fill, sc.Layout("mask"), bits)
    _roundtrip(codes, fill, _gaps(codes, fill), bits)
    conv, cfill = _codes((6, 5, 3, 3), bits, 0.45, seed=bits + 10)
    _roundtrip(conv, cfill, sc.Layout("mask"), bits)
    _roundtrip(conv, cfill, _gaps(conv, cfill), bits)


def test_gap_coding_is_chosen_where_sparse_enough_and_is_smaller():
    codes, fill = _codes((64, 144), 8, 0.12, seed=1)
    layout = sc.choose_layout(codes != fill, 8, codes.numel())
    nnz = int((codes != fill).sum())
    assert layout.kind == "gaps"
    assert sc.stored_bytes(layout, (64, 144), nnz, 8) < 0.85 * sc.stored_bytes(sc.Layout("mask"), (64, 144), nnz, 8)
    assert sc.choose_layout(codes != fill, 8, codes.numel(), gaps=False).kind == "mask"
    half, hfill = _codes((64, 144), 8, 0.5, seed=2)
    assert sc.choose_layout(half != hfill, 8, half.numel()).kind == "mask"  # at 50 % a bitmask is smaller


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (3, 8), (5, 16)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_nm_layout_roundtrips_bit_exact(n, m, bits):
    from netslim.prune.nm import nm_mask

    for shape in ((12, 4 * m), (6, m, 3, 3)):
        codes, fill = _codes(shape, bits, 1.0, seed=n * m + bits)
        keep = nm_mask(torch.rand(shape, generator=torch.Generator().manual_seed(1)), n, m)
        keep &= torch.rand(shape, generator=torch.Generator().manual_seed(2)) > 0.1  # some groups hold fewer
        codes = torch.where(keep, codes, fill)
        layout = sc.Layout("nm", n, m)
        index, _, _ = _roundtrip(codes, fill, layout, bits)
        groups = codes.numel() // m
        assert index.numel() == -(-groups * n // 8) * layout.index_bits  # ceil(log2 m) bits per slot: 2 for 2:4


def test_two_four_takes_the_nm_layout_with_two_bit_indices():
    from netslim.prune.nm import nm_mask

    fill = torch.full((8, 32), 8, dtype=torch.uint8)
    codes = torch.randint(0, 15, (8, 32), dtype=torch.uint8)
    codes = codes + (codes >= 8).to(torch.uint8)  # never the fill: exactly 2 non-zero codes per group of 4
    codes = torch.where(nm_mask(torch.rand(8, 32), 2, 4), codes, fill)
    layout = sc.choose_layout(codes != fill, 4, 8 * 32 // 2)
    assert layout.kind == "nm" and layout.m == 4 and layout.index_bits == 2


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 40),
    bits=st.integers(2, 8),
    keep=st.floats(0, 1),
    seed=st.integers(0, 2**16),
    per_group=st.booleans(),
)
def test_codec_roundtrip_property(rows, cols, bits, keep, seed, per_group):
    g = torch.Generator().manual_seed(seed)
    fill = (
        torch.randint(0, 2**bits, (rows, 1), generator=g).to(torch.uint8).expand(rows, cols)
        if per_group
        else torch.full((rows, cols), 2 ** (bits - 1), dtype=torch.uint8)
    )
    codes = torch.randint(0, 2**bits, (rows, cols), generator=g).to(torch.uint8)
    codes = torch.where(torch.rand(rows, cols, generator=g) < keep, codes, fill)
    _roundtrip(codes, fill, sc.Layout("mask"), bits)
    if bool((codes != fill).any()):
        _roundtrip(codes, fill, _gaps(codes, fill), bits)
    for m in sc.NM_GROUPS:
        n = int(sc.group_view(codes != fill, m).sum(1).max()) if cols % m == 0 else 0
        if 1 <= n < m:
            _roundtrip(codes, fill, sc.Layout("nm", n, m), bits)


def test_damaged_storage_is_rejected_before_decoding():
    codes, fill = _codes((8, 16), 4, 0.4)
    index, values, nnz = sc.encode(codes, fill, sc.Layout("mask"), 4)
    with pytest.raises(NetslimError, match="marks .* kept positions; the layer stores"):
        sc.check_stored("fc", index, values, sc.Layout("mask"), 4, (8, 16), nnz + 1 if nnz % 8 else nnz - 1)
    flipped = index.clone()
    flipped[0] ^= 1
    if int(sc.unpack_bits(flipped, 128).sum()) != nnz:
        with pytest.raises(NetslimError, match="'weight_index' marks"):
            sc.check_stored("fc", flipped, values, sc.Layout("mask"), 4, (8, 16), nnz)
    with pytest.raises(NetslimError, match="'weight_nz' must be uint8 of"):
        sc.check_stored("fc", index, values[:-1], sc.Layout("mask"), 4, (8, 16), nnz)
    gaps = _gaps(codes, fill)
    gindex, gvalues, _ = sc.encode(codes, fill, gaps, 4)
    for cut in (gindex[:-1], torch.cat([gindex, torch.zeros(3, dtype=torch.uint8)])):
        with pytest.raises(NetslimError):  # truncated, or trailing bytes
            sc.check_stored("fc", cut, gvalues, sc.Layout("gaps", size=cut.numel()), 4, (8, 16), nnz)
    nm = sc.Layout("nm", 2, 4)
    pos = torch.tensor([[1, 0]] * 32, dtype=torch.uint8)  # decreasing slots within a group
    bad = sc._pack_stream(pos, 2)
    with pytest.raises(NetslimError, match="increasing within each group"):
        sc.check_stored("fc", bad, torch.zeros(32, dtype=torch.uint8), nm, 4, (8, 16), 64)


# --------------------------------------------------------------------- modules + save/load
def _pruned_int8(bits: int = 8, sparsity: float = 0.7, nm: bool = False, model: str = "lenet5"):
    torch.manual_seed(0)
    m = build_model(model).eval()
    nm_prune(m, n=2, m=4) if nm else magnitude_prune(m, sparsity=sparsity, scope="layer")
    return ptq_int8(m, X, **({} if bits == 8 else {"weight_bits": {"*": bits}}))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_pruned_static_int8_roundtrips_sparse_and_smaller(bits, tmp_path, monkeypatch):
    q = _pruned_int8(bits, sparsity=0.9 if bits % 2 else 0.6)  # at 90 % the coded gaps, at 60 % a bitmask
    ref, codes = q(X), {n: m.int_weight().clone() for n, m in q.named_modules() if hasattr(m, "int_weight")}
    path = netslim.save(q, tmp_path / "sparse.safetensors")
    assert isinstance(q.conv2, Int8Conv2d) and type(q.conv2) is Int8Conv2d  # the live model is left as it was
    loaded = netslim.load(path)
    assert isinstance(loaded.conv2, SparseInt8Conv2d) and isinstance(loaded.fc1, SparseInt8Linear)
    assert loaded.fc1.weight_bits == bits and loaded.fc1.layout.kind == ("gaps" if bits % 2 else "mask")
    for name, c in codes.items():
        assert torch.equal(loaded.get_submodule(name).int_weight(), c), name
    assert torch.equal(loaded(X), ref)
    monkeypatch.setattr(serialize, "_STORAGE_FORMS", {})
    dense = netslim.save(q, tmp_path / "dense.safetensors")
    assert path.stat().st_size < dense.stat().st_size
    assert type(netslim.load(dense).fc1) is Int8Linear


def test_nm24_layers_are_stored_with_two_bit_indices(tmp_path):
    q = _pruned_int8(nm=True)
    path = netslim.save(q, tmp_path / "nm.safetensors")
    loaded = netslim.load(path)
    for name in ("conv2", "fc1", "fc2"):  # conv1 (1 input channel) was not pruned 2:4
        layer = loaded.get_submodule(name)
        assert isinstance(layer, (SparseInt8Conv2d, SparseInt8Linear)), name
        assert (layer.layout.n, layer.layout.m) == (2, 4), name
        assert layer.weight_index.numel() == -(-(layer.weight_numel // 4 * 2) // 8) * 2  # 2 bits per slot
        assert torch.equal(layer.int_weight(), q.get_submodule(name).int_weight())
    assert type(loaded.conv1) is Int8Conv2d  # dense codes: no sparse form is smaller
    assert torch.equal(loaded(X), q(X))


@pytest.mark.parametrize("bits, group", [(2, None), (4, 16), (4, None), (8, 8)])  # LeNet-300: fc1 takes 784 inputs
def test_weight_only_sparse_roundtrip(bits, group, tmp_path):
    torch.manual_seed(0)
    m = build_model("lenet300").eval()
    magnitude_prune(m, sparsity=0.6, scope="layer")
    masks = {n: get_mask(mod).clone() for n, mod in m.named_modules() if get_mask(mod) is not None}
    q = quantize_weights(m, bits=bits, group_size=group)
    masks = {n: k for n, k in masks.items() if isinstance(q.get_submodule(n), QuantizedLinear)}  # group fits
    assert "fc1" in masks
    for n, keep in masks.items():
        assert fill_violations(q.get_submodule(n), keep) == 0, n  # zeros stay zeros
    x = X.reshape(16, -1)
    loaded = netslim.load(netslim.save(q, tmp_path / "w.safetensors"))
    for n in masks:
        a, b = q.get_submodule(n), loaded.get_submodule(n)
        assert isinstance(b, SparseQuantizedLinear) and torch.equal(a.codes(), b.codes()), n
        assert torch.equal(a.dequantize_weight(), b.dequantize_weight())
        assert b.storage_bits < a.storage_bits
    assert torch.equal(loaded(x), q(x))


def test_unpruned_quantized_layers_stay_dense(tmp_path):
    torch.manual_seed(0)
    q = ptq_int8(build_model("lenet5").eval(), X)
    assert all(compact_form(mod) is None for mod in q.modules() if isinstance(mod, (Int8Linear, Int8Conv2d)))
    loaded = netslim.load(netslim.save(q, tmp_path / "d.safetensors"))
    assert not any(isinstance(mod, (SparseInt8Conv2d, SparseInt8Linear)) for mod in loaded.modules())


def test_layer_table_reports_sparse_bits_and_nonzeros(tmp_path):
    from netslim.measure import layer_table

    q = _pruned_int8(4)
    loaded = netslim.load(netslim.save(q, tmp_path / "s.safetensors"))
    rows = {r.name: r.as_dict() for r in layer_table(loaded, X[:1])}
    fc1 = rows["fc1"]
    assert fc1["kind"] == f"sparse int4 static ({loaded.fc1.layout.describe()})" and fc1["bits"] == 4
    assert fc1["nonzero"] <= loaded.fc1.nnz + loaded.fc1.out_features  # weight non-zeros (+ bias)
    stored = loaded.fc1.weight_sparse.numel()
    assert stored < loaded.fc1.weight_numel // 2  # less than the dense int4 codes


# ----------------------------------------------------------------- masks through quantization
def test_ptq_keeps_masks_through_bn_folding(randomize_bn):
    def pruned():
        torch.manual_seed(0)
        model = randomize_bn(build_model("resnet20").eval())
        return magnitude_prune(model, sparsity=0.7, scope="layer")

    model, baked = pruned(), make_permanent(pruned())  # (not a deep copy: parametrized classes are shared)
    masks = {n: get_mask(mod).clone() for n, mod in model.named_modules() if get_mask(mod) is not None}
    q_masked, q_baked = ptq_int8(model, X), ptq_int8(baked, X)
    assert torch.equal(q_masked(X), q_baked(X))  # folding a masked conv's BN is not lost
    int8 = {n: mod for n, mod in q_masked.named_modules() if isinstance(mod, (Int8Conv2d, Int8Linear))}
    renamed = {n.replace(".conv", ".body.conv"): k for n, k in masks.items()}
    checked = 0
    for name, keep in renamed.items():
        if name in int8:
            assert fill_violations(int8[name], keep) == 0, name
            checked += 1
    assert checked >= 19


def test_gptq_and_every_sparsegpt_order_keep_exact_zeros():
    from netslim.quantize.gptq import gptq_quantize
    from netslim.quantize.packing import dequantize_groups
    from netslim.quantize.sparse_gptq import SparseGPTQConfig, sparse_gptq_layer

    torch.manual_seed(0)
    w, x = torch.randn(16, 64), torch.randn(256, 64)
    h = 2 * x.T @ x / 256
    keep = torch.rand(16, 64) > 0.5
    codes, s, z, _ = gptq_quantize(w * keep, h, bits=4, group_size=32, keep=keep)
    assert bool((dequantize_groups(codes, s, z)[~keep] == 0).all())
    for order in ("prune_first", "quantize_first", "joint"):
        for kw in ({"sparsity": 0.5}, {"n": 2, "m": 4}):
            cfg = SparseGPTQConfig(order=order, bits=4, group_size=32, **kw)
            codes, s, z, w_hat = sparse_gptq_layer(w, h, cfg)
            dq = dequantize_groups(codes, s, z)
            assert torch.allclose(dq, w_hat, atol=1e-5), order
            if "n" in kw:
                assert int(((sc.group_view(dq, 4) != 0).sum(1) > 2).sum()) == 0, order
            else:
                assert float((dq == 0).float().mean()) >= 0.5, order


def test_hqq_on_a_pruned_layer_is_refused_naming_it():
    m = build_model("lenet300").eval()
    magnitude_prune(m, sparsity=0.5, include="fc1")
    with pytest.raises(NetslimError, match=r"rounding 'hqq'.*layer 'fc1' is pruned .*cannot carry the scheme"):
        quantize_weights(m, bits=4, group_size=None, rounding="hqq")
    assert isinstance(m.fc2, nn.Linear)  # refused before any layer changed


def test_qat_with_masks_keeps_sparsity_exact():
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    magnitude_prune(model, sparsity=0.8, scope="layer")
    masks = {n: get_mask(mod).clone() for n, mod in model.named_modules() if get_mask(mod) is not None}
    prepare_qat(model, X, weight_bits=4)
    assert all(get_mask(model.get_submodule(n)) is not None for n in masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):  # a few large steps: masked entries must not move
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
    convert_qat(model, X)
    for n, keep in masks.items():
        layer = model.get_submodule(n)
        assert fill_violations(layer, keep) == 0, n
        assert int((layer.int_weight() != 0).sum()) <= int(keep.sum())


@pytest.mark.parametrize(
    "prune",
    [
        {"sparsity": 0.6, "schedule": "cubic", "frequency": 1, "end_fraction": 0.5},
        {"sparsity": 0.6, "schedule": "oneshot", "at": 0.5},
        {"sparsity": 0.6, "schedule": "oneshot", "at": 1.0},
    ],
)
def test_qat_prune_orders_reach_the_sparsity(prune, fmnist_small, tmp_path):
    from netslim.quantize.qat import QATConfig

    torch.manual_seed(0)
    cfg = QATConfig(
        weight_bits=4,
        prune=prune,
        calibration_samples=32,
        finetune={"epochs": 1, "max_steps": 4, "batch_size": 16, "select_best": False},
    )
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    q = apply(build_model("lenet5"), cfg, ctx)
    assert ctx.notes["qat"]["prune_events"]
    for name in ("conv1", "conv2", "fc1", "fc2"):
        codes = q.get_submodule(name).int_weight()
        assert float((codes == 0).float().mean()) >= 0.6 - 1e-6, name


# ------------------------------------------------------------------------------- kernel
KERNEL_CASES = [  # (kind, shape args, sparsity or "2:4", stride, padding, dilation)
    ("linear", (1, 30, 7), 0.8, 1, 0, 1),
    ("linear", (1, 300, 9), 0.3, 1, 0, 1),  # batch 1: gathered quads
    ("linear", (64, 100, 33), 0.5, 1, 0, 1),
    ("linear", (5, 64, 16), "2:4", 1, 0, 1),
    ("conv", (2, 16, 9, 9, 5, 3), 0.7, 1, 1, 1),
    ("conv", (3, 5, 8, 7, 4, 3), 0.9, 2, 1, 1),
    ("conv", (2, 8, 10, 10, 3, 3), "2:4", 1, 2, 2),
    ("conv", (1, 8, 6, 6, 3, 1), 0.5, 2, 0, 1),
]


def _int_weight(shape, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, shape, generator=g, dtype=torch.int64).to(torch.int8)
    if sparsity == "2:4":
        from netslim.prune.nm import nm_mask

        return w * nm_mask(torch.rand(shape, generator=g), 2, 4).to(torch.int8)
    return w * (torch.rand(shape, generator=g) >= sparsity).to(torch.int8)


def _check_kernel_exact(case, seed=0):
    kind, dims, sparsity, stride, pad, dil = case
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "linear":
        b, k, r = dims
        w = _int_weight((r, k), sparsity, seed)
        x = torch.randint(0, 256, (b, k), generator=g).to(torch.uint8)
        rq = sparse_int8.Requant(0.1, 7, torch.rand(r) + 0.1, torch.randn(r))
        got = sparse_int8.linear(
            torch._make_per_tensor_quantized_tensor(x, 0.1, 7), sparse_int8.prepare_linear(w), rq, "int32"
        )
        assert torch.equal(got.long(), (x.long() - 7) @ w.long().T)
        return
    b, c, h, wd, o, k = dims
    w = _int_weight((o, c, k, k), sparsity, seed)
    x = torch.randint(0, 256, (b, c, h, wd), generator=g).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    rq = sparse_int8.Requant(0.1, 9, torch.rand(o) + 0.1, torch.randn(o))
    got = sparse_int8.conv2d(
        torch._make_per_tensor_quantized_tensor(x, 0.1, 9),
        sparse_int8.prepare_conv(w),
        rq,
        sparse_int8.ConvGeometry(stride, (pad, pad), dil),
        "int32",
    )
    ref = F.conv2d(x.double() - 9, w.double(), stride=stride, padding=pad, dilation=dil)
    assert torch.equal(got.double(), ref)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"{c[0]}-{c[2]}-s{c[3]}")
def test_sparse_int8_kernel_equals_dense_integer_product(case):
    if not sparse_int8.kernel_available():
        pytest.skip("no C compiler")
    _check_kernel_exact(case)


def test_portable_kernel_without_vnni_is_exact(tmp_path, monkeypatch):
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("no gcc")
    out = tmp_path / "portable.so"
    src = sparse_int8._SOURCE
    subprocess.run(
        [cc, "-O2", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-mno-avx512vnni", "-o", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    monkeypatch.setattr(sparse_int8, "_lib", lambda: sparse_int8.bind(ctypes.CDLL(str(out))))
    for case in KERNEL_CASES:
        _check_kernel_exact(case, seed=5)


def test_sparse_int8_kernel_rejects_out_of_range_quads():
    if not sparse_int8.kernel_available():
        pytest.skip("no C compiler")
    q = sparse_int8.prepare_linear(_int_weight((4, 16), 0.5, 0))
    q.qidx[-1] = 99
    rq = sparse_int8.Requant(0.1, 0, torch.ones(4), None)
    with pytest.raises(NetslimError, match="quad indices out of range"):
        sparse_int8.linear(torch.rand(2, 16), q, rq)


def test_sparse_kernel_layers_match_the_dense_int8_layers():
    """Per layer, the sparse kernel's requantized codes equal oneDNN's up to one step, rarely; the whole
    chained int8 ResNet-20 (quantized hand-offs, residual adds) keeps its predictions."""
    if not sparse_int8.kernel_available():
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    magnitude_prune(model, sparsity=0.8, scope="layer")
    q = ptq_int8(model, X)
    ref = q(X)
    inputs = {}
    hooks = [
        mod.register_forward_pre_hook(lambda mod, inp, n=n: inputs.__setitem__(n, inp[0]))
        for n, mod in q.named_modules()
        if isinstance(mod, (Int8Conv2d, Int8Linear))
    ]
    q(X)
    for h in hooks:
        h.remove()
    fast = copy.deepcopy(q)
    for name, x in inputs.items():
        dense = q.get_submodule(name)
        sparse = sparse_static(dense, "sparse")
        a, b = dense(x), sparse(x)
        step = float(dense.act_qparams[2])
        a, b = (a.dequantize() if a.is_quantized else a), (b.dequantize() if b.is_quantized else b)
        diff = (a - b).abs()
        assert float(diff.max()) <= step * 1.01, name
        assert float((diff > step / 2).float().mean()) < 0.02, name
        serialize.replace_module(fast, name, sparse)
    y = fast(X)
    assert (y.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def test_sparse_layers_export_to_onnx_as_their_dense_twins(tmp_path):
    pytest.importorskip("onnxruntime")
    from netslim.quantize.onnx_export import check_onnx, export_onnx

    loaded = netslim.load(netslim.save(_pruned_int8(4), tmp_path / "s.safetensors"))
    assert isinstance(loaded.fc1, SparseInt8Linear)
    path = export_onnx(loaded, tmp_path / "s.onnx", X[:2])
    check = check_onnx(loaded, path, X[:4])
    assert check["within_tolerance"], check
