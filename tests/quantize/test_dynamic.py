"""Dynamic int8 (oneDNN qlinear on CPU, torch._int_mm elsewhere) and bf16: oracles, save/load, recipes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.quantize import dynamic
from netslim.quantize.core import QScheme, fake_quantize, qparams_from_range
from netslim.quantize.dynamic import BF16Linear, DynamicInt8Linear, int8_matmul
from netslim.quantize.int8_body import gelu_kind


@pytest.fixture(params=["onednn", "int_mm"])
def kernel(request, monkeypatch):
    """Run a test on the CPU oneDNN path and on the portable torch._int_mm path."""
    if request.param == "int_mm":
        monkeypatch.setattr(dynamic, "_onednn_ok", lambda: False)
    elif not dynamic._onednn_ok():
        pytest.skip("this torch build has no oneDNN qlinear")
    return request.param


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 7, 5), (33, 100, 10)])
def test_int8_matmul_is_exact(shape):
    m, k, n = shape
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    assert torch.equal(int8_matmul(a, b.t()), a.int() @ b.int().t())


def test_int8_linear_matches_fake_quant_model(kernel):
    """Real int8 execution == fake-quant (per-token activations, per-channel weights) in fp32."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(2, 5, 64)
    q = DynamicInt8Linear.from_float(lin, activations="per_token")
    w_fq = fake_quantize(
        lin.weight, qparams_from_range(-lin.weight.abs().amax(1), lin.weight.abs().amax(1), QScheme(8, True, "channel"))
    )
    # core's symmetric scale uses the half-width 127.5, dynamic int8 uses 127: compare to
    # the module's own dequantized weight, and to fake-quant with a loose bound.
    x2 = x.reshape(-1, 64)
    sx = x2.abs().amax(1, keepdim=True) / 127
    ref = (torch.round(x2 / sx) * sx) @ q.dequantize_weight().T + lin.bias
    assert torch.allclose(q(x).reshape(-1, 32), ref, atol=1e-4)
    assert (q(x) - lin(x)).abs().max() < 0.05
    assert (x @ w_fq.T + lin.bias - lin(x)).abs().max() < 0.05


@pytest.mark.parametrize("activations", ["per_tensor", "per_token"])
def test_zero_rows_and_bad_weight(kernel, activations):
    lin = nn.Linear(16, 4)
    q = DynamicInt8Linear.from_float(lin, activations=activations)
    out = q(torch.zeros(3, 16))  # an all-zero input must not give NaN
    assert torch.isfinite(out).all() and torch.allclose(out, lin.bias.expand(3, 4))
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(NetslimError, match="NaN"):
        DynamicInt8Linear.from_float(lin)


@pytest.mark.parametrize(
    "method,cls,extra",
    [
        ("dynamic_int8", DynamicInt8Linear, {}),
        ("dynamic_int8", DynamicInt8Linear, {"activations": "per_token"}),
        ("bf16", BF16Linear, {}),
    ],
)
def test_recipe_step_save_load(tiny_mlp, tmp_path, method, cls, extra):
    x = torch.randn(4, 1, 28, 28)
    ref = tiny_mlp(x)
    fp32 = netslim.save(tiny_mlp, tmp_path / "fp32.safetensors").stat().st_size
    ctx = StepContext(task=None, out_dir=tmp_path)
    model = apply(tiny_mlp, make_config({"method": method, "exclude": ["fc3"], **extra}), ctx)
    assert isinstance(model.fc1, cls) and isinstance(model.fc3, nn.Linear)
    y = model(x)
    assert y.dtype == torch.float32
    assert (y - ref).abs().max() < 0.05 * ref.abs().max()
    path = netslim.save(model, tmp_path / "q.safetensors")
    assert torch.equal(netslim.load(path)(x), y)
    ratio = path.stat().st_size / fp32
    assert ratio < (0.27 if method == "dynamic_int8" else 0.52)


