"""ONNX export in QDQ form, and a check of the exported file in ONNX Runtime.

What the graph takes and returns: :mod:`netslim.quantize.onnx_io` (a Hugging Face causal LM,
encoder or classifier exports through a wrapper: token tensors in, ``logits`` /
``last_hidden_state`` out, symbolic batch and sequence; a causal LM with ``kv_cache=True`` as a
decoder step: past keys / values in, present ones out). The file's metadata
``netslim`` holds the run's description (model, data, task kind, inputs, outputs, the check made
at export) so that ``netslim eval / bench / inspect`` open it (:mod:`netslim.models.onnx_model`).
The check and its stated tolerances: :mod:`netslim.quantize.onnx_runtime`; the recipe step
(``export: {format: onnx}``) runs it on 8 test rows of the run's data and records it in the
step's notes.

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
stores 8 bits per weight, and an int8 zero point per channel), so the file is about as small
as the int8 artifact; ONNX Runtime
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

Tolerance (see :func:`check_onnx`, tests in tests/quantize/test_onnx.py; the bounds the recipe
step applies: :mod:`netslim.quantize.onnx_runtime`):

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

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.errors import NetslimError, clip
from netslim.core.export import register_exporter
from netslim.core.serialize import atomic_write
from netslim.models.onnx_model import onnx_description, set_description

from .dynamic import POST_OPS, DynamicInt8Linear
from .int8_blocks import Int8Residual
from .int8_modules import Int8Conv2d, Int8Linear, _Int8Base
from .onnx_io import graph_module
from .onnx_runtime import check_decoder, check_graph, check_onnx, onnx_session, run_onnx  # noqa: F401  (public here too)
from .weight_only import QuantizedEmbedding, QuantizedLinear

log = logging.getLogger(__name__)
_TWINS: dict[type, Callable[[nn.Module], nn.Module] | None] = {}


def register_onnx_twin(cls: type, make: Callable[[nn.Module], nn.Module] | None) -> None:
    """Teach the ONNX exporter a module type holding integer tensors: ``make(module)`` returns
    an exportable twin; ``None``: the module's own forward exports as is."""
    _TWINS[cls] = make


def _qd():
    import torch.ao.quantization.fx._decomposed

    return torch.ops.quantized_decomposed


class _QDQ(nn.Module):
    """Export twin of a static int8 layer: float in, float out, QDQ around a float op."""

    def __init__(self, m: _Int8Base):
        super().__init__()
        self.register_buffer("w_int8", m.int_weight().detach().clone())
        self.register_buffer("w_scale", m.weight_scale.detach().float().clone())
        self.register_buffer(
            "w_zero", torch.zeros_like(m.weight_scale, dtype=torch.int8)
        )  # DequantizeLinear reads int8 zero points
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
        self.register_buffer(
            "w_zero", torch.zeros_like(m.weight_scale, dtype=torch.int8)
        )  # DequantizeLinear reads int8 zero points
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
        else:  # uint8, [min, max] widened to 0 (dynamic._u8_qparams)
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
        x = qd.dequantize_per_tensor(
            qd.quantize_per_tensor(x, self.in_s, self.in_z, 0, 255, torch.uint8),
            self.in_s,
            self.in_z,
            0,
            255,
            torch.uint8,
        )
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
        p = packed.to(torch.int32)  # (R, B)
        parts = [(p // (1 << (self.bits * i))) % (1 << self.bits) for i in range(per)]
        codes = torch.stack(parts, dim=-1).reshape(*p.shape[:-1], -1).float()  # (R, C), low bits first
        g = codes.shape[-1] // scales.shape[-1]
        c = codes.reshape(*codes.shape[:-1], -1, g)  # (R, C/g, g)
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
        raise NetslimError(
            f"ONNX export: no ONNX mapping for {len(bad)} module(s): {'; '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}. Quantized modules that export: {supported} "
            "; float modules export as float."
        )
    return twin


def _as_args(example: Any) -> tuple[tuple, dict]:
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, dict):
        return (), dict(example)
    raise NetslimError(
        f"ONNX export: example inputs must be a tensor or a dict of tensors; got {type(example).__name__}."
    )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_inputs: Any,
    *,
    dynamic_dims: dict[int, str] | None = None,
    info: dict | None = None,
    kv_cache: bool = False,
) -> Path:
    """Write ``model`` as ONNX (QDQ for the int8 layers) to ``path`` atomically; returns the path.

    ``example_inputs``: a tensor or a dict of tensors (keyword inputs, e.g. a tokenizer's).
    A Hugging Face model exports through :func:`netslim.quantize.onnx_io.graph_module`: token
    tensors in, ``logits`` / ``last_hidden_state`` out. ``kv_cache``: a causal LM exports as
    its decoder step with a KV cache (past keys / values in, present ones out; the inputs,
    outputs and supported families: :mod:`netslim.quantize.onnx_io`), ``example_inputs`` its
    prompt ids. ``dynamic_dims``: input dims left symbolic, by name (a name shared by several
    inputs is one symbol); default ``{0: "batch"}`` for a tensor and ``{0: "batch", 1:
    "sequence"}`` for a dict of token tensors; ``{}`` exports fixed shapes (with ``kv_cache``
    the axes are fixed by the step's layout: leave it None). ``info``: the run's description
    (model, data, ...), stored with the graph's inputs and outputs in the file's metadata
    ``netslim`` so that ``netslim eval`` re-scores the file on the same data.
    """
    return write_onnx(model, path, example_inputs, dynamic_dims=dynamic_dims, info=info, kv_cache=kv_cache)[0]


