"""ONNX export in QDQ form, and a check of the exported file in ONNX Runtime.

The static int8 modules (:class:`Int8Conv2d` / :class:`Int8Linear`, from PTQ, QAT or mixed
precision) are swapped, in a copy of the model, for export twins that spell out their
arithmetic with the ``quantized_decomposed`` ops - which ``torch.onnx`` (dynamo) lowers to
ONNX ``QuantizeLinear`` / ``DequantizeLinear``:

    x -> Q/DQ(uint8, input scale, zero) -> Conv|Gemm(x, DQ(int8 W, per-channel scale, axis 0)) + b
      -> [Relu] -> Q/DQ(uint8, output scale, zero)

:class:`Int8Residual` (a residual block run on quantized tensors) exports as Q/DQ of its input,
its body and shortcut layers' own twins, a float ``Add`` [+ ``Relu``] and Q/DQ on its output grid
- the arithmetic of ``quantized.add_relu``. Hand-offs (an int8 output read quantized by the next
unit) need no node: the consumer's input grid is the producer's output grid, so its Q/DQ is exact.

The weight is an **int8 initializer** (codes of any width 2..8 unpacked to int8: the file
stores 8 bits per weight), so the file is about as small as the int8 artifact; ONNX Runtime
fuses the pattern into ``QLinearConv`` / ``QLinearMatMul`` integer kernels. Float modules
export as float.

:class:`DynamicInt8Linear` exports as ``DequantizeLinear`` of its int8 weight and, per tensor,
a run-time ``QuantizeLinear`` / ``DequantizeLinear`` of the input whose scale and zero point
are computed in the graph exactly as netslim does (min/max widened to 0, uint8); per token
as the equivalent Div / Round / Clip / Mul; a GELU fused into its epilogue follows as a Gelu
(Erf) node, and a bf16 body exports in fp32. The packed weight-only modules
(:class:`QuantizedLinear`, :class:`QuantizedEmbedding`) keep their packed uint8 codes as the
initializer; the graph unpacks them with integer Div / Mod (torch.onnx mistypes uint8
bit masks) and dequantizes ``(code - zero) * scale`` per group. Any other module holding integer tensors is refused up front,
naming the module and what is supported.

Tolerance (see :func:`check_onnx`, tests in tests/quantize/test_onnx.py):

* ONNX Runtime with graph optimisations off evaluates the QDQ graph op by op and reproduces
  PyTorch's static int8 output up to one-step flips (a value on a rounding boundary: oneDNN's
  int32 accumulator vs ORT's float conv): LeNet-5 / LeNet-300 max 1 output step on < 1 % of
  the outputs; ResNet-20 (20 layers, 9 residual adds, flips compounding into a 49-pixel
  average) max 2 output steps, mean 0.2 step, argmax 100 %;
* with its default optimisations ORT fuses each DQ -> Conv/Gemm -> Q into an integer kernel
  (``QLinearConv``) that rounds the bias to int32 (units of input scale x weight scale) and
  requantizes with a fixed-point multiplier; an output can then move by one quantization
  step per layer. Measured: PTQ LeNet-5 / LeNet-300 max 1 output step, ResNet-20 (residual
  blocks, untrained) max 3 steps, mean 0.5; QAT W4A8
  LeNet-5 (coarse learned input steps) max 9 steps, mean 2. Stated bound: mean |diff| <= 2
  output steps (untrained test models, whose logits lie within a few steps of each other:
  argmax agreement >= 90 %, and for PTQ every row whose top-2 margin exceeds 2 steps agrees).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.export import register_exporter
from netslim.core.serialize import atomic_write

from .dynamic import POST_OPS, DynamicInt8Linear
from .int8_blocks import Int8Residual
from .int8_modules import Int8Conv2d, Int8Linear, _Int8Base
from .weight_only import QuantizedEmbedding, QuantizedLinear

log = logging.getLogger(__name__)
_TWINS: dict[type, Callable[[nn.Module], nn.Module] | None] = {}


def register_onnx_twin(cls: type, make: Callable[[nn.Module], nn.Module] | None) -> None:
    """Teach the ONNX exporter a module type holding integer tensors: ``make(module)`` returns
    an exportable twin; ``None``: the module's own forward exports as is."""
    _TWINS[cls] = make


def _qd():
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    return torch.ops.quantized_decomposed


