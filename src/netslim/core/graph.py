"""Dependency graph: groups of coupled dimensions that must be pruned together.

A *space* is one axis of prunable units (a conv's output channels, a block's heads).
Every tensor slice that follows that axis is a :class:`Slot`: ``(module, param, dim)``
plus a *layout* — the list of :class:`Segment` s that the dim is made of. A dim made of
several segments is a concatenation (``torch.cat`` along channels, GPT-2's fused q|k|v);
a segment with ``factor > 1`` maps one unit to ``factor`` consecutive indices (flatten of a
C x H x W map into a Linear, a head of ``head_dim`` rows). Residual sums *unite* spaces
(every member of a sum shares channels): a :class:`Group` is a union of spaces, pruned as
one unit with one importance score.

CNNs are traced with ``torch.fx`` (:func:`trace_graph`); Hugging Face transformers are
walked by module structure (:mod:`netslim.prune.structured.hf`). Anything the tracer does
not understand locks the spaces it touches (with the reason in ``graph.skipped``): the graph
prunes only what is provably safe.
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    space: int
    units: int
    factor: int = 1  # indices per unit along the dim

    @property
    def width(self) -> int:
        return self.units * self.factor


@dataclass(frozen=True)
class Slot:
    module: str
    param: str             # parameter or buffer name inside ``module``
    dim: int
    layout: tuple[Segment, ...]
    role: str = "out"      # "out": the unit's producer/carrier; "in": a consumer's input slice


@dataclass
class Group:
    id: int
    name: str              # a representative module name (the first producer)
    size: int              # units
    kind: str = "channel"  # channel | head | neuron
    slots: list[tuple[Slot, int]] = field(default_factory=list)  # (slot, segment index)
    locked: str | None = None

    @property
    def prunable(self) -> bool:
        return self.locked is None


@dataclass
class DependencyGraph:
    groups: list[Group]
    slots: list[Slot]
    skipped: list[dict[str, str]]
    kind: str = "fx"  # fx | hf

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]


class GraphBuilder:
    """Union-find over spaces; slots refer to spaces; ``build()`` turns roots into groups."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.kind: list[str] = []
        self.name: list[str] = []
        self.locks: dict[int, str] = {}
        self.slots: list[Slot] = []
        self.skipped: list[dict[str, str]] = []

    def space(self, units: int, name: str, kind: str = "channel") -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(units))
        self.kind.append(kind)
        self.name.append(name)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:  # cannot happen for a well-formed sum; stay safe
            self.lock(ra, f"coupled with a space of a different size ({self.size[ra]} vs {self.size[rb]})")
            self.lock(rb, "coupled with a space of a different size")
        lo, hi = min(ra, rb), max(ra, rb)  # the older space names the group
        self.parent[hi] = lo
        if hi in self.locks and lo not in self.locks:
            self.locks[lo] = self.locks[hi]

    def lock(self, s: int, reason: str) -> None:
        self.locks.setdefault(self.find(s), reason)

    def lock_layout(self, layout: tuple[Segment, ...] | None, reason: str) -> None:
        for seg in layout or ():
            self.lock(seg.space, reason)

    def add(self, module: str, param: str, dim: int, layout: tuple[Segment, ...], role: str = "out") -> None:
        self.slots.append(Slot(module, param, dim, tuple(layout), role))

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"name": name, "reason": reason})

    def build(self, kind: str = "fx") -> DependencyGraph:
        roots: dict[int, Group] = {}
        for s in range(len(self.parent)):
            r = self.find(s)
            if r not in roots:
                roots[r] = Group(len(roots), self.name[r], self.size[r], self.kind[r], locked=self.locks.get(r))
        for slot in self.slots:
            for i, seg in enumerate(slot.layout):
                roots[self.find(seg.space)].slots.append((slot, i))
        groups = [g for g in roots.values() if g.slots]
        for i, g in enumerate(groups):
            g.id = i
        return DependencyGraph(groups, list(self.slots), list(self.skipped), kind)


# ------------------------------------------------------------------------ fx tracing
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
                 nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d,
                 nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool1d, nn.AvgPool1d)