def write_onnx(
    model: nn.Module,
    path: str | Path,
    example_inputs: Any,
    *,
    dynamic_dims: dict[int, str] | None = None,
    info: dict | None = None,
    check_inputs: Any = None,
    kv_cache: bool = False,
) -> tuple[Path, dict | None]:
    """:func:`export_onnx`, and with ``check_inputs`` the ONNX Runtime check of the graph on them
    (:func:`check_graph`; with ``kv_cache`` :func:`check_decoder`: a prefill of the ids and
    cached greedy steps) before anything is written: ``(path, check or None)``. The check is
    stored in the file's description too."""
    import onnx

    path = Path(path)
    if kv_cache and dynamic_dims is not None:
        raise NetslimError(
            "ONNX export with kv_cache: the decoder step's symbolic axes are fixed (batch, sequence, "
            "past_sequence); leave dynamic_dims unset."
        )
    _qd()  # why first: torch.onnx builds its op table at export start; ops registered later have no ONNX function
    spec = graph_module(model, example_inputs, kv_cache=kv_cache)
    twin = onnx_twin(spec.module)
    proto = _trace(twin, spec, dynamic_dims, type(model).__name__)
    for node in proto.graph.node:  # per-node debug metadata (source stack, FX node text): ~45 % of a small file
        del node.metadata_props[:]
    del proto.graph.value_info[:]  # intermediate shapes: optional, ~10 % of a small file; ORT infers its own
    if spec.kind == "module" and len(proto.graph.output) == 1:
        _rename_value(proto, proto.graph.output[0].name, "output")  # not the last op's name (dequantize_per_tensor_3)
    outputs = list(spec.outputs) if spec.kind != "module" else [o.name for o in proto.graph.output]
    example = spec.example if isinstance(spec.example, dict) else {proto.graph.input[0].name: spec.example}
    desc = onnx_description(
        spec.kind, example, outputs, config=spec.config, info=info, packed_bits=_packed_bits(twin, proto)
    )
    check = None
    if check_inputs is not None:
        graph = proto.SerializeToString()
        check = desc["ort_check"] = (
            check_decoder(model, graph, check_inputs) if kv_cache else check_graph(model, spec, graph, check_inputs)
        )
    set_description(proto, desc)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    return path, check