class _QDQ(nn.Module):
    """Export twin of a static int8 layer: float in, float out, QDQ around a float op."""

    def __init__(self, m: _Int8Base):
        super().__init__()
        self.register_buffer("w_int8", m.int_weight().detach().clone())
        self.register_buffer("w_scale", m.weight_scale.detach().float().clone())
        self.register_buffer("w_zero", torch.zeros_like(m.weight_scale, dtype=torch.long))
        self.bias = nn.Parameter(m.bias.detach().float().clone(), requires_grad=False)
        a = [float(v) for v in m.act_qparams]
        self.in_s, self.in_z, self.out_s, self.out_z = a[0], int(a[1]), a[2], int(a[3])
        self.relu = m.relu
        self.conv = (m.stride, m.padding, m.dilation, m.groups) if isinstance(m, Int8Conv2d) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _qd()
        xq = qd.quantize_per_tensor(x, self.in_s, self.in_z, 0, 255, torch.uint8)
        x = qd.dequantize_per_tensor(xq, self.in_s, self.in_z, 0, 255, torch.uint8)
        w = qd.dequantize_per_channel(self.w_int8, self.w_scale, self.w_zero, 0, -128, 127, torch.int8)
        y = F.conv2d(x, w, self.bias, *self.conv) if self.conv else F.linear(x, w, self.bias)
        if self.relu:
            y = torch.relu(y)
        yq = qd.quantize_per_tensor(y, self.out_s, self.out_z, 0, 255, torch.uint8)
        return qd.dequantize_per_tensor(yq, self.out_s, self.out_z, 0, 255, torch.uint8)


