"""What an ONNX graph stores and computes, read from the graph itself: layers, roles, MACs.

A *layer* is one weight initializer and what belongs to it, found by the nodes that use it:

* compute nodes (``Conv``, ``Gemm``, ``MatMul``, their ``*Integer`` / ``QLinear*`` forms,
  ``Gather`` / ``GatherND`` of an embedding table, ``LayerNormalization`` / ``BatchNormalization``) read a
  *static* operand: a value computed from initializers only (no graph input upstream) - an
  initializer itself, or ``DequantizeLinear(int8 codes, scale, zero)``, or the unpacking of
  packed codes. The initializers that static operand is made of form the layer; the largest
  of them is its *main* weight (int8 codes, packed uint8 codes or a float matrix), the others
  its quantization scales / zero points. A bias (``Conv`` / ``Gemm`` input 2, or a static
  ``Add`` right after a ``MatMul``) joins the layer of its node.
* Layers are named by their main initializer with the export wrapper's prefix (``model.``)
  and the tensor's own name (``.w_int8``, ``.weight``, ...) removed: the PyTorch module name
  where the exporter kept it (``encoder.layer.0.attention.self.query``); initializers that
  ONNX tools renamed (``val_12``) keep their new name.
* Initializers in no layer are the graph's *constants* (shape vectors, rotary tables, norm
  scales applied by ``Mul``).

MACs per node, for concrete input shapes (:func:`node_macs`: the graph is run once in ONNX
Runtime, op by op, with the inputs and outputs of every compute node exposed): ``Conv``
out elements x (in channels / groups) x kernel elements; ``MatMul`` / ``Gemm`` out elements
x the reduced dimension. A ``MatMul`` of two activations (attention) has no layer: its
MACs are counted under :data:`ACTIVATION_MATMULS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# op -> index of its weight operand (the static one)
WEIGHT_INPUT = {
    "Conv": 1,
    "Gemm": 1,
    "MatMul": 1,
    "ConvInteger": 1,
    "MatMulInteger": 1,
    "QLinearConv": 3,
    "QLinearMatMul": 3,
    "Gather": 0,
    "GatherND": 0,
    "LayerNormalization": 1,
    "BatchNormalization": 1,
}
MAC_OPS = ("Conv", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")
ACTIVATION_MATMULS = "activation_matmuls"  # the layer row of MatMuls between two activations
_WRAPPER_PREFIX = "model."  # the attribute the exporter's HF wrapper keeps the model in
_TENSOR_SUFFIXES = (
    ".w_int8",
    ".weight_int8",
    ".weight_packed",
    ".weight",
    ".w_scale",
    ".w_zero",
    ".scales",
    ".zeros",
    ".bias",
    ".weight_scale",
)


@dataclass
class Layer:
    name: str
    op: str  # the first compute op that reads it
    main: str  # initializer name of the main weight
    tensors: list[str] = field(default_factory=list)  # every initializer of the layer, main first
    bias: list[str] = field(default_factory=list)  # those of them that are biases / norm shifts
    nodes: list[int] = field(default_factory=list)  # indices of the MAC nodes it feeds
    qdq: bool = False  # its weight is dequantized in the graph


@dataclass
class GraphLayers:
    layers: dict[str, Layer]
    constants: list[str]  # initializers in no layer
    activation_nodes: list[int]  # MatMuls of two activations


def layer_name(init: str) -> str:
    """``model.encoder.layer.0.attention.self.query.w_int8`` -> ``encoder.layer.0.attention.self.query``."""
    name = init[len(_WRAPPER_PREFIX) :] if init.startswith(_WRAPPER_PREFIX) else init
    for suffix in _TENSOR_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def numel(init) -> int:
    return math.prod(init.dims) if init.dims else 1


class _Graph:
    """Producers, consumers and which values are static (computed from initializers only)."""

    def __init__(self, graph):
        self.graph = graph
        self.inits = {i.name: i for i in graph.initializer}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        static = set(self.inits)
        for k, node in enumerate(graph.node):  # ONNX graphs are topologically sorted
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(k)
            if node.op_type == "Constant" or all((not n) or n in static for n in node.input):
                static.update(o for o in node.output if o)
            for o in node.output:
                self.producer[o] = k
        self.static = static
        self._cones: dict[str, tuple[str, ...]] = {}

    def cone(self, value: str) -> tuple[str, ...]:
        """Initializers a static value is made of (memoised; the value must be static)."""
        if value in self._cones:
            return self._cones[value]
        if value in self.inits:
            out: tuple[str, ...] = (value,)
        else:
            seen: dict[str, None] = {}
            stack = [value]
            while stack:  # iterative: long unpacking chains must not hit the recursion limit
                v = stack.pop()
                if v in self.inits:
                    seen.setdefault(v, None)
                    continue
                k = self.producer.get(v)
                if k is not None:
                    stack.extend(n for n in self.graph.node[k].input if n)
            out = tuple(seen)
        self._cones[value] = out
        return out

    def dequantized(self, value: str) -> bool:
        k = self.producer.get(value)
        steps = 0
        while k is not None and steps < 8:
            node = self.graph.node[k]
            if node.op_type == "DequantizeLinear":
                return True
            k = self.producer.get(node.input[0]) if node.input else None
            steps += 1
        return False


def analyse(graph) -> GraphLayers:
    """The layers of ``graph`` (an ``onnx.GraphProto``), see the module docstring."""
    g = _Graph(graph)
    layers: dict[str, Layer] = {}
    owner: dict[str, str] = {}  # initializer -> layer name
    activation: list[int] = []
    for k, node in enumerate(graph.node):
        idx = WEIGHT_INPUT.get(node.op_type)
        if idx is None:
            continue
        operands = list(node.input)
        w = operands[idx] if idx < len(operands) else ""
        if node.op_type == "MatMul" and w not in g.static and operands and operands[0] in g.static:
            w = operands[0]  # W @ x: the static operand comes first
        if not w or w not in g.static:
            if node.op_type == "MatMul":
                activation.append(k)
            continue
        if all(n in g.static for n in operands if n):  # constant arithmetic, no activation read
            continue
        cone = [n for n in g.cone(w) if numel(g.inits[n]) > 0]
        if not cone:
            continue
        main = max(cone, key=lambda n: numel(g.inits[n]))
        name = owner.get(main) or layer_name(main)
        layer = layers.get(name)
        if layer is None:
            layer = layers[name] = Layer(name, node.op_type, main, qdq=g.dequantized(w))
        for n in cone:
            if n not in owner:
                owner[n] = name
                layer.tensors.append(n)
        for n in _bias(g, node, k):
            if n not in owner:
                owner[n] = name
                layer.tensors.append(n)
                layer.bias.append(n)
        if node.op_type in MAC_OPS:
            layer.nodes.append(k)
    for layer in layers.values():  # merged layers (packed codes + their gathered scales): the largest leads
        weights = [n for n in layer.tensors if n not in layer.bias]
        layer.main = max(weights, key=lambda n: numel(g.inits[n]))
        layer.tensors = [layer.main] + [n for n in layer.tensors if n != layer.main]
    constants = [n for n in g.inits if n not in owner]
    return GraphLayers(layers, constants, activation)


def _bias(g: _Graph, node, k: int) -> list[str]:
    """Initializers of a node's bias: Conv / Gemm input 2, LayerNormalization / BatchNormalization
    inputs 2.., or the static operand of an ``Add`` that is the only reader of a MatMul's output."""
    out: list[str] = []
    if node.op_type in ("Conv", "Gemm", "LayerNormalization", "BatchNormalization"):
        for name in list(node.input)[2:]:
            if name and name in g.static:
                out += g.cone(name)
    elif node.op_type == "MatMul" and node.output:
        readers = g.consumers.get(node.output[0], [])
        if len(readers) == 1 and g.graph.node[readers[0]].op_type == "Add":
            add = g.graph.node[readers[0]]
            for name in add.input:
                if name != node.output[0] and name in g.static:
                    out += g.cone(name)
    return out


