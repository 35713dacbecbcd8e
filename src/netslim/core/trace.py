"""Dependency graph of any model from its computation: ``torch.export``'s ATen graph.

:func:`export_graph` is the generic path of :func:`netslim.core.graph.trace_graph`: Hugging Face
models (which ``torch.fx`` cannot trace) and any model ``torch.fx`` fails on go through it. The
graph is one forward pass in ATen ops; every parameter is a graph input named by its qualified
name, so a slot is ``(module, param, dim)`` no matter what class owns the parameter. Each
tensor is given the layout of one *axis* (as :mod:`netslim.core.graph` does), and the rules are
about ops, not classes:

* ``linear`` / ``addmm`` (transformers' ``Conv1D``) / ``matmul`` by a parameter or its transpose
  (``x @ self.weight.T``, Falcon's Linear) / ``conv*`` (depthwise and grouped included): input
  columns are an ``in`` slot of the input's layout, output rows a new space;
* ``batch_norm`` / ``layer_norm`` / ``group_norm`` / ``rms_norm``: their vectors follow the
  channels; statistics over the units (LayerNorm, GroupNorm, RMSNorm written as
  ``pow -> mean``) lock them, as removing one renormalises the others;
* ``add`` / ``mul`` / ``sub`` / ``div`` of two carriers (residual sums, GLU products, SE gates
  ``x * sigmoid(fc(pool(x)))`` that broadcast over space) unite their spaces; a parameter
  broadcast along the units (layer scale, RMSNorm weight) becomes a slot;
* ``cat`` (offsets), ``split`` / ``chunk`` (segment-aligned), ``view`` / ``reshape`` /
  ``flatten`` / ``permute`` / ``transpose`` / ``unsqueeze`` / ``expand`` / ``select`` / ``slice``
  follow the units axis from the shapes; pooling, padding and upsampling keep it;
* attention: each ``scaled_dot_product_attention`` / ``softmax`` defines a *core* between
  the projections that feed it and the one that reads its result; its head groups come from
  :mod:`netslim.core.heads` (found from the gradients' sparsity, GQA and fused q|k|v included).

Any other op locks every space that reaches it (``graph.skipped`` says which), so the graph
prunes only what is provably safe. The model's outputs and tied weights are locked too.
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .errors import NetslimError
from .graph import DependencyGraph, GraphBuilder, Segment
from .hooks import eval_mode

log = logging.getLogger(__name__)

_UNARY = {
    "relu",
    "relu_",
    "gelu",
    "gelu_",
    "silu",
    "silu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "hardtanh",
    "hardtanh_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "mish",
    "mish_",
    "dropout",
    "dropout_",
    "feature_dropout",
    "alpha_dropout",
    "clone",
    "contiguous",
    "alias",
    "detach",
    "detach_",
    "to",
    "_to_copy",
    "type_as",
    "neg",
    "abs",
    "exp",
    "sqrt",
    "rsqrt",
    "erf",
    "softplus",
    "relu6",
    "clamp",
    "clamp_min",
    "clamp_max",
    "celu",
    "selu",
    "log_sigmoid",
    "lift_fresh_copy",
    "pow",
    "square",
    "reciprocal",
    "gelu_tanh",
    "native_dropout",
    "identity",
    "logsigmoid",
    "sin",
    "cos",
}
_BINARY = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "rsub"}
_SPATIAL = {
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool2d_with_indices",
    "upsample_nearest1d",
    "upsample_nearest2d",
    "upsample_bilinear2d",
    "upsample_bicubic2d",
    "upsample_linear1d",
    "_upsample_nearest_exact2d",
    "_upsample_bilinear2d_aa",
    "reflection_pad2d",
    "replication_pad2d",
}
_VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_"}
_REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "var_mean", "max", "min"}
_NORM_LOCK = "normalisation statistics span these features (removing one renormalises the others)"
_ATTENTION = {"scaled_dot_product_attention", "softmax", "_softmax", "_safe_softmax"}
_NO_OUTPUT = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async"}


def _op(node: fx.Node) -> str | None:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    return getattr(t, "_opname", None) or getattr(t, "__name__", None)


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    val = node.meta.get("val")
    shape = getattr(val, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):  # symbolic sizes
        return None


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def _is_transpose_2d(node: fx.Node) -> bool:
    """``W.T`` / ``W.t()`` / ``W.transpose(0, 1)`` / ``W.permute(1, 0)`` of a 2-D tensor."""
    if node.op != "call_function" or not node.args or len(_shape(node.args[0]) or ()) != 2:
        return False
    op = _op(node)
    if op in ("t", "numpy_T"):
        return True
    if op == "transpose" and len(node.args) >= 3:
        return node.args[1] % 2 != node.args[2] % 2
    return op == "permute" and [d % 2 for d in node.args[1]] == [1, 0]


def dense_parts(node: fx.Node) -> tuple[Any, fx.Node, Any, int] | None:
    """``(input, weight, bias, dim of the weight's output features)`` of a dense layer whose weight
    is a graph input: ``linear`` (weight (out, in)), ``addmm`` (transformers' ``Conv1D``: bias, x,
    weight (in, out)), ``matmul`` by a weight or its transpose (``x @ self.weight.T``: Falcon's
    Linear; a bias, if any, is added after). None for anything else."""
    op = _op(node) if node.op == "call_function" else None
    if op == "linear" and len(node.args) >= 2:
        x, w, bias, out_dim = node.args[0], node.args[1], node.args[2] if len(node.args) > 2 else None, 0
    elif op == "addmm" and len(node.args) >= 3:
        bias, x, w, out_dim = node.args[0], node.args[1], node.args[2], 1
    elif op == "matmul" and len(node.args) >= 2:
        x, w, bias, out_dim = node.args[0], node.args[1], None, 1
        if isinstance(w, fx.Node) and _is_transpose_2d(w):
            w, out_dim = w.args[0], 0
    else:
        return None
    if not isinstance(w, fx.Node) or w.op != "placeholder" or len(_shape(w) or ()) != 2:
        return None
    return x, w, bias, out_dim


@dataclass
class Core:
    """One attention: in-projections (modules whose outputs feed the attention op), the
    out-projection reading its result, and the head layout found for them (or why not)."""

    ins: tuple[str, ...]
    out: str
    owner: str = ""
    units: int = 0
    rows: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # module -> [(units, factor)] segments
    cols: list[tuple[int, int]] = field(default_factory=list)  # out-projection input segments
    attrs: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    call: Any = None  # (args, kwargs) the owner module got in the forward pass, for checks


def example_call(model: nn.Module, example_inputs: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of one forward call: a tensor, a tuple of them or a dict of keywords.
    A model whose forward takes ``use_cache`` is called without a cache (none is traced)."""
    args: tuple
    kwargs: dict
    params: Mapping[str, Any]
    if isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        args, kwargs = (example_inputs,), {}
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    if "use_cache" in params and "use_cache" not in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


class TraceStack:
    """Forward pre/post hooks that know which module is running: the one that stopped a trace."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.last: str | None = None

    def hooks(self, model: nn.Module) -> list[tuple[nn.Module, Any, str]]:
        """The hooks to register (:mod:`netslim.core.hooks`) while ``model`` runs."""
        out: list[tuple[nn.Module, Any, str]] = []
        for name, m in model.named_modules():
            out += [(m, lambda mod, a, n=name: self._push(n), "pre"), (m, lambda mod, a, o: self._pop(), "forward")]
        return out

    def _push(self, name: str) -> None:
        self.stack.append(name)
        self.last = name

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def culprit(self) -> str | None:
        return self.stack[-1] if self.stack else self.last


def export_program(model: nn.Module, example_inputs: Any):
    """``torch.export`` of one eval-mode forward; NetslimError naming the module that stopped it."""
    args, kwargs = example_call(model, example_inputs)
    stack = TraceStack()
    try:
        with eval_mode(model, stack.hooks(model), grad=False):
            return torch.export.export(model, args, kwargs, strict=False)
    except Exception as e:  # noqa: BLE001 - any failure is reported as one line naming the module
        where = stack.culprit()
        raise trace_error(model, where, e) from None


def trace_error(model: nn.Module, where: str | None, e: BaseException) -> NetslimError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if where:
        cls = type(model.get_submodule(where)).__name__
        hint = f"exclude it (exclude: ['{where}'], traced as one opaque layer whose channels are kept)" if where else ""
        return NetslimError(
            f"Cannot trace {type(model).__name__} for structured pruning: module '{where}' ({cls}) "
            f"stopped the trace ({type(e).__name__}: {first}); {hint}."
        )
    return NetslimError(
        f"Cannot trace {type(model).__name__} for structured pruning: its own forward stopped the "
        f"trace ({type(e).__name__}: {first}); data-dependent control flow in the top-level forward "
        "cannot be excluded: move it into a submodule and exclude that."
    )


# ------------------------------------------------------------------------ the tracer
class _AtenTracer:
    """Walks an exported graph in order, giving each tensor node the layout of one axis."""

    def __init__(self, model: nn.Module, ep, b: GraphBuilder, cores: list[Core]):
        self.model, self.b = model, b
        self.graph = ep.graph
        sig = ep.graph_signature
        self.params: dict[str, tuple[str, str]] = {}
        for ph, fqn in {**sig.inputs_to_parameters, **sig.inputs_to_buffers}.items():
            mod, _, p = fqn.rpartition(".")
            self.params[ph] = (mod, p)
        self.tied = _tied_names(model)
        self.layout: dict[fx.Node, tuple[Segment, ...]] = {}
        self.axis: dict[fx.Node, int] = {}
        self.parts: dict[fx.Node, list[tuple[tuple[Segment, ...], int] | None]] = {}
        self.core_nodes: set[fx.Node] = set()
        self.core_in = {m: c for c in cores if c.reason is None for m in c.ins}
        self.core_out = {c.out: c for c in cores if c.reason is None}
        self.head_space: dict[int, int] = {}  # id(core) -> space
        self.param_slots: dict[tuple[str, str, int], tuple[Segment, ...]] = {}
        self.core_rows: dict[fx.Node, tuple[Segment, ...]] = {}  # in-projection node -> its head rows
        self.unsupported: set[str] = set()

    # -- helpers
    def set(self, node: fx.Node, layout: tuple[Segment, ...], axis: int) -> None:
        self.layout[node], self.axis[node] = tuple(layout), int(axis)

    def lay(self, node: Any) -> tuple[Segment, ...] | None:
        return self.layout.get(node) if isinstance(node, fx.Node) else None

    def lock_inputs(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            if arg in self.layout:
                self.b.lock_layout(self.layout[arg], reason)
            for part in self.parts.get(arg) or ():
                if part is not None:
                    self.b.lock_layout(part[0], reason)

    def opaque(self, node: fx.Node, reason: str) -> None:
        if any(a in self.layout or a in self.parts for a in node.all_input_nodes):
            self.lock_inputs(node, reason)

    def param(self, node: Any) -> tuple[str, str] | None:
        return self.params.get(node.name) if isinstance(node, fx.Node) and node.op == "placeholder" else None

    def slot(self, pnode: fx.Node, dim: int, layout: tuple[Segment, ...], role: str = "out") -> None:
        module, param = self.params[pnode.name]
        tied = self.tied.get(f"{module}.{param}")
        if tied:
            self.b.lock_layout(layout, f"tied weight ({tied}): kept whole")
            return
        key = (module, param, dim)
        seen = self.param_slots.get(key)
        if seen is not None:  # one tensor read twice: both readers see the same slices
            if [(s.units, s.factor) for s in seen] == [(s.units, s.factor) for s in layout]:
                for sa, sb in zip(seen, layout):
                    self.b.union(sa.space, sb.space)
            else:
                self.b.lock_layout(seen, f"{module}.{param} is read with two layouts")
                self.b.lock_layout(layout, f"{module}.{param} is read with two layouts")
            return
        self.param_slots[key] = tuple(layout)
        self.b.add(module, param, dim, layout, role)

    def new(self, units: int, name: str, kind: str = "channel") -> tuple[Segment, ...]:
        return (Segment(self.b.space(units, name, kind), units),)

    def follow(self, node: fx.Node, src: Any, axis: int | None = None) -> bool:
        if not isinstance(src, fx.Node) or src not in self.layout:
            return False
        a = self.axis[src] if axis is None else axis
        si, so = _shape(src), _shape(node)
        if si is None or so is None or a >= len(so) or so[a] != si[self.axis[src]]:
            return False
        self.set(node, self.layout[src], a)
        return True

    # -- the walk
    def run(self) -> None:
        for node in self.graph.nodes:
            if node.op == "output":
                for arg in node.all_input_nodes:
                    self.b.lock_layout(self.layout.get(arg), "model output")
                    for part in self.parts.get(arg) or ():
                        if part is not None:
                            self.b.lock_layout(part[0], "model output")
            elif node.op == "call_function":
                self.call(node)

    def call(self, node: fx.Node) -> None:
        op = _op(node)
        if op in _NO_OUTPUT:
            return
        if self._weight_module(node) in self.core_out and any(a in self.core_nodes for a in node.all_input_nodes):
            return self.out_projection(node)
        if any(a in self.core_nodes for a in node.all_input_nodes):
            # inside an attention core: heads are handled by the core as a whole
            self.core_bias(node)
            for a in node.all_input_nodes:
                if a in self.layout:
                    self.b.lock_layout(self.layout[a], "read inside an attention core")
            self.core_nodes.add(node)
            return
        handler = getattr(self, f"op_{op}", None)
        if handler is not None:
            return handler(node)
        if op in _UNARY:
            return self.unary(node)
        if op in _BINARY:
            return self.binary(node)
        if op in _SPATIAL:
            return self.spatial(node)
        if op in _VIEWS:
            return self.view(node)
        if op in _REDUCE:
            return self.reduce(node)
        self.unsupported_op(node, op)
        return None

    def unsupported_op(self, node: fx.Node, op: str | None) -> None:
        tensors = [a for a in node.all_input_nodes if a in self.layout or a in self.parts]
        if tensors:
            if op not in self.unsupported:
                self.unsupported.add(op)
                self.b.skip(node.name, f"op {op} is not understood: the units reaching it are kept")
            self.opaque(node, f"unsupported op {op}")

    def _weight_module(self, node: fx.Node) -> str | None:
        parts = dense_parts(node)
        p = self.param(parts[1]) if parts else None
        return p[0] if p else None

    # -- layers
    def dense(self, node: fx.Node, x: Any, w: fx.Node, bias: Any, out_dim: int) -> None:
        """A dense layer (:func:`dense_parts`): input columns an ``in`` slot of the input's layout
        (units on its last dim), output rows a new space, or a core's head rows."""
        p = self.param(w)
        in_dim = 1 - out_dim
        in_f, out_f = _shape(w)[in_dim], _shape(w)[out_dim]
        lin, xs = self.lay(x), _shape(x)
        if lin is not None:
            if xs is not None and self.axis[x] == len(xs) - 1 and sum(s.width for s in lin) == in_f:
                self.slot(w, in_dim, lin, role="in")
            else:
                self.b.lock_layout(lin, f"{p[0]}: input features not on the last dim")
        if p[0] in self.core_in:
            self.core_nodes.add(node)
            seg = self._core_rows(self.core_in[p[0]], p[0])
            self.slot(w, out_dim, seg)
            if self.param(bias):
                self.slot(bias, 0, seg)
            self.core_rows[node] = seg
            return None
        out = self.new(out_f, p[0], _kind(p[0]))
        self.slot(w, out_dim, out)
        if self.param(bias):
            self.slot(bias, 0, out)
        self.set(node, out, len(_shape(node)) - 1)
        return None

    def core_bias(self, node: fx.Node) -> None:
        """``x @ W.T + b`` where ``x @ W.T`` is a core's in-projection: ``b`` follows its head rows."""
        if _op(node) not in ("add", "add_") or len(node.args) < 2:
            return
        for a, b in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if a in self.core_rows and self.param(b) is not None and len(_shape(b) or ()) == 1:
                self.slot(b, 0, self.core_rows[a])

    def op_linear(self, node: fx.Node) -> None:
        parts = dense_parts(node)
        if parts is None or self.param(parts[1]) is None:
            return self.opaque(node, "linear with a computed weight")
        return self.dense(node, *parts)

    def op_addmm(self, node: fx.Node) -> None:
        """transformers' Conv1D: ``addmm(bias, x (N, in), weight (in, out))``."""
        parts = dense_parts(node)
        if parts is None or self.param(parts[1]) is None or self.param(parts[2]) is None:
            return self.opaque(node, "matrix product with a computed weight")
        return self.dense(node, *parts)

    def op_matmul(self, node: fx.Node) -> None:
        """``x @ W`` / ``x @ W.T`` with a parameter ``W`` is a dense layer; other products are not understood."""
        parts = dense_parts(node)
        if parts is None or self.param(parts[1]) is None or len(_shape(node) or ()) < 2:
            return self.unsupported_op(node, "matmul")
        return self.dense(node, *parts)

    def _core_rows(self, core: Core, module: str) -> tuple[Segment, ...]:
        s = self._head_space(core)
        return tuple(Segment(s, u, f) for u, f in core.rows[module])

    def _head_space(self, core: Core) -> int:
        if id(core) not in self.head_space:
            s = self.b.space(core.units, core.owner, "head")
            self.head_space[id(core)] = s
            for a in core.attrs:
                self.b.attr(s, a["module"], a["attr"], a["per_unit"])
        return self.head_space[id(core)]

    def out_projection(self, node: fx.Node) -> None:
        core = self.core_out[self._weight_module(node)]
        dense = dense_parts(node)
        assert dense is not None  # called for a core's own weight module: a dense layer
        _, w, bias, out_dim = dense
        s = self._head_space(core)
        self.slot(w, 1 - out_dim, tuple(Segment(s, u, f) for u, f in core.cols), role="in")
        p = self.param(w)
        out_f = _shape(w)[out_dim]
        out = self.new(out_f, p[0], _kind(p[0]))
        self.slot(w, out_dim, out)
        if self.param(bias):
            self.slot(bias, 0, out)
        self.set(node, out, len(_shape(node)) - 1)
        return None

    def op_conv2d(self, node: fx.Node) -> None:
        x, w = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        p = self.param(w)
        if p is None:
            return self.opaque(node, "convolution with a computed weight")
        c_out, c_in_g = _shape(w)[:2]
        c_in = c_in_g * groups
        lin = self.lay(x)
        if lin is not None and (self.axis[x] != 1 or sum(s.width for s in lin) != c_in):
            self.b.lock_layout(lin, f"{p[0]}: channels not on dim 1")
            lin = None
        if groups == 1:
            if lin is not None:
                self.slot(w, 1, lin, role="in")
            out = self.new(c_out, p[0])
        elif groups == c_in == c_out and lin is not None:
            out = lin  # depthwise: channel c in -> channel c out
        else:
            out = self.new(c_out, p[0])
            self.b.tile(out[0].space, groups)
            if lin is not None and len(lin) == 1 and lin[0].factor == 1:
                self.slot(w, 1, (Segment(lin[0].space, lin[0].units // groups),), role="in")
                self.b.tile(lin[0].space, groups)
            elif lin is not None:
                self.b.lock_layout(lin, f"input of grouped conv {p[0]} is a concatenation")
            if groups == c_in == c_out:  # depthwise over an untraced input: its channels stay
                self.b.lock_layout(out, f"{p[0]}: depthwise over untraced channels")
        self.slot(w, 0, out)
        if self.param(bias):
            self.slot(bias, 0, out)
        self.set(node, out, 1)
        return None

    op_conv1d = op_conv2d
    op_conv3d = op_conv2d

    def op_convolution(self, node: fx.Node) -> None:
        # convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups)
        if node.args[6]:
            return self.opaque(node, "transposed convolution")
        a = list(node.args)
        node_args = (*a[:6], a[8])
        saved = node.args
        node.args = node_args
        try:
            return self.op_conv2d(node)
        finally:
            node.args = saved

    def op_batch_norm(self, node: fx.Node) -> None:
        x = node.args[0]
        lin = self.lay(x)
        if lin is None:
            return None
        if self.axis[x] != 1:
            return self.opaque(node, "batch norm over another dim")
        for pn in node.args[1:5]:
            if self.param(pn):
                self.slot(pn, 0, lin)
        self.set(node, lin, 1)
        return None

    def op__native_batch_norm_legit_no_training(self, node: fx.Node) -> None:
        self.op_batch_norm(node)
        if node in self.layout:
            self.parts[node] = [(self.layout.pop(node), self.axis.pop(node)), None, None]

    def op_layer_norm(self, node: fx.Node) -> None:
        x, shape = node.args[0], node.args[1]
        w = node.args[2] if len(node.args) > 2 else None
        bias = node.args[3] if len(node.args) > 3 else None
        lin, xs = self.lay(x), _shape(x)
        if lin is None or xs is None:
            return None
        a = self.axis[x]
        if a < len(xs) - len(shape):  # normalised dims do not include the units: a plain map
            self.set(node, lin, a)
            return None
        if len(shape) == 1 and a == len(xs) - 1:
            for pn in (w, bias):
                if self.param(pn):
                    self.slot(pn, 0, lin)
            self.b.lock_layout(lin, _NORM_LOCK)
            self.set(node, lin, a)
            return None
        return self.opaque(node, _NORM_LOCK)

    def op_rms_norm(self, node: fx.Node) -> None:
        x, shape = node.args[0], node.args[1]
        w = node.args[2] if len(node.args) > 2 else None
        lin, xs = self.lay(x), _shape(x)
        if lin is None or xs is None:
            return None
        if len(shape) == 1 and self.axis[x] == len(xs) - 1:
            if self.param(w):
                self.slot(w, 0, lin)
            self.b.lock_layout(lin, _NORM_LOCK)
            self.set(node, lin, self.axis[x])
            return None
        return self.opaque(node, _NORM_LOCK)

    def op_group_norm(self, node: fx.Node) -> None:
        x, groups = node.args[0], node.args[1]
        w = node.args[2] if len(node.args) > 2 else None
        bias = node.args[3] if len(node.args) > 3 else None
        lin, xs = self.lay(x), _shape(x)
        if lin is None or xs is None:
            return None
        if self.axis[x] != 1:
            return self.opaque(node, "group norm over another dim")
        for pn in (w, bias):
            if self.param(pn):
                self.slot(pn, 0, lin)
        if groups != xs[1]:  # one channel per group (instance norm) normalises nothing across channels
            self.b.lock_layout(lin, _NORM_LOCK)
        self.set(node, lin, 1)
        return None

    def op_embedding(self, node: fx.Node) -> None:
        w = node.args[0]
        if self.param(w) is None:
            return self.opaque(node, "embedding of a computed table")
        out = self.new(_shape(w)[1], self.params[w.name][0])
        self.slot(w, 1, out)
        self.set(node, out, len(_shape(node)) - 1)
        return None

    # -- elementwise
    def unary(self, node: fx.Node) -> None:
        src = node.args[0] if node.args else None
        if self.lay(src) is not None and not self.follow(node, src):
            self.opaque(node, f"{_op(node)} changes the shape")

    def spatial(self, node: fx.Node) -> None:
        src = node.args[0]
        if self.lay(src) is None:
            return None
        if self.axis[src] == 1 and self.follow(node, src):
            if _op(node) == "max_pool2d_with_indices":
                self.parts[node] = [(self.layout.pop(node), self.axis.pop(node)), None]
            return None
        return self.opaque(node, f"{_op(node)} over the units")

    def op_pad(self, node: fx.Node) -> None:
        src, pad = node.args[0], node.args[1]
        xs = _shape(src)
        if self.lay(src) is None:
            return None
        if xs is not None and len(pad) <= 2 * (len(xs) - 1 - self.axis[src]) and self.follow(node, src):
            return None
        return self.opaque(node, "padding of the units")

    op_constant_pad_nd = op_pad

    def binary(self, node: fx.Node) -> None:
        out = _shape(node)
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node) and _shape(a) is not None]
        carriers = [a for a in tensors if a in self.layout]
        if not carriers or out is None:
            return None
        axes = {self.axis[c] + len(out) - len(_shape(c)) for c in carriers}
        if len(axes) != 1:
            return self.opaque(node, "elementwise op of tensors with units on different dims")
        a = axes.pop()
        first = self.layout[carriers[0]]
        for c in carriers[1:]:
            other = self.layout[c]
            if [(s.units, s.factor) for s in first] == [(s.units, s.factor) for s in other]:
                for sa, sb in zip(first, other):
                    self.b.union(sa.space, sb.space)  # residual sums, gates, GLU products share units
            else:
                self.b.lock_layout(first, "combined with differently concatenated units")
                self.b.lock_layout(other, "combined with differently concatenated units")
        for t in tensors:
            if t in self.layout:
                continue
            ts = _shape(t)
            d = a - (len(out) - len(ts))
            if d < 0 or ts[d] == 1:
                continue  # broadcast along the units: one value for all of them
            if self.param(t) is not None and all(s == 1 for i, s in enumerate(ts) if i != d):
                self.slot(t, d, first)  # a per-unit scale or shift (layer scale, norm weight)
            else:
                self.b.lock_layout(first, f"combined with a per-unit tensor that cannot be sliced ({t.name})")
        self.set(node, first, a)
        return None

    def op_where(self, node: fx.Node) -> None:
        carriers = [a for a in node.args if isinstance(a, fx.Node) and a in self.layout]
        if carriers:
            self.opaque(node, "where() over the units")

    # -- shapes
    def view(self, node: fx.Node) -> None:
        src = node.args[0]
        lin = self.lay(src)
        if lin is None:
            return None
        ins, outs = _shape(src), _shape(node)
        if ins is None or outs is None:
            return self.opaque(node, "reshape with unknown sizes")
        a = self.axis[src]
        pre = _prod(ins[:a])
        for k in range(len(outs)):
            if _prod(outs[:k]) != pre:
                continue
            if outs[k] == ins[a]:
                self.set(node, lin, k)
                return None
            # the units merged with the dims after them: unit c -> a block of that many indices
            m, width = a + 1, ins[a]
            while m < len(ins) and width < outs[k]:
                width *= ins[m]
                m += 1
            if width == outs[k] and m > a + 1:
                spatial = width // ins[a]
                self.set(node, tuple(Segment(s.space, s.units, s.factor * spatial) for s in lin), k)
                return None
        return self.opaque(node, "reshape splits the units (e.g. into heads outside an attention core)")

    def op_permute(self, node: fx.Node) -> None:
        src, dims = node.args[0], node.args[1]
        if self.lay(src) is None:
            return None
        n = len(_shape(src))
        dims = [d % n for d in dims]
        self.set(node, self.layout[src], dims.index(self.axis[src]))
        return None

    def op_transpose(self, node: fx.Node) -> None:
        src = node.args[0]
        if self.lay(src) is None:
            return None
        n = len(_shape(src))
        d0, d1 = (d % n for d in node.args[1:3])
        a = self.axis[src]
        self.set(node, self.layout[src], d1 if a == d0 else d0 if a == d1 else a)
        return None

    def op_t(self, node: fx.Node) -> None:
        src = node.args[0]
        if self.lay(src) is not None:
            self.set(node, self.layout[src], 1 - self.axis[src] if len(_shape(src)) == 2 else self.axis[src])

    op_numpy_T = op_t

    def op_expand(self, node: fx.Node) -> None:
        src = node.args[0]
        if self.lay(src) is None:
            return None
        if not self.follow(node, src, self.axis[src] + len(_shape(node)) - len(_shape(src))):
            self.opaque(node, "expand of the units")

    op_broadcast_to = op_expand

    def op_select(self, node: fx.Node) -> None:
        src, dim = node.args[0], node.args[1]
        if self.lay(src) is None:
            return None
        n, a = len(_shape(src)), self.axis[src]
        dim %= n
        if dim == a:
            return self.opaque(node, "select of one unit")
        self.set(node, self.layout[src], a - (dim < a))
        return None

    def op_slice(self, node: fx.Node) -> None:
        src = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else 0
        if self.lay(src) is None:
            return None
        ins = _shape(src)
        a = self.axis[src]
        if dim % len(ins) == a and _shape(node)[a] != ins[a]:
            return self.opaque(node, "slice of the units")
        self.set(node, self.layout[src], a)
        return None

    op_narrow = op_slice

    def reduce(self, node: fx.Node) -> None:
        src = node.args[0]
        if self.lay(src) is None:
            return None
        ins = _shape(src)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if _op(node) in ("max", "min") and isinstance(dims, int):
            return self.opaque(node, "max/min with indices")
        if dims is None or dims == []:
            return self.opaque(node, "reduction over every dim")
        reduced: set[int] = {d % len(ins) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        a = self.axis[src]
        if a in reduced:
            return self.opaque(node, f"{_NORM_LOCK} ({_op(node)} over the units)")
        self.set(node, self.layout[src], a if keep else a - sum(d < a for d in reduced))
        return None

    def op_cat(self, node: fx.Node) -> None:
        items = [x for x in node.args[0] if isinstance(x, fx.Node)]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = _shape(node)
        if out is None or not any(x in self.layout for x in items):
            return None
        dim %= len(out)
        if all(x in self.layout and self.axis[x] == dim for x in items):
            self.set(node, tuple(seg for x in items for seg in self.layout[x]), dim)  # index offsets
            return None
        if all(x in self.layout and self.axis[x] != dim for x in items):
            # along another dim (tokens): every piece shares the units
            first = self.layout[items[0]]
            axes = {self.axis[x] for x in items}
            if len(axes) == 1 and all(
                [(s.units, s.factor) for s in self.layout[x]] == [(s.units, s.factor) for s in first] for x in items
            ):
                for x in items[1:]:
                    for sa, sb in zip(first, self.layout[x]):
                        self.b.union(sa.space, sb.space)
                self.set(node, first, axes.pop())
                return None
        return self.opaque(node, "concatenation with a tensor that cannot be sliced")

    def op_split(self, node: fx.Node) -> None:
        src = node.args[0]
        lin = self.lay(src)
        if lin is None:
            return None
        ins = _shape(src)
        dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(ins)
        outs = [tuple(v.shape) for v in node.meta.get("val", ())]
        a = self.axis[src]
        if dim != a:
            self.parts[node] = [(lin, a) for _ in outs]
            return None
        parts: list[tuple[tuple[Segment, ...], int] | None] = []
        i = 0
        for shp in outs:  # every piece must be whole segments of the layout
            width, segs = shp[a], []
            while width > 0 and i < len(lin) and lin[i].width <= width:
                segs.append(lin[i])
                width -= lin[i].width
                i += 1
            if width != 0:
                return self.opaque(node, "split inside one group of units")
            parts.append((tuple(segs), a))
        self.parts[node] = parts
        return None

    op_split_with_sizes = op_split

    def op_chunk(self, node: fx.Node) -> None:
        self.op_split(node)

    def op_unbind(self, node: fx.Node) -> None:
        src = node.args[0]
        if self.lay(src) is None:
            return None
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(_shape(src))
        a = self.axis[src]
        if dim == a:
            return self.opaque(node, "unbind of the units")
        self.parts[node] = [(self.layout[src], a - (dim < a))] * len(node.meta.get("val", ()))
        return None

    def op_getitem(self, node: fx.Node) -> None:
        src, i = node.args
        parts = self.parts.get(src)
        part = parts[i] if parts is not None and isinstance(i, int) and i < len(parts) else None
        if part is not None:
            self.set(node, *part)
        elif src in self.core_nodes:
            self.core_nodes.add(node)


def _kind(module: str) -> str:
    """Units of a Linear inside a numbered block are FFN neurons; elsewhere, channels."""
    return "neuron" if re.search(r"(^|\.)\d+\.", module + ".") else "channel"


def _tied_names(model: nn.Module) -> dict[str, str]:
    """Each name of a parameter known under several names -> 'a and b'."""
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return {n: " and ".join(ns) for ns in names.values() if len(ns) > 1 for n in ns}


def export_graph(model: nn.Module, example_inputs: Any, *, heads: bool = True) -> DependencyGraph:
    """Dependency graph of ``model`` from ``torch.export`` of one forward on ``example_inputs``
    (a tensor, a tuple or a dict of keyword inputs). NetslimError when it cannot be traced."""
    from .heads import attention_cores, find_heads

    ep = export_program(model, example_inputs)
    b = GraphBuilder()
    cores = attention_cores(ep) if heads else []
    if cores:
        find_heads(model, example_inputs, cores)
        for c in cores:
            if c.reason is not None:
                b.skip(c.owner or c.out, f"attention heads kept: {c.reason}")
    _AtenTracer(model, ep, b, cores).run()
    graph = b.build("export")
    graph.calls = {c.owner: c.call for c in cores if c.reason is None and c.call is not None}
    return graph