_PASS_FUNCTIONS = {F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.hardswish, F.dropout, F.max_pool2d,
                   F.avg_pool2d, F.adaptive_avg_pool2d, torch.relu, torch.sigmoid, torch.tanh, F.leaky_relu}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float"}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub}


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Tracer:
    """Walks an fx graph in order, giving each tensor node the layout of its dim 1."""

    def __init__(self, gm: fx.GraphModule, b: GraphBuilder):
        self.gm, self.b = gm, b
        self.layout: dict[fx.Node, tuple[Segment, ...]] = {}
        self.calls: dict[str, int] = {}

    def new(self, node: fx.Node, units: int, name: str, lock: str | None = None) -> tuple[Segment, ...]:
        s = self.b.space(units, name)
        if lock:
            self.b.lock(s, lock)
        return (Segment(s, units),)

    def opaque(self, node: fx.Node, reason: str) -> None:
        """An op the graph does not understand: freeze everything it touches."""
        for arg in node.all_input_nodes:
            self.b.lock_layout(self.layout.get(arg), reason)
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.layout[node] = self.new(node, shape[1], str(node.target), lock=reason)

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                if shape is not None and len(shape) >= 2:
                    self.layout[node] = self.new(node, shape[1], node.name, lock="model input")
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    self.b.lock_layout(self.layout.get(arg), "model output")
            elif node.op == "call_module":
                self.module(node)
            elif node.op in ("call_function", "call_method"):
                self.function(node)
            elif node.op == "get_attr":
                shape = _shape(node)
                if shape is not None and len(shape) >= 2:
                    self.layout[node] = self.new(node, shape[1], node.name, lock="constant tensor")

    # -- modules
    def module(self, node: fx.Node) -> None:
        name = str(node.target)
        m = self.gm.get_submodule(name)
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] > 1:
            self.b.skip(name, "module called more than once (shared weights)")
            return self.opaque(node, f"{name} is called more than once")
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        lin = self.layout.get(src) if src is not None else None
        if isinstance(m, nn.Conv2d | nn.Conv1d):
            return self.conv(node, name, m, lin)
        if isinstance(m, nn.Linear):
            return self.linear(node, name, m, src, lin)
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and lin is not None:
            for p in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, p, None) is not None:
                    self.b.add(name, p, 0, lin)
            self.layout[node] = lin
            return None
        if isinstance(m, _PASS_MODULES) and lin is not None:
            self.layout[node] = lin
            return None
        if isinstance(m, nn.Flatten):
            return self.flatten(node, src, lin, m.start_dim, m.end_dim)
        if lin is None and not node.all_input_nodes:
            return None
        self.b.skip(name, f"unsupported module type {type(m).__name__}: its channels are kept")
        return self.opaque(node, f"unsupported module {name} ({type(m).__name__})")

    def conv(self, node, name: str, m, lin) -> None:
        if lin is None or sum(s.width for s in lin) != m.in_channels:
            self.b.skip(name, "input channels not traced")
            return self.opaque(node, f"{name}: input not traced")
        bias = m.bias is not None
        if m.groups == 1:
            self.b.add(name, "weight", 1, lin, role="in")
            out = self.new(node, m.out_channels, name)
        elif m.groups == m.in_channels == m.out_channels:
            out = lin  # depthwise: channel c in -> channel c out, one filter per channel
        else:
            self.b.skip(name, f"grouped conv (groups={m.groups}): its channels are kept")
            return self.opaque(node, f"grouped conv {name}")
        self.b.add(name, "weight", 0, out)
        if bias:
            self.b.add(name, "bias", 0, out)
        self.layout[node] = out
        return None

    def linear(self, node, name: str, m, src, lin) -> None:
        shape = _shape(src) if src is not None else None
        if lin is None or shape is None or len(shape) != 2 or sum(s.width for s in lin) != m.in_features:
            # (B, T, F) inputs have features on the last dim, not dim 1: not handled by the fx path.
            self.b.skip(name, "Linear input is not a traced (batch, features) tensor")
            return self.opaque(node, f"{name}: input not traced")
        self.b.add(name, "weight", 1, lin, role="in")
        out = self.new(node, m.out_features, name)
        self.b.add(name, "weight", 0, out)
        if m.bias is not None:
            self.b.add(name, "bias", 0, out)
        self.layout[node] = out
        return None

    def flatten(self, node, src, lin, start: int, end: int) -> None:
        shape = _shape(src) if src is not None else None
        if lin is None or shape is None or start != 1 or end not in (-1, len(shape) - 1):
            return self.opaque(node, "flatten that does not keep the batch dim")
        spatial = 1
        for d in shape[2:]:
            spatial *= int(d)
        # channel c of (B, C, H, W) becomes features [c*H*W, (c+1)*H*W) of (B, C*H*W)
        self.layout[node] = tuple(Segment(s.space, s.units, s.factor * spatial) for s in lin)
        return None

    # -- functions and methods
    def function(self, node: fx.Node) -> None:
        t = node.target
        tensors = [a for a in node.args if isinstance(a, fx.Node) and a in self.layout]
        out_shape = _shape(node)
        if out_shape is None:  # size(), getattr on tuples, ...: no tensor, nothing to track
            if tensors and not (node.op == "call_method" and t in ("size", "dim")):
                self.opaque(node, f"{t} returns a non-tensor")
            return
        if t in _ADD or (t in (operator.mul, torch.mul) and len(tensors) == 2):
            return self.add(node, tensors)
        if t in (operator.mul, operator.truediv, torch.mul) and len(tensors) == 1:
            if _shape(tensors[0]) == out_shape:  # scaling by a python number
                self.layout[node] = self.layout[tensors[0]]
                return None
        if (t in _PASS_FUNCTIONS or (node.op == "call_method" and t in _PASS_METHODS)) and tensors:
            src = node.args[0]
            if isinstance(src, fx.Node) and src in self.layout and _shape(src) is not None:
                if out_shape[:2] == _shape(src)[:2]:
                    self.layout[node] = self.layout[src]
                    return None
        if t is torch.flatten or (node.op == "call_method" and t == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, node.args[0], self.layout.get(node.args[0]), start, end)
        if node.op == "call_method" and t in ("view", "reshape") and tensors:
            src = node.args[0]
            ins = _shape(src)
            if ins is not None and len(out_shape) == 2 and out_shape[0] == ins[0]:
                return self.flatten(node, src, self.layout.get(src), 1, -1)
        if t is torch.cat:
            return self.cat(node)
        self.opaque(node, f"unsupported op {getattr(t, '__name__', t)}")
        return None

    def add(self, node: fx.Node, tensors: list[fx.Node]) -> None:
        shapes = [_shape(a) for a in tensors]
        if len(tensors) == 1 and shapes[0] == _shape(node) and not any(
                isinstance(a, fx.Node) and a not in self.layout for a in node.args):
            self.layout[node] = self.layout[tensors[0]]  # x + python number
            return None
        if len(tensors) == 1 or any(s != _shape(node) for s in shapes):  # broadcasting: not a channel sum
            return self.opaque(node, "broadcasting add/mul")
        a, b = (self.layout[x] for x in tensors)
        if [(s.units, s.factor) for s in a] != [(s.units, s.factor) for s in b]:
            self.b.lock_layout(a, "sum of differently concatenated tensors")
            self.b.lock_layout(b, "sum of differently concatenated tensors")
        else:
            for sa, sb in zip(a, b):
                self.b.union(sa.space, sb.space)  # members of a sum share channels
        self.layout[node] = a
        return None

    def cat(self, node: fx.Node) -> None:
        items = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = _shape(node)
        if dim < 0:
            dim += len(out_shape)
        if dim != 1 or not all(isinstance(x, fx.Node) and x in self.layout for x in items):
            return self.opaque(node, "concatenation not along channels")
        self.layout[node] = tuple(seg for x in items for seg in self.layout[x])  # index offsets
        return None