# ------------------------------------------------------------------------------- MACs
def mac_values(graph, nodes: list[int]) -> list[str]:
    """Names whose shapes :func:`macs_of` needs: each MAC node's first two inputs and its output."""
    names: list[str] = []
    for k in nodes:
        node = graph.node[k]
        names += [n for n in (*_mac_inputs(node), node.output[0]) if n]
    return list(dict.fromkeys(names))


def _mac_inputs(node) -> tuple[str, str]:
    """(activation A, weight W) operands of a MAC node."""
    i = list(node.input)
    if node.op_type in ("QLinearConv", "QLinearMatMul"):
        return i[0], i[3]
    return i[0], i[1]


def macs_of(node, shapes: dict[str, tuple[int, ...]], gemm_trans_a: bool = False) -> int:
    """Multiply-accumulates of one MAC node from the shapes of its operands and output."""
    a_name, w_name = _mac_inputs(node)
    out = shapes.get(node.output[0])
    if out is None:
        return 0
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        w = shapes.get(w_name)
        return math.prod(out) * math.prod(w[1:]) if w else 0
    a = shapes.get(a_name)
    if not a:
        return 0
    if node.op_type == "Gemm":
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        return math.prod(out) * a[0 if trans_a else -1]
    return math.prod(out) * a[-1]


def node_macs(model_proto, feed: dict[str, Any], nodes: list[int]) -> dict[int, int]:
    """MACs of each node in ``nodes`` for the inputs ``feed`` (numpy arrays): the graph runs once
    in ONNX Runtime without graph optimisations, the operands of those nodes added as outputs."""
    import onnx
    import onnxruntime as ort

    graph = model_proto.graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    inputs = {i.name for i in graph.input}
    wanted = [n for n in mac_values(graph, nodes) if n not in inits and n not in inputs]
    shapes: dict[str, tuple[int, ...]] = dict(inits)
    shapes.update({k: tuple(v.shape) for k, v in feed.items()})
    if wanted:
        proto = onnx.ModelProto()
        proto.CopyFrom(model_proto)
        have = {o.name for o in proto.graph.output}
        for name in wanted:
            if name not in have:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        values = sess.run(None, {k: v for k, v in feed.items() if k in inputs})
        shapes.update({n: tuple(v.shape) for n, v in zip(names, values)})
    return {k: macs_of(graph.node[k], shapes) for k in nodes}


# ---------------------------------------------------------------------------- summary
def op_counts(graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