def _trace(twin: nn.Module, spec, dynamic_dims: dict[int, str] | None, who: str):
    """The optimised ModelProto of ``twin`` traced on ``spec.example`` (torch.onnx, dynamo)."""
    args, kwargs = _as_args(spec.example)
    if spec.dims is not None:  # the spec's own axes, inputs in its forward's order: named ones, then *varargs
        import inspect

        symbols = {n: torch.export.Dim(n, min=low) for axes in spec.dims.values() for n, low in axes.values()}
        per_input = [{d: symbols[n] for d, (n, _) in spec.dims[k].items()} for k in kwargs]
        params = inspect.signature(spec.module.forward).parameters.values()
        named = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        args, kwargs, dyn = tuple(kwargs.values()), {}, (*per_input[:named], tuple(per_input[named:]))
    else:
        if dynamic_dims is None:
            dynamic_dims = {0: "batch"} if args else {0: "batch", 1: "sequence"}
        dims = {n: torch.export.Dim(n, min=1 if d == 0 else 2) for d, n in dynamic_dims.items()}

        def dims_of(t: torch.Tensor) -> dict:
            return {d: dims[n] for d, n in dynamic_dims.items() if d < t.dim()}

        dyn = ((dims_of(args[0]),) if args else {k: dims_of(v) for k, v in kwargs.items()}) if dynamic_dims else None
    inputs = list(spec.dims) if spec.dims else ["pixel_values"] if spec.kind == "image_classification" else None
    names = {
        "input_names": inputs,
        "output_names": list(spec.outputs) if spec.kind != "module" else None,
    }
    try:
        with torch.no_grad(), _quiet():
            program = torch.onnx.export(
                twin,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                dynamic_shapes=dyn,
                optimize=False,
                verbose=False,
                custom_translation_table=_translations(),
                **names,
            )
            # why a small input_size_limit: the default (8192) folds the unpack + dequantize of small
            # layers into float initializers - the file would silently hold fp32 weights for them
            import onnxscript.optimizer

            names = _folded_names(program.model.graph)
            onnxscript.optimizer.optimize_ir(program.model, input_size_limit=64)
            return _rename(program.model_proto, names)
    except (RuntimeError, TypeError, ValueError, NotImplementedError, AssertionError) as e:  # torch.export / lowering
        raise NetslimError(f"ONNX export of {who} failed: {_export_reason(e)}") from None