def trace_graph(model: nn.Module, example_inputs: Any) -> DependencyGraph:
    """Dependency graph of a traceable model (``example_inputs``: one batch, for shapes).

    A model that ``torch.fx`` cannot trace gives a graph with no groups and the reason in
    ``skipped``: nothing is pruned rather than something broken.
    """
    from torch.fx.passes.shape_prop import ShapeProp

    b = GraphBuilder()
    try:
        gm = fx.symbolic_trace(model)
        was = model.training
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))
        model.train(was)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "not provably safe"
        b.skip(type(model).__name__, f"torch.fx cannot trace the model ({type(e).__name__}: {e})")
        log.warning("structured pruning: cannot trace %s: %s", type(model).__name__, e)
        return b.build()
    _Tracer(gm, b).run()
    return b.build()


def unit_indices(layout: tuple[Segment, ...], seg_index: int, units: torch.Tensor) -> torch.Tensor:
    """Indices along a slot's dim of ``units`` (1-D long) of segment ``seg_index``."""
    offset = sum(s.width for s in layout[:seg_index])
    seg = layout[seg_index]
    idx = units.view(-1, 1) * seg.factor + torch.arange(seg.factor, device=units.device).view(1, -1)
    return (idx + offset).reshape(-1)


def slot_view(tensor: torch.Tensor, slot: Slot, seg_index: int) -> torch.Tensor:
    """The part of ``tensor`` that ``slot``'s segment covers, as (units, everything else)."""
    seg = slot.layout[seg_index]
    offset = sum(s.width for s in slot.layout[:seg_index])
    t = tensor.movedim(slot.dim, 0).narrow(0, offset, seg.width)  # (units*factor, ...)
    return t.reshape(seg.units, -1)
