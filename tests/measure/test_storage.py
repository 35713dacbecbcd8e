"""Per-layer figures come from the tensors a layer actually stores, for every storage kind."""

import copy
import json
import math

import pytest
import torch
from safetensors import safe_open
from torch import nn

import netslim
from netslim.codec.modules import SharedLinear
from netslim.core.masks import set_mask
from netslim.measure import (
    Latency,
    artifact_layer_table,
    count_nonzero,
    count_params,
    interleaved_latency,
    interleaved_timings,
    layer_table,
    measure_latency,
    stored_bytes,
)
from netslim.prune.sparse import SparseConv2d, SparseLinear, save_sparse
from netslim.quantize.dynamic import BF16Linear, DynamicInt8Linear
from netslim.quantize.int8_modules import Int8Linear
from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear


def _sparse_weight(shape, zeros: int) -> torch.Tensor:
    """A random weight with exactly ``zeros`` zero entries."""
    w = torch.randn(shape)
    w.view(-1)[torch.randperm(w.numel())[:zeros]] = 0
    return w


def _rows(model, x):
    return {r.name: r for r in layer_table(model, x)}


def test_sparse_linear_shows_its_real_sparsity():
    torch.manual_seed(0)
    lin = nn.Linear(100, 50)
    with torch.no_grad():
        lin.weight.copy_(_sparse_weight((50, 100), 4590))  # 91.8 % zeros
    dense = _rows(nn.Sequential(lin), torch.zeros(1, 100))["0"]
    sp = SparseLinear.from_dense(lin)
    row = _rows(nn.Sequential(sp), torch.zeros(1, 100))["0"]
    assert row.sparsity == pytest.approx(0.918) == dense.sparsity
    assert row.kind == "sparse CSR fp32" and row.bits == 32 and row.shape == [50, 100]
    # elements at the logical shape, as the dense layer: never the CSR arrays' lengths
    assert row.params == dense.params == 50 * 100 + 50
    assert row.nonzero == dense.nonzero == 410 + int((lin.bias != 0).sum())
    csr = 4 * 51 + 2 * 410 + 4 * 410
    assert row.stored_bytes == csr + 4 * 50 < dense.stored_bytes == 4 * (5000 + 50)


def test_sparse_conv_rows_and_totals_match_the_dense_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(_sparse_weight((8, 4, 3, 3), 250))
    dense, sparse = nn.Sequential(conv), nn.Sequential(SparseConv2d.from_dense(conv))
    x = torch.zeros(1, 4, 6, 6)
    d, s = _rows(dense, x)["0"], _rows(sparse, x)["0"]
    assert s.shape == [8, 4, 3, 3] and s.sparsity == pytest.approx(250 / 288) == d.sparsity
    assert count_params(sparse) == count_params(dense) and count_nonzero(sparse) == count_nonzero(dense)


@pytest.mark.parametrize("bits", [4, 8])
def test_packed_weights_count_elements_not_bytes(bits):
    torch.manual_seed(0)
    fp32 = nn.Sequential(nn.Embedding(40, 64), nn.Linear(64, 32))
    q = nn.Sequential(
        QuantizedEmbedding.from_float(fp32[0], bits=bits, group_size=32),
        QuantizedLinear.from_float(fp32[1], bits=bits, group_size=32),
    )
    x = torch.zeros(1, 3, dtype=torch.long)
    assert count_params(q) == count_params(fp32)  # not bits / 32 of it
    rows, ref = _rows(q, x), _rows(fp32, x)
    for name in ("0", "1"):
        assert rows[name].bits == bits and rows[name].kind == f"packed int{bits}"
        assert rows[name].params == ref[name].params and rows[name].shape == ref[name].shape
        n = math.prod(rows[name].shape)
        groups = n // 32
        bias = 4 * 32 if name == "1" else 0
        assert rows[name].stored_bytes == n * bits // 8 + 2 * 2 * groups + bias  # codes + fp16 scale, zero
    assert rows["0"].nonzero == int((q[0].dequantize_weight() != 0).sum())