def _translations() -> dict:
    """ONNX functions for the run-time-scale Q/DQ overloads (torch.onnx's take the zero point
    as a Python int only): QuantizeLinear / DequantizeLinear with the scale and zero point as
    graph tensors."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    def q_tensor(x, scale, zero_point, quant_min: int, quant_max: int, dtype):
        return op.QuantizeLinear(x, scale, op.Cast(zero_point, to=TensorProto.UINT8))

    def dq_tensor(x, scale, zero_point, quant_min: int, quant_max: int, dtype, out_dtype=None):
        return op.DequantizeLinear(x, scale, op.Cast(zero_point, to=TensorProto.UINT8))

    qd = _qd()
    return {qd.quantize_per_tensor.tensor: q_tensor, qd.dequantize_per_tensor.tensor: dq_tensor}


class _DynamicQDQ(nn.Module):
    """Export twin of :class:`DynamicInt8Linear`: activation quantization computed in the graph."""

    def __init__(self, m: DynamicInt8Linear):
        super().__init__()
        self.register_buffer("w_int8", m.weight_int8.detach().clone())
        self.register_buffer("w_scale", m.weight_scale.detach().float().clone())
        self.register_buffer("w_zero", torch.zeros_like(m.weight_scale, dtype=torch.long))
        self.bias = None if m.bias is None else nn.Parameter(m.bias.detach().float().clone(), requires_grad=False)
        self.per_token = m.activations == "per_token"
        self.gelu = POST_OPS[m.post_op]  # fused into the int8 GEMM

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        qd = _qd()
        w = qd.dequantize_per_channel(self.w_int8, self.w_scale, self.w_zero, 0, -127, 127, torch.int8)
        x = x.float()
        if self.per_token:  # symmetric, one scale per row (act_quant.quantize_per_row)
            scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
            x = torch.clamp(torch.round(x / scale), -127, 127) * scale
        else:               # uint8, [min, max] widened to 0 (dynamic._u8_qparams)
            every = list(range(x.dim()))  # explicit dims: torch.onnx has no all-dims amin
            lo, hi = x.amin(dim=every).clamp_max(0), x.amax(dim=every).clamp_min(0)
            scale = ((hi - lo) / 255).clamp_min(1e-8)
            zero = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int64)
            xq = qd.quantize_per_tensor.tensor(x, scale, zero, 0, 255, torch.uint8)
            x = qd.dequantize_per_tensor.tensor(xq, scale, zero, 0, 255, torch.uint8)
        y = F.linear(x, w, self.bias)
        return y if self.gelu is None else F.gelu(y, approximate=self.gelu)


class _ResidualTwin(nn.Module):
    """Export twin of :class:`Int8Residual`: Q/DQ(in) -> body + shortcut -> [Relu] -> Q/DQ(out)."""

    def __init__(self, m: Int8Residual):
        super().__init__()
        self.body, self.shortcut, self.relu = m.body, m.shortcut, m.relu  # their int8 layers get twins too
        a = [float(v) for v in m.act_qparams]
        self.in_s, self.in_z, self.out_s, self.out_z = a[0], int(a[1]), a[2], int(a[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _qd()
        x = qd.dequantize_per_tensor(qd.quantize_per_tensor(x, self.in_s, self.in_z, 0, 255, torch.uint8),
                                     self.in_s, self.in_z, 0, 255, torch.uint8)
        y = self.body(x) + self.shortcut(x)
        y = torch.relu(y) if self.relu else y
        yq = qd.quantize_per_tensor(y, self.out_s, self.out_z, 0, 255, torch.uint8)
        return qd.dequantize_per_tensor(yq, self.out_s, self.out_z, 0, 255, torch.uint8)


register_onnx_twin(Int8Residual, _ResidualTwin)
register_onnx_twin(Int8Conv2d, _QDQ)
register_onnx_twin(Int8Linear, _QDQ)
register_onnx_twin(DynamicInt8Linear, _DynamicQDQ)
class _PackedTwin(nn.Module):
    """Export twin of the packed weight-only modules: same storage, ONNX-friendly unpacking."""

    def __init__(self, m: QuantizedLinear | QuantizedEmbedding):
        super().__init__()
        self.bits = m.bits
        for k in ("weight_packed", "scales", "zeros"):
            self.register_buffer(k, getattr(m, k).detach().clone())
        self.embedding = isinstance(m, QuantizedEmbedding)
        bias = getattr(m, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    def _dequant(self, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
        per = 8 // self.bits
        p = packed.to(torch.int32)                                             # (R, B)
        parts = [(p // (1 << (self.bits * i))) % (1 << self.bits) for i in range(per)]
        codes = torch.stack(parts, dim=-1).reshape(*p.shape[:-1], -1).float()   # (R, C), low bits first
        g = codes.shape[-1] // scales.shape[-1]
        c = codes.reshape(*codes.shape[:-1], -1, g)                           # (R, C/g, g)
        w = (c - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)
        return w.reshape(codes.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding:  # gather the packed rows first, as QuantizedEmbedding does
            flat = x.reshape(-1)
            rows = self._dequant(self.weight_packed[flat], self.scales[flat], self.zeros[flat])
            return rows.reshape(*x.shape, rows.shape[-1])
        return F.linear(x, self._dequant(self.weight_packed, self.scales, self.zeros).to(x.dtype), self.bias)


register_onnx_twin(QuantizedLinear, _PackedTwin)
register_onnx_twin(QuantizedEmbedding, _PackedTwin)

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32)


def onnx_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with registered modules swapped for their export twins.

    Raises :class:`NetslimError` naming every module that holds integer tensors (quantized
    or packed weights) and has no twin: exporting it as is would fail or silently drop it.
    """
    import copy

    from netslim.core.surgery import replace_module

    twin = copy.deepcopy(model).eval()
    # A bf16 body (DynamicInt8Config compute_dtype) exports as fp32: ONNX Runtime's CPU provider
    # has no bf16 LayerNorm / MatMul / Softmax kernels, and the twins compute in fp32.
    twin._apply(lambda t: t.float() if t.dtype == torch.bfloat16 else t)
    for name, m in list(twin.named_modules()):
        make = _TWINS.get(type(m))
        if make is not None:
            replace_module(twin, name, make(m))
    exportable = {*(c for c, make in _TWINS.items() if make is None), _QDQ, _DynamicQDQ, _PackedTwin, _ResidualTwin}
    bad = []
    for name, m in twin.named_modules():
        own = list(m.named_buffers(recurse=False)) + list(m.named_parameters(recurse=False))
        ints = [k for k, t in own if t.dtype in _INT_DTYPES]
        if ints and type(m) not in exportable:
            bad.append(f"{name or '(root)'} ({type(m).__name__}: integer tensors {', '.join(ints)})")
    if bad:
        supported = ", ".join(sorted(c.__name__ for c in _TWINS))
        raise NetslimError(f"ONNX export: no ONNX mapping for {len(bad)} module(s): {'; '.join(bad[:5])}"
                           f"{' ...' if len(bad) > 5 else ''}. Quantized modules that export: {supported} "
                           "; float modules export as float.")
    return twin


def _as_args(example: Any) -> tuple[tuple, dict]:
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, dict):
        return (), dict(example)
    raise NetslimError(f"ONNX export: example inputs must be a tensor or a dict of tensors; got {type(example).__name__}.")