def test_per_tensor_matches_quantize_per_tensor_oracle(kernel, tmp_path):
    """CPU: asymmetric uint8 per tensor (torch's dynamic scheme, in one pass); elsewhere symmetric int8."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    q = DynamicInt8Linear.from_float(lin)  # per_tensor is the default
    x = torch.randn(10, 64) * 3
    if kernel == "onednn":  # asymmetric uint8 over [min(x, 0), max(x, 0)], as torch's dynamic quantization
        lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
        scale = (hi - lo) / 255
        xq = torch.fake_quantize_per_tensor_affine(x, scale, round(-lo / scale), 0, 255)
        torch_own = torch.quantize_per_tensor_dynamic(x, torch.quint8, False)
        assert (
            abs(torch_own.q_scale() - scale) < 1e-6 * scale and abs(torch_own.q_zero_point() - round(-lo / scale)) <= 1
        )
    else:
        sx = x.abs().max() / 127
        xq = torch.round(x / sx) * sx
    ref = xq @ q.dequantize_weight().T + lin.bias
    assert torch.allclose(q(x), ref, atol=1e-4)
    with torch.inference_mode():  # inference tensors have no version counter: same result
        assert torch.allclose(q(x), ref, atol=1e-4)
    # A plain Sequential is a user model: it saves, and loads onto a fresh (float) instance.
    path = netslim.save(nn.Sequential(q), tmp_path / "x.safetensors")
    with pytest.raises(NetslimError, match="base="):
        netslim.load(path)
    again = netslim.load(path, base=nn.Sequential(nn.Linear(64, 32)))
    assert isinstance(again[0], DynamicInt8Linear) and torch.equal(again(x), q(x))
    with pytest.raises(NetslimError, match="activations"):
        DynamicInt8Linear(4, 4, activations="per_group")


@pytest.mark.parametrize("activations", ["per_tensor", "per_token"])
def test_shared_input_quantized_once_never_stale(kernel, activations, monkeypatch):
    """q/k/v-style Linears reading one tensor share its quantization; a changed tensor is re-quantized."""
    torch.manual_seed(0)
    a, b = (DynamicInt8Linear.from_float(nn.Linear(32, 8), activations=activations) for _ in range(2))
    calls = []
    real = dynamic._quantize_fresh
    monkeypatch.setattr(dynamic, "_quantize_fresh", lambda *args: calls.append(1) or real(*args))
    x = torch.randn(5, 32)
    ya = a(x)
    b(x)
    assert len(calls) == 1
    x.mul_(-2.0)  # in place: the version changes, the codes must be recomputed
    assert torch.equal(a(x), a(x.clone())) and not torch.allclose(ya, a(x))
    assert torch.equal(b(x), b(x.clone()))
    before = len(calls)
    with torch.inference_mode():  # inference tensors have no version counter: identity still shares
        xi = torch.randn(5, 32)
        a(xi), b(xi)
        assert len(calls) == before + 1
        assert torch.equal(b(xi), b(xi.clone()))


def test_bf16_whole_model_scope(tiny_mlp, tmp_path):
    x = torch.randn(4, 1, 28, 28)
    ref = tiny_mlp(x)
    ctx = StepContext(task=None, out_dir=tmp_path)
    model = apply(tiny_mlp, make_config({"method": "bf16", "scope": "model"}), ctx)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert isinstance(model.fc1, nn.Linear)  # plain modules: the artifact is an ordinary bf16 state dict
    y = model(x.bfloat16())
    assert y.dtype == torch.bfloat16 and (y.float() - ref).abs().max() < 0.02 * ref.abs().max() + 0.02
    path = netslim.save(model, tmp_path / "bf16.safetensors")
    back = netslim.load(path)
    assert next(back.parameters()).dtype == torch.bfloat16 and torch.equal(back(x.bfloat16()), y)
    with pytest.raises(NetslimError, match="after 'bf16' froze them"):  # model is tiny_mlp, now frozen
        apply(tiny_mlp, make_config({"method": "bf16", "scope": "model"}), ctx)
    with pytest.raises(Exception, match="scope"):
        apply(
            netslim.build_model("lenet300"), make_config({"method": "bf16", "scope": "model", "exclude": ["fc3"]}), ctx
        )


@pytest.mark.parametrize("activations", ["per_tensor", "per_token"])
def test_tiny_bert_int8_with_embeddings_round_trips(tmp_path, activations):
    """A transformer end to end: close to fp32, int8 embedding tables, ~4x smaller, same after load."""
    from netslim.quantize import QuantizedEmbedding, dynamic_int8

    torch.manual_seed(0)
    model = netslim.build_model("tiny-bert").eval()
    ids = torch.randint(5, 200, (3, 16))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ref = model(**inputs).last_hidden_state
    fp32 = netslim.save(model, tmp_path / "fp32.safetensors").stat().st_size
    q = dynamic_int8(model, activations=activations, embeddings=True)
    assert isinstance(q.embeddings.word_embeddings, QuantizedEmbedding)
    y = q(**inputs).last_hidden_state
    cos = torch.nn.functional.cosine_similarity(y, ref, dim=-1)
    assert cos.min() > 0.98
    path = netslim.save(q, tmp_path / "q.safetensors")
    assert path.stat().st_size < 0.3 * fp32
    assert torch.equal(netslim.load(path)(**inputs).last_hidden_state, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("post_op,algo", [("none", None), ("gelu", "none"), ("gelu_tanh", "tanh")])
def test_fused_epilogue_equals_dequantized_reference(kernel, dtype, post_op, algo):
    """int8 GEMM with bias and GELU in its epilogue == GELU(dequant(x) @ dequant(W).T + b), bf16 in -> bf16 out."""
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = DynamicInt8Linear.from_float(lin, post_op=post_op)
    x = (torch.randn(3, 11, 96) * 2).to(dtype)
    y = q(x)
    assert y.dtype == dtype and y.shape == (3, 11, 40)
    xf = x.float().reshape(-1, 96)
    if kernel == "onednn":  # asymmetric uint8 per tensor
        lo, hi = min(xf.min().item(), 0.0), max(xf.max().item(), 0.0)
        scale = (hi - lo) / 255
        xq = torch.fake_quantize_per_tensor_affine(xf, scale, round(-lo / scale), 0, 255)
    else:
        sx = xf.abs().max() / 127
        xq = torch.round(xf / sx) * sx
    ref = xq @ q.dequantize_weight().T + lin.bias
    ref = ref if algo is None else torch.nn.functional.gelu(ref, approximate=algo)
    # fp32: the same arithmetic; bf16: the output rounded once to bf16 (2^-8 relative)
    tol = 1e-4 if dtype == torch.float32 else 2**-8 * ref.abs().max().item()
    assert (y.float().reshape(-1, 40) - ref).abs().max() <= tol
    with pytest.raises(NetslimError, match="post_op"):
        DynamicInt8Linear(4, 4, post_op="relu6")


def test_gelu_detection():
    assert gelu_kind(nn.GELU()) == "gelu"
    assert gelu_kind(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert gelu_kind(nn.ReLU()) is None and gelu_kind(nn.SiLU()) is None


@pytest.mark.parametrize("activations", ["per_tensor", "per_token"])
def test_tiny_bert_bf16_body_and_fused_gelu(kernel, tmp_path, activations):
    """int8 Linears inside a bf16 body: close to fp32, fusion == unfused, parameters where they belong, reload equal."""
    from netslim.quantize import DynamicInt8Config, dynamic_int8

    torch.manual_seed(0)
    model = netslim.build_model("tiny-bert").eval()
    ids = torch.randint(5, 200, (3, 16))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ref = model(**inputs).last_hidden_state
    make = lambda **kw: dynamic_int8(copy.deepcopy(model), activations=activations, **kw)  # noqa: E731
    fp32_fused, fp32_plain = make(), make(fuse_activations=False)
    inter = fp32_fused.encoder.layer[0].intermediate
    assert inter.dense.post_op == "gelu" and isinstance(inter.intermediate_act_fn, nn.Identity)
    assert fp32_plain.encoder.layer[0].intermediate.dense.post_op == "none"
    assert torch.allclose(fp32_fused(**inputs).last_hidden_state, fp32_plain(**inputs).last_hidden_state, atol=1e-4)
    q = make(compute_dtype="bfloat16", embeddings=True)
    layer = q.encoder.layer[0]
    assert layer.output.LayerNorm.weight.dtype == torch.bfloat16
    assert layer.attention.self.query.weight_scale.dtype == torch.float32  # oneDNN's scales stay fp32
    assert layer.attention.self.query.bias.dtype == torch.float32
    y = q(**inputs).last_hidden_state
    assert y.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(y.float(), ref, dim=-1).min() > 0.99
    path = netslim.save(q, tmp_path / "q.safetensors")
    back = netslim.load(path)
    assert back.embeddings.word_embeddings.out_dtype == "bfloat16"
    assert torch.equal(back(**inputs).last_hidden_state, y)
    with pytest.raises(ValueError, match="compute_dtype"):
        DynamicInt8Config(compute_dtype="float16")


def test_deepcopy_after_forward(kernel):
    """A converted model that has run (oneDNN's opaque packed weight cached) still deep-copies (ONNX export does)."""
    q = DynamicInt8Linear.from_float(nn.Linear(16, 8), post_op="gelu")
    x = torch.randn(4, 16)
    y = q(x)
    c = copy.deepcopy(q)
    assert torch.equal(c(x), y) and c.post_op == "gelu"


@pytest.mark.parametrize("activations", ["per_tensor", "per_token"])
def test_siblings_share_one_gemm_equal_to_separate_linears(activations, monkeypatch):
    """q/k/v-style Linears on one input: from the second call one GEMM over their stacked weights,
    equal to the three separate Linears; a changed call pattern unlinks them and stays correct."""
    if not dynamic._onednn_ok():
        pytest.skip("this torch build has no oneDNN qlinear")
    torch.manual_seed(0)
    lins = [nn.Linear(48, 16), nn.Linear(48, 16), nn.Linear(48, 24, bias=False)]
    mods = [DynamicInt8Linear.from_float(lin, activations=activations) for lin in lins]
    alone = copy.deepcopy(mods)
    gemms = []
    real = DynamicInt8Linear._group_weights
    monkeypatch.setattr(DynamicInt8Linear, "_group_weights", lambda self, g: gemms.append(len(g)) or real(self, g))

    def separate(x):
        monkeypatch.setattr(dynamic, "_LEARN_GROUPS", False)
        out = [m(x) for m in alone]
        monkeypatch.setattr(dynamic, "_LEARN_GROUPS", True)
        return out

    x1, x2 = torch.randn(2, 7, 48), torch.randn(2, 7, 48).bfloat16()
    first = [m(x1) for m in mods]  # learns the group: three GEMMs
    assert mods[0]._followers == mods[1:] and all(m._leader is mods[0] for m in mods[1:])
    gemms.clear()
    second = [m(x2) for m in mods]  # one GEMM for all three
    assert gemms == [3]
    for got, ref in zip(first + second, separate(x1) + separate(x2)):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert torch.allclose(got.float(), ref.float(), atol=1e-5, rtol=1e-5)
    y = mods[1](x1 * 2)  # key alone on another tensor: computed by itself, unlinked
    assert torch.allclose(y, separate(x1 * 2)[1], atol=1e-5) and mods[1]._leader is None
    assert mods[0]._followers == [mods[2]]


def test_tiny_bert_learns_qkv_groups_and_keeps_outputs(monkeypatch, tmp_path):
    from netslim.quantize import dynamic_int8

    if not dynamic._onednn_ok():
        pytest.skip("this torch build has no oneDNN qlinear")
    torch.manual_seed(0)
    q = dynamic_int8(netslim.build_model("tiny-bert").eval(), compute_dtype="bfloat16")
    ids = torch.randint(5, 200, (3, 16))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    monkeypatch.setattr(dynamic, "_LEARN_GROUPS", False)
    ref = q(**inputs).last_hidden_state
    monkeypatch.setattr(dynamic, "_LEARN_GROUPS", True)
    q(**inputs)
    attn = q.encoder.layer[0].attention.self
    assert attn.query._followers == [attn.key, attn.value]
    assert not q.encoder.layer[0].output.dense._followers  # different inputs: never grouped
    assert torch.equal(q(**inputs).last_hidden_state, ref)  # the same int32 sums and epilogue per column
    assert torch.equal(
        netslim.load(netslim.save(q, tmp_path / "q.safetensors"))(**inputs).last_hidden_state,
        q(**inputs).last_hidden_state,
    )


def test_a_model_loaded_under_inference_mode_runs(tmp_path):
    """Weights loaded inside torch.inference_mode are inference tensors (no version counter):
    the packed-weight cache keys on identity and storage instead."""
    torch.manual_seed(0)
    q = DynamicInt8Linear.from_float(nn.Linear(64, 32))
    path = netslim.save(nn.Sequential(q), tmp_path / "q.safetensors")
    x = torch.randn(3, 64)
    with torch.inference_mode():
        m = netslim.load(path, base=nn.Sequential(nn.Linear(64, 32)))
        assert torch.equal(m(x), q(x))