def test_int8_static_dynamic_shared_bf16_bits():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    static4 = Int8Linear(16, 8, weight_bits=4)
    static4.set_quantized(
        torch.randint(-8, 8, (8, 16), dtype=torch.int8), torch.ones(8), torch.zeros(8), (0.1, 128.0, 0.1, 128.0)
    )
    static8 = Int8Linear(16, 8)
    static8.set_quantized(
        torch.randint(-128, 128, (8, 16), dtype=torch.int8), torch.ones(8), torch.zeros(8), (0.1, 128.0, 0.1, 128.0)
    )
    shared = SharedLinear(16, 8, num_clusters=32)
    idx = torch.randint(0, 33, (8, 16))
    shared.assign(torch.linspace(-1, 1, 32), idx)
    layers = (static4, static8, DynamicInt8Linear.from_float(lin), shared, BF16Linear.from_float(lin), lin)
    x = torch.zeros(1, 16)
    rows = [layer_table(nn.Sequential(m), x.to(torch.bfloat16) if isinstance(m, BF16Linear) else x)[0] for m in layers]
    assert [(r.kind, r.bits) for r in rows] == [
        ("int4 static", 4),
        ("int8 static", 8),
        ("int8 dynamic", 8),
        ("shared", 5),
        ("dense bf16", 16),
        ("dense fp32", 32),
    ]
    assert all(r.params == 16 * 8 + 8 and r.shape == [8, 16] for r in rows)  # weights + bias, as fp32
    assert rows[0].stored_bytes == 16 * 8 // 2 + 4 * 8 + 4 * 4 + 4 * 8  # packed codes, scales, act qparams, bias
    assert rows[3].nonzero == int((shared.weight != 0).sum()) + int((shared.bias != 0).sum())
    assert rows[3].stored_bytes == 16 * 8 + 4 * 32 + 4 * 8  # uint8 index, fp32 codebook, bias


def test_stored_bytes_are_the_tensors_in_the_file(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(32, 32)
    masked = nn.Linear(32, 32)
    set_mask(masked, torch.rand(32, 32) > 0.5)
    model = nn.Sequential(
        SparseLinear.from_dense(masked),
        QuantizedLinear.from_float(lin, bits=4, group_size=None),
        masked,
        DynamicInt8Linear.from_float(lin),
        nn.LayerNorm(32),
        nn.BatchNorm1d(32),
    )
    path = netslim.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        payload = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert stored_bytes(model) == payload


def test_tied_weights_count_once():
    emb = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    rows = _rows(model, torch.zeros(1, 4, dtype=torch.long))
    assert count_params(model) == 50 * 16 == sum(r.params for r in rows.values())
    assert rows["1"].kind == "tied (dense fp32)" and rows["1"].stored_bytes == 0 and rows["1"].sparsity == 0


def test_artifact_layer_table_describes_the_file(tmp_path, tiny_mlp):
    for name, n in (("fc1", 0.9), ("fc2", 0.8)):
        layer = getattr(tiny_mlp, name)
        set_mask(layer, torch.rand_like(layer.weight) > n)
    path = save_sparse(tiny_mlp, tmp_path / "m.sparse.safetensors")
    x = torch.zeros(1, 1, 28, 28)
    mem, stored = _rows(tiny_mlp, x), {r.name: r for r in artifact_layer_table(path, x)}
    assert stored["fc1"].kind == "sparse CSR fp32" and mem["fc1"].kind == "masked fp32"
    assert stored["fc1"].sparsity == mem["fc1"].sparsity and stored["fc1"].params == mem["fc1"].params
    assert stored["fc1"].stored_bytes < mem["fc1"].stored_bytes / 4


def test_latency_carries_its_spread():
    model = nn.Sequential(nn.Linear(8, 8))
    x = torch.zeros(1, 8)
    t = measure_latency(model, x, repeats=9, threads=1)
    assert t.q1_ms <= t.median_ms <= t.q3_ms and t.iqr_ms >= 0
    timed = interleaved_timings({"a": model, "b": model}, x, rounds=2, repeats=3)
    assert timed["a"].repeats == 6  # all rounds pooled
    lat = interleaved_latency({"a": model}, x, rounds=2, repeats=3)["a"]
    assert isinstance(lat, float) and isinstance(lat, Latency) and lat.q1_ms <= lat <= lat.q3_ms
    again = copy.deepcopy(lat)
    assert (float(again), again.iqr_ms) == (float(lat), lat.iqr_ms)
    assert json.loads(json.dumps({"t": lat}))["t"] == float(lat)  # JSON sees the median
