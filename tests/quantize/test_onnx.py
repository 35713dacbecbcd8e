"""ONNX export (QDQ): ONNX Runtime agrees with PyTorch within the stated tolerance.

Tolerances (stated in netslim.quantize.onnx_export):
* static int8 (PTQ / QAT / mixed), ORT graph run op by op: PyTorch's output up to one-step
  rounding flips (max 1 output step of the last int8 layer, < 1 % of outputs differ);
  ORT's fused integer kernels (default session): mean |diff| <= 2 output steps, argmax
  agreement >= 90 % (untrained models: logits within a few steps; PTQ gives 100 %);
* dynamic int8 / weight-only / float: the same arithmetic in float, 1e-3 of the output range.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from netslim.core.config import make_config  # noqa: E402
from netslim.core.context import StepContext  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.models import build_model  # noqa: E402
from netslim.quantize import (  # noqa: E402
    check_onnx,
    dynamic_int8,
    export_onnx,
    ptq_int8,
    quantize_weights,
)
from netslim.quantize.onnx_export import onnx_session, run_onnx  # noqa: E402
from netslim.quantize.qat import convert_qat, prepare_qat  # noqa: E402


def _initializer_dtypes(path) -> dict[str, int]:
    model = onnx.load(str(path))
    return {i.name: i.data_type for i in model.graph.initializer}, [n.op_type for n in model.graph.node]


@pytest.mark.parametrize(
    "name,variant", [("lenet5", "ptq"), ("lenet300", "ptq"), ("lenet5", "qat4"), ("lenet5", "mixed")]
)
def test_static_int8_qdq_matches_pytorch(fmnist_small, tmp_path, name, variant):
    torch.manual_seed(0)
    fp32 = build_model(name).eval()
    calib = fmnist_small.calibration_inputs(64)
    if variant == "ptq":
        q = ptq_int8(copy.deepcopy(fp32), calib)
    elif variant == "qat4":
        q = convert_qat(prepare_qat(copy.deepcopy(fp32), calib, weight_bits=4), calib)
    else:
        q = ptq_int8(copy.deepcopy(fp32), calib, weight_bits={"conv2": 3, "fc1": 5, "fc2": 4})
    path = export_onnx(q, tmp_path / "m.onnx", fmnist_small.example_inputs(2))
    inits, ops = _initializer_dtypes(path)
    n_layers = sum(1 for m in q.modules() if hasattr(m, "act_qparams"))
    int8_weights = [k for k, t in inits.items() if k.endswith("w_int8")]
    assert len(int8_weights) == n_layers and all(inits[k] == onnx.TensorProto.INT8 for k in int8_weights)
    assert ops.count("QuantizeLinear") >= n_layers and "DequantizeLinear" in ops
    x = fmnist_small.example_inputs(200)  # another batch size: the batch dim is symbolic
    exact = check_onnx(q, path, x, optimize=False)
    assert exact["max_abs_diff"] <= 1.001 * exact["last_output_step"] and exact["frac_differ"] < 0.01, exact
    res = check_onnx(q, path, x)
    assert res["mean_abs_diff"] <= 2 * res["last_output_step"], res
    # untrained models: logits within a few steps of each other, so a one-step move can flip a row;
    # PTQ (fine input grids): a prediction may only change where PyTorch's top-2 logits lie within
    # 2 output steps; QAT W4 (coarse learned input steps, up to 9 steps apart): >= 90 % agree
    assert res["argmax_agreement"] >= 0.9, res
    if variant == "ptq":
        ref, got = q(x), run_onnx(onnx_session(path), x)
        top2 = ref.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * res["last_output_step"]
        assert torch.equal(got.argmax(1)[clear], ref.argmax(1)[clear])
    # the int8 weights dominate: the ONNX file is no bigger than ~1.2x the int8 weight bytes + 40 KB
    weight_bytes = sum(m.weight_numel for m in q.modules() if hasattr(m, "weight_numel"))
    assert path.stat().st_size < 1.2 * weight_bytes + 40_000


@pytest.mark.parametrize("activations", ["per_tensor", "per_token"])
def test_dynamic_int8_mlp_matches_pytorch(fmnist_small, tmp_path, activations):
    torch.manual_seed(0)
    q = dynamic_int8(build_model("lenet300").eval(), activations=activations)
    path = export_onnx(q, tmp_path / "d.onnx", fmnist_small.example_inputs(2))
    inits, ops = _initializer_dtypes(path)
    assert sum(1 for k, t in inits.items() if k.endswith("w_int8") and t == onnx.TensorProto.INT8) == 3
    if activations == "per_tensor":
        assert "QuantizeLinear" in ops
    res = check_onnx(q, path, fmnist_small.example_inputs(64))
    assert res["max_abs_diff"] <= 1e-3 * res["ref_abs_max"], res
    assert res["argmax_agreement"] == 1.0


def test_weight_only_and_float_export_match(fmnist_small, tmp_path):
    torch.manual_seed(0)
    fp32 = build_model("lenet300").eval()
    x = fmnist_small.example_inputs(32)
    w4 = quantize_weights(copy.deepcopy(fp32), bits=4, group_size=None)
    for model, fname in ((fp32, "f.onnx"), (w4, "w4.onnx")):
        res = check_onnx(model, export_onnx(model, tmp_path / fname, x[:2]), x)
        assert res["max_abs_diff"] <= 1e-4 * res["ref_abs_max"], (fname, res)
    inits, _ = _initializer_dtypes(tmp_path / "w4.onnx")
    packed = [k for k, t in inits.items() if k.endswith("weight_packed") and t == onnx.TensorProto.UINT8]
    assert len(packed) == 3  # the codes stay packed, two per byte


class _Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("codes", torch.zeros(4, 4, dtype=torch.int8))

    def forward(self, x):
        return x @ self.codes.float()


def test_unsupported_module_is_named(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), _Opaque())
    with pytest.raises(
        NetslimError,
        match=r"no ONNX mapping for 1 module.*1 \(_Opaque: integer tensors codes\)"
        r".*Int8Conv2d",
    ):
        export_onnx(model, tmp_path / "x.onnx", torch.randn(2, 4))
    assert not (tmp_path / "x.onnx").exists()


def test_recipe_export_step_writes_onnx(fmnist_small, tmp_path):
    from netslim.core.config import apply

    cfg = make_config({"method": "export", "format": "onnx", "filename": "q"})
    q = ptq_int8(build_model("lenet5").eval(), fmnist_small.calibration_inputs(64))
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path, info={"model": "lenet5", "dataset": "fashion-mnist"})
    apply(q, cfg, ctx)
    assert ctx.artifacts == [tmp_path / "q.onnx"] and ctx.notes["export"]["format"] == "onnx"
    res = check_onnx(q, ctx.artifacts[0], fmnist_small.example_inputs(16), optimize=False)
    assert res["max_abs_diff"] <= 1.001 * res["last_output_step"] and res["frac_differ"] < 0.01


def test_dynamic_int8_bf16_body_with_fused_gelu_exports(tmp_path):
    """A bf16 body exports in fp32, the epilogue GELU as a graph op: ORT matches the fp32-body model."""
    torch.manual_seed(0)
    fp32 = build_model("tiny-bert").eval()
    ids = torch.randint(5, 200, (2, 16))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    body32 = dynamic_int8(copy.deepcopy(fp32))  # GELU fused, fp32 body
    bf = dynamic_int8(copy.deepcopy(fp32), compute_dtype="bfloat16")
    assert bf.encoder.layer[0].intermediate.dense.post_op == "gelu"
    path = export_onnx(bf, tmp_path / "bf.onnx", example)
    _, ops = _initializer_dtypes(path)
    assert "Gelu" in ops or "Erf" in ops
    got = run_onnx(onnx_session(path), example)
    ref = body32(**example).last_hidden_state
    # the exported body holds the bf16-rounded LayerNorm weights, computed in fp32
    assert (got - ref).abs().max() <= 1e-2 * ref.abs().max()
    cos = torch.nn.functional.cosine_similarity(got, bf(**example).last_hidden_state.float(), dim=-1)
    assert cos.min() > 0.999