_LAYOUT_OPS = ("Transpose", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Identity")


def _folded_names(graph) -> dict[str, str]:
    """Output name -> initializer name of layout ops on a weight (``Transpose(W)`` of ``F.linear``):
    the optimiser folds them into new initializers called ``val_N``, which :func:`_rename`
    gives their weight's name back (the layer names of ``netslim inspect``)."""
    origin = {name: name for name in graph.initializers}
    out = {}
    for node in graph:
        if (
            node.op_type in _LAYOUT_OPS
            and node.inputs
            and node.inputs[0] is not None
            and node.inputs[0].name in origin
            and len(node.outputs) == 1
        ):
            origin[node.outputs[0].name] = out[node.outputs[0].name] = origin[node.inputs[0].name]
    return out


def _rename(proto, names: dict[str, str]):
    taken = {i.name for i in proto.graph.initializer} | {n for node in proto.graph.node for n in node.output}
    mapping = {}
    for init in proto.graph.initializer:
        target = names.get(init.name)
        if target and target not in taken:
            mapping[init.name] = init.name = target
            taken.add(target)
    if mapping:
        for node in proto.graph.node:
            node.input[:] = [mapping.get(n, n) for n in node.input]
        for vi in proto.graph.value_info:
            vi.name = mapping.get(vi.name, vi.name)
    return proto


def _rename_value(proto, old: str, new: str) -> None:
    g = proto.graph
    if old == new or any(new in (*n.input, *n.output) for n in g.node) or new in {i.name for i in g.initializer}:
        return
    for node in g.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in (*g.output, *g.value_info):
        if vi.name == old:
            vi.name = new


@contextlib.contextmanager
def _quiet():
    """torch.export prints partial graphs and warnings to stderr on failure: the CLI's error is one line."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loggers = [
            logging.getLogger(n)
            for n in list(logging.root.manager.loggerDict)
            if n == "torch" or n.startswith(("torch.", "onnxscript"))
        ]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _export_reason(e: BaseException) -> str:
    """The innermost cause of a torch.onnx failure, first line (the outer ones are generic advice)."""
    inner = e
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).strip()
    line = text.splitlines()[0] if text else ""
    hint = ""
    if "data-dependent" in text:
        hint = " (the forward branches on tensor values, which a graph cannot express)"
    return f"{type(inner).__name__}: {clip(line, 300)}{hint}"


def _packed_bits(twin: nn.Module, proto) -> dict[str, int]:
    """Initializer name of each packed weight -> its bits per code (the graph unpacks them)."""
    names = {i.name for i in proto.graph.initializer}
    out = {}
    for name, m in twin.named_modules():
        key = f"{name}.weight_packed" if name else "weight_packed"
        if isinstance(m, _PackedTwin) and key in names:
            out[key] = int(m.bits)
    return out


# -------------------------------------------------------------------------- recipe step
def export_step(model: nn.Module, path: Path, info: dict, kv_cache: bool = False, **options: Any) -> tuple[Path, dict]:
    """The recipe ``export`` step's ``onnx`` format: ``(path, notes)``.

    The run's task, rebuilt from ``info`` as ``netslim eval`` rebuilds it (a named dataset with
    its options, or the stored spec of the user's files), gives the traced example (2 rows)
    and the check batch (8 rows of the test split; 2 for a causal LM). ``kv_cache`` (a causal
    LM): the decoder step with a KV cache, checked by decoding (:func:`check_decoder`: a
    prefill of the 2 rows and 4 cached greedy steps). ``notes``: ``{"ort_check": ...}``
    (:func:`netslim.quantize.onnx_runtime.check_graph`), and ``{"warnings": [...]}`` when the
    difference exceeds the stated tolerance (also logged).
    """
    from netslim.train.object_tasks import model_kind

    if options:
        raise NetslimError(f"export format 'onnx' takes only the option kv_cache; got {', '.join(sorted(options))}.")
    task = _task_from_info(model, info or {})
    rows = 2 if model_kind(model) == "causal_lm" else 8
    path, check = write_onnx(
        model, path, task.example_inputs(2), info=info, check_inputs=task.example_inputs(rows), kv_cache=kv_cache
    )
    notes: dict[str, Any] = {"ort_check": check}
    if not check["within_tolerance"]:
        t = check["tolerance"]
        warning = (
            f"ONNX Runtime check of {path.name}: {t['metric']} {check[t['metric']]:.3g} vs the PyTorch model "
            f"exceeds the stated tolerance {t['bound']:.3g} ({t['rule']})."
        )
        log.warning("%s", warning)
        notes["warnings"] = [warning]
    return path, notes


def _task_from_info(model: nn.Module, info: dict) -> Any:
    """The run's task from its ``info`` (what artifacts store for ``netslim eval``)."""
    from netslim.train.tasks import get_task

    data = info.get("data")
    if isinstance(data, dict):  # the user's files: read again (for the example rows only)
        from netslim.train.file_tasks import open_data, parse_data_spec

        return open_data(
            parse_data_spec(data, "the run's data"), model, source=info.get("source"), reference=lambda: model
        )
    dataset = info.get("dataset")
    if not isinstance(dataset, str) or dataset in ("in-memory", "files"):
        raise NetslimError(
            "ONNX export needs example inputs from the run's data, and this run's data is "
            f"{'in memory' if dataset == 'in-memory' else 'not recorded'}; export with "
            "netslim.quantize.export_onnx(model, path, example_inputs) instead."
        )
    options = dict(info.get("data_options") or {})
    if dataset in ("pydocs", "pydocs-sentences") and isinstance(info.get("source"), str):
        options.setdefault("model_name", info["source"])
    return get_task(dataset, **options)


register_exporter("onnx", export_step, ".onnx")