def export_onnx(model: nn.Module, path: str | Path, example_inputs: Any, *,
                dynamic_dims: dict[int, str] | None = None) -> Path:
    """Write ``model`` as ONNX (QDQ for the int8 layers) to ``path`` atomically; returns the path.

    ``example_inputs``: a tensor or a dict of tensors (keyword inputs, e.g. a tokenizer's).
    ``dynamic_dims``: input dims left symbolic, by name (a name shared by several inputs is one
    symbol); default ``{0: "batch"}`` for a tensor and ``{0: "batch", 1: "sequence"}`` for a
    dict of token tensors; ``{}`` exports fixed shapes.
    """
    path = Path(path)
    _qd()  # why first: torch.onnx builds its op table at export start; ops registered later have no ONNX function
    twin = onnx_twin(model)
    args, kwargs = _as_args(example_inputs)
    if dynamic_dims is None:
        dynamic_dims = {0: "batch"} if args else {0: "batch", 1: "sequence"}
    dims = {n: torch.export.Dim(n, min=1 if d == 0 else 2) for d, n in dynamic_dims.items()}

    def spec(t: torch.Tensor) -> dict:
        return {d: dims[n] for d, n in dynamic_dims.items() if d < t.dim()}

    dyn = (spec(args[0]),) if args else {k: spec(v) for k, v in kwargs.items()}
    if not dynamic_dims:
        dyn = None
    try:
        with torch.no_grad():
            program = torch.onnx.export(twin, args, kwargs=kwargs or None, dynamo=True, dynamic_shapes=dyn,
                                        optimize=False, verbose=False, custom_translation_table=_translations())
        # why a small input_size_limit: the default (8192) folds the unpack + dequantize of small
        # layers into float initializers - the file would silently hold fp32 weights for them
        import onnxscript.optimizer

        onnxscript.optimizer.optimize_ir(program.model, input_size_limit=64)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:  # torch.export / onnx lowering
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NetslimError(f"ONNX export of {type(model).__name__} failed: {first}") from e
    atomic_write(path, lambda tmp: _save_lean(program, tmp))
    return path


def _save_lean(program, tmp: str) -> None:
    """Save without the per-node debug metadata (source stack, FX node text): ~45 % of a small file."""
    import onnx

    program.save(tmp)
    proto = onnx.load(tmp)
    for node in proto.graph.node:
        del node.metadata_props[:]
    onnx.save(proto, tmp)


def _numpy_feed(session, example: Any) -> dict:
    names = [i.name for i in session.get_inputs()]
    if isinstance(example, torch.Tensor):
        return {names[0]: example.detach().cpu().numpy()}
    return {k: v.detach().cpu().numpy() for k, v in example.items() if k in names}


def onnx_session(path: str | Path, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime CPU session; ``optimize``: full graph optimisation (QDQ pairs fuse into
    integer kernels), else the graph runs op by op as written."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise NetslimError("onnxruntime is not installed: pip install 'netslim[export]'.") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(session, example: Any) -> torch.Tensor:
    """First output of ``session`` on ``example`` (tensor or dict) as a torch tensor."""
    return torch.from_numpy(session.run(None, _numpy_feed(session, example))[0])


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | Path, example_inputs: Any, optimize: bool = True) -> dict[str, float]:
    """Compare ONNX Runtime on ``path`` with ``model`` in PyTorch on the same inputs
    (``optimize``: ORT's fused integer kernels, else the graph op by op).

    Returns max / mean absolute difference of the first output, the largest output scale
    of the model's last int8 layer (the unit of the tolerance) and, for 2-D outputs, the
    fraction of rows whose argmax agrees.
    """
    model.eval()
    ref = model(**example_inputs) if isinstance(example_inputs, dict) else model(example_inputs)
    ref = ref if isinstance(ref, torch.Tensor) else ref[0]
    got = run_onnx(onnx_session(path, optimize=optimize), example_inputs)
    diff = (got.float() - ref.float()).abs()
    out = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
           "frac_differ": float((diff > 1e-6).float().mean()), "ref_abs_max": float(ref.abs().max())}
    steps = [float(m.act_qparams[2]) for m in model.modules() if isinstance(m, _Int8Base)]
    if steps:
        out["last_output_step"] = steps[-1]
    if ref.dim() == 2:
        out["argmax_agreement"] = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    return out


def _export_step(model: nn.Module, path: Path, info: dict) -> Path:
    """The recipe ``export`` step's ``onnx`` format: example shape from the run's dataset."""
    from netslim.train.tasks import get_task

    dataset = (info or {}).get("dataset")
    if not dataset:
        raise NetslimError("ONNX export needs example inputs: the run's info names no 'dataset'.")
    example = get_task(dataset).example_inputs(2)
    return export_onnx(model, path, example)


register_exporter("onnx", _export_step, ".onnx")
