"""Dependency graph: groups of coupled dimensions that must be pruned together.

A *space* is one axis of prunable units (a conv's output channels, a block's heads).
Every tensor slice that follows that axis is a :class:`Slot`: ``(module, param, dim)``
plus a *layout* — the list of :class:`Segment` s that the dim is made of. A dim made of
several segments is a concatenation (``torch.cat`` along channels, GPT-2's fused q|k|v);
a segment with ``factor > 1`` maps one unit to ``factor`` consecutive indices (flatten of a
C x H x W map into a Linear, a head of ``head_dim`` rows). Residual sums *unite* spaces
(every member of a sum shares channels): a :class:`Group` is a union of spaces, pruned as
one unit with one importance score. A space split into the G channel groups of a grouped
conv is *tiled*: its unit is a position within a group, the same in every group (so each
group keeps as many channels as the others and the conv stays a G-group conv).

CNNs are traced with ``torch.fx`` (:func:`trace_graph`), each tensor's units tracked on
one *axis* (dim 1 of conv maps, the last dim of Linear inputs, so tokens ``(B, T, F)`` work
too: conv patch embedding -> ``flatten(2).transpose(1, 2)`` -> Linear/MLP blocks). A
timm-style attention module (``qkv``/``proj`` Linears, ``num_heads``, ``head_dim``) is a leaf
whose heads are one group, admitted only after a functional check that removing a head
equals zeroing it. LayerNorm statistics span all its features, so a LayerNorm's input
features are never pruned (removing one renormalises the others). Hugging Face transformers
are walked by module structure (:mod:`netslim.prune.structured.hf`). Anything the tracer does
not understand locks the spaces it touches (with the reason in ``graph.skipped``): the graph
prunes only what is provably safe.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import NetslimError
from .hooks import eval_mode

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
    param: str  # parameter or buffer name inside ``module``
    dim: int
    layout: tuple[Segment, ...]
    role: str = "out"  # "out": the unit's producer/carrier; "in": a consumer's input slice


@dataclass
class Group:
    id: int
    name: str  # a representative module name (the first producer)
    size: int  # units
    kind: str = "channel"  # channel | head | neuron
    slots: list[tuple[Slot, int]] = field(default_factory=list)  # (slot, segment index)
    locked: str | None = None
    # module attributes that count the group's units: {"module", "attr", "per_unit"};
    # after pruning, attr = kept units * per_unit (e.g. an attention's num_heads)
    attrs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return self.locked is None


@dataclass
class DependencyGraph:
    groups: list[Group]
    slots: list[Slot]
    skipped: list[dict[str, str]]
    kind: str = "fx"  # fx | hf | export
    # attention owner -> (args, kwargs) of one real call: where head groups are checked
    calls: dict[str, Any] = field(default_factory=dict)

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
        self.attrs: list[tuple[int, dict[str, Any]]] = []
        self.periods: dict[int, int] = {}  # space -> number of tiles (see ``tile``)

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

    def attr(self, space: int, module: str, attr: str, per_unit: int = 1) -> None:
        """``module.attr`` counts the units of ``space`` (times ``per_unit``)."""
        self.attrs.append((space, {"module": module, "attr": attr, "per_unit": int(per_unit)}))

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"name": name, "reason": reason})

    def tile(self, s: int, tiles: int) -> None:
        """``space`` must be pruned alike in each of ``tiles`` equal consecutive blocks (the
        channel groups of a grouped conv): its unit becomes a *position within a block*, so
        unit j stands for channels j, j + C/tiles, j + 2C/tiles, ... and every block keeps the
        same positions. A slot whose segment already spans one block (a grouped conv's
        per-group input slice, ``C/tiles`` units) indexes positions directly."""
        self.periods[s] = math.lcm(self.periods.get(s, 1), int(tiles))

    def _tiles(self) -> dict[int, int]:
        """Tiles per root space: the lcm over its members (tiling by 4 implies tiling by 2)."""
        out: dict[int, int] = {}
        for s, t in self.periods.items():
            r = self.find(s)
            out[r] = math.lcm(out.get(r, 1), t)
        for r, t in list(out.items()):
            if self.size[r] % t:
                self.lock(r, f"grouped convs split these {self.size[r]} channels into {t} groups unevenly")
                del out[r]
        return out

    def _tiled(self, layout: tuple[Segment, ...], tiles: dict[int, int]) -> tuple[Segment, ...]:
        out = []
        for seg in layout:
            r = self.find(seg.space)
            block = self.size[r] // tiles.get(r, 1)
            # a full-size segment becomes `tiles` blocks; a one-group slice stays one block
            out += [Segment(seg.space, block, seg.factor)] * (seg.units // block) if r in tiles else [seg]
        return tuple(out)

    def build(self, kind: str = "fx") -> DependencyGraph:
        tiles = self._tiles()
        roots: dict[int, Group] = {}
        for s in range(len(self.parent)):
            r = self.find(s)
            if r not in roots:
                roots[r] = Group(
                    len(roots), self.name[r], self.size[r] // tiles.get(r, 1), self.kind[r], locked=self.locks.get(r)
                )
        self.slots = [replace(slot, layout=self._tiled(slot.layout, tiles)) for slot in self.slots]
        for slot in self.slots:
            for i, seg in enumerate(slot.layout):
                roots[self.find(seg.space)].slots.append((slot, i))
        for space, a in self.attrs:
            roots[self.find(space)].attrs.append(a)
        groups = [g for g in roots.values() if g.slots]
        for i, g in enumerate(groups):
            g.id = i
        return DependencyGraph(groups, list(self.slots), list(self.skipped), kind)


# ------------------------------------------------------------------------ fx tracing
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.MaxPool1d,
    nn.AvgPool1d,
)
_PASS_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.sigmoid,
    F.hardswish,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.leaky_relu,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float"}
_REDUCE = {"mean", "sum", "amax"}
_LN_LOCK = "LayerNorm statistics span these features (removing one renormalises the others)"


def is_attention_leaf(m: nn.Module) -> bool:
    """A timm-style self-attention: fused ``qkv`` and ``proj`` Linears, ``num_heads`` x ``head_dim``."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    n, hd = getattr(m, "num_heads", None), getattr(m, "head_dim", None)
    return (
        isinstance(qkv, nn.Linear)
        and isinstance(proj, nn.Linear)
        and isinstance(n, int)
        and isinstance(hd, int)
        and qkv.out_features == 3 * n * hd
        and proj.in_features == n * hd
    )


@torch.no_grad()
def check_attention_leaf(m: Any) -> str | None:  # duck-typed: num_heads, head_dim, qkv, proj
    """None when removing a head (and lowering ``num_heads``) equals zeroing its slices; else why not.

    The forward is user code: this check is what makes its heads provably prunable.
    """
    import copy

    n, hd, dim = m.num_heads, m.head_dim, m.qkv.in_features
    if n < 2:
        return "a single head"
    p = m.qkv.weight
    x = torch.randn(2, 5, dim, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    rows = (torch.arange(1, n) * hd).view(-1, 1) + torch.arange(hd).view(1, -1)
    keep_q = rows.reshape(-1).to(p.device)  # every head but head 0, within one third
    keep_qkv = torch.cat([keep_q + k * n * hd for k in range(3)])
    zeroed = copy.deepcopy(m).eval()
    drop = torch.ones(3 * n * hd, dtype=torch.bool, device=p.device)
    drop[keep_qkv] = False
    zeroed.qkv.weight[drop] = 0
    if zeroed.qkv.bias is not None:
        zeroed.qkv.bias[drop] = 0
    zeroed.proj.weight[:, drop[: n * hd]] = 0
    shrunk = copy.deepcopy(m).eval()
    q = nn.Linear(dim, 3 * (n - 1) * hd, m.qkv.bias is not None).to(p.device, p.dtype)
    q.weight.copy_(m.qkv.weight[keep_qkv])
    if m.qkv.bias is not None:
        q.bias.copy_(m.qkv.bias[keep_qkv])
    o = nn.Linear((n - 1) * hd, m.proj.out_features, m.proj.bias is not None).to(p.device, p.dtype)
    o.weight.copy_(m.proj.weight[:, keep_q])
    if m.proj.bias is not None:
        o.bias.copy_(m.proj.bias)
    shrunk.qkv, shrunk.proj, shrunk.num_heads = q, o, n - 1
    try:
        y0, y1 = zeroed(x), shrunk(x)
    except Exception as e:  # noqa: BLE001 - a forward that hard-codes the width
        return f"its forward fails with one head fewer ({type(e).__name__}: {e})"
    y0, y1 = (y[0] if isinstance(y, tuple) else y for y in (y0, y1))
    if y0.shape != y1.shape or not torch.allclose(y0, y1, atol=1e-5, rtol=1e-4):
        return "removing a head does not equal zeroing it (the forward does not follow num_heads)"
    return None


_ADD = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub}


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Tracer:
    """Walks an fx graph in order, giving each tensor node the layout of its dim 1."""

    def __init__(self, gm: fx.GraphModule, b: GraphBuilder):
        self.gm, self.b = gm, b
        self.layout: dict[fx.Node, tuple[Segment, ...]] = {}
        self.axis: dict[fx.Node, int] = {}  # which dim of the node's tensor the layout describes
        self.opaque_nodes: set[fx.Node] = set()  # outputs of ops not understood: a locked layout on any axis
        self.calls: dict[str, int] = {}

    def set(self, node: fx.Node, layout: tuple[Segment, ...], axis: int = 1) -> None:
        self.layout[node], self.axis[node] = layout, axis

    def follows(self, node: fx.Node, src: Any) -> bool:
        """``node`` keeps ``src``'s units on the same axis (same rank, batch and unit count)."""
        if not isinstance(src, fx.Node) or src not in self.layout:
            return False
        a, si, so = self.axis[src], _shape(src), _shape(node)
        if si is None or so is None or len(si) != len(so) or si[0] != so[0] or si[a] != so[a]:
            return False
        self.set(node, self.layout[src], a)
        return True

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
            self.set(node, self.new(node, shape[1], str(node.target), lock=reason))
            self.opaque_nodes.add(node)

    def on_axis(self, src: Any, axis: int) -> None:
        """An opaque tensor read along another axis: give it a locked layout there."""
        shape = _shape(src)
        if src in self.opaque_nodes and shape is not None and self.axis[src] != axis % len(shape):
            reason = self.b.locks.get(self.b.find(self.layout[src][0].space), "opaque op")
            self.set(src, self.new(src, shape[axis], str(src.target), lock=reason), axis % len(shape))

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                if shape is not None and len(shape) >= 2:
                    self.set(node, self.new(node, shape[1], node.name, lock="model input"))
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
                    self.set(node, self.new(node, shape[1], node.name, lock="constant tensor"))

    # -- modules
    def module(self, node: fx.Node) -> None:
        name = str(node.target)
        m = self.gm.get_submodule(name)
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] > 1:
            self.b.skip(name, "module called more than once (shared weights)")
            return self.opaque(node, f"{name} is called more than once")
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if src is not None and isinstance(m, nn.Linear | nn.LayerNorm) or is_attention_leaf(m):
            self.on_axis(src, -1)
        lin = self.layout.get(src) if src is not None else None
        if (
            lin is not None
            and self.axis[src] != 1
            and isinstance(m, nn.Conv2d | nn.Conv1d | nn.BatchNorm2d | nn.BatchNorm1d)
        ):
            self.b.skip(name, "its channel dim does not carry the traced units")
            return self.opaque(node, f"{name}: units not on dim 1")
        if isinstance(m, nn.Conv2d | nn.Conv1d):
            return self.conv(node, name, m, lin)
        if isinstance(m, nn.Linear):
            return self.linear(node, name, m, src, lin)
        if is_attention_leaf(m):
            return self.attention(node, name, m, src, lin)
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and lin is not None:
            for p in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, p, None) is not None:
                    self.b.add(name, p, 0, lin)
            self.set(node, lin)
            return None
        if (
            isinstance(m, nn.LayerNorm)
            and lin is not None
            and len(m.normalized_shape) == 1
            and self.axis[src] == len(_shape(src) or ()) - 1
        ):
            for p in ("weight", "bias"):
                if getattr(m, p, None) is not None:
                    self.b.add(name, p, 0, lin)
            self.b.lock_layout(lin, _LN_LOCK)
            self.set(node, lin, self.axis[src])
            return None
        if isinstance(m, _ELEMENTWISE_MODULES) and self.follows(node, src):
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
            out = self.grouped_conv(node, name, m, lin)
        self.b.add(name, "weight", 0, out)
        if bias:
            self.b.add(name, "bias", 0, out)
        self.set(node, out)
        return None

    def grouped_conv(self, node, name: str, m, lin) -> tuple[Segment, ...]:
        """groups = G (not depthwise): weight (C_out, C_in/G, k, k); output block g reads only
        input block g, and every block must keep as many channels as the others. So both its
        output channels and its input's channels are *tiled* G times (see ``GraphBuilder.tile``):
        the same positions go in every block, which keeps the conv a valid G-group conv."""
        g = m.groups
        out = self.new(node, m.out_channels, name)
        self.b.tile(out[0].space, g)
        if len(lin) == 1 and lin[0].factor == 1:
            # weight dim 1 indexes the position within a block: one block-sized segment
            self.b.add(name, "weight", 1, (Segment(lin[0].space, lin[0].units // g),), role="in")
            self.b.tile(lin[0].space, g)
        else:
            self.b.skip(name, f"grouped conv (groups={g}) reads a concatenation: its input channels are kept")
            self.b.lock_layout(lin, f"input of grouped conv {name} is a concatenation")
        return out

    def _features_in(self, src, lin, width: int) -> bool:
        """``src`` carries traced units on its last dim, ``width`` indices in all."""
        shape = _shape(src) if src is not None else None
        return (
            lin is not None
            and shape is not None
            and len(shape) >= 2
            and self.axis[src] == len(shape) - 1
            and sum(s.width for s in lin) == width
        )

    def linear(self, node, name: str, m, src, lin) -> None:
        if not self._features_in(src, lin, m.in_features):
            self.b.skip(name, "Linear input features (last dim) are not traced")
            return self.opaque(node, f"{name}: input not traced")
        self.b.add(name, "weight", 1, lin, role="in")
        out = self.new(node, m.out_features, name)
        self.b.add(name, "weight", 0, out)
        if m.bias is not None:
            self.b.add(name, "bias", 0, out)
        self.set(node, out, len(_shape(node)) - 1)
        return None

    def attention(self, node, name: str, m, src, lin) -> None:
        """A timm-style attention leaf: input features -> qkv; heads -> proj; proj rows out."""
        reason = None if self._features_in(src, lin, m.qkv.in_features) else "input features are not traced"
        reason = reason or check_attention_leaf(m)
        if reason is not None:
            self.b.skip(name, f"attention heads kept: {reason}")
            return self.opaque(node, f"attention {name}: {reason}")
        n, hd = m.num_heads, m.head_dim
        self.b.add(f"{name}.qkv", "weight", 1, lin, role="in")
        h = self.b.space(n, name, "head")
        seg = Segment(h, n, hd)
        self.b.add(f"{name}.qkv", "weight", 0, (seg, seg, seg))  # rows: q heads | k heads | v heads
        if m.qkv.bias is not None:
            self.b.add(f"{name}.qkv", "bias", 0, (seg, seg, seg))
        self.b.add(f"{name}.proj", "weight", 1, (seg,), role="in")
        self.b.attr(h, name, "num_heads")
        out = self.new(node, m.proj.out_features, f"{name}.proj")
        self.b.add(f"{name}.proj", "weight", 0, out)
        if m.proj.bias is not None:
            self.b.add(f"{name}.proj", "bias", 0, out)
        self.set(node, out, len(_shape(node)) - 1)
        return None

    def flatten(self, node, src, lin, start: int, end: int) -> None:
        shape = _shape(src) if src is not None else None
        if lin is not None and shape is not None:
            start, end = start % len(shape), end % len(shape)
            a = self.axis[src]
            if a < start:  # e.g. (B, C, H, W).flatten(2): the channels stay where they are
                self.set(node, lin, a)
                return None
            if a > end:
                self.set(node, lin, a - (end - start))
                return None
        if lin is None or shape is None or start != 1 or end != len(shape) - 1 or self.axis[src] != 1:
            return self.opaque(node, "flatten that does not keep the batch dim")
        spatial = 1
        for d in shape[2:]:
            spatial *= int(d)
        # channel c of (B, C, H, W) becomes features [c*H*W, (c+1)*H*W) of (B, C*H*W)
        self.set(node, tuple(Segment(s.space, s.units, s.factor * spatial) for s in lin))
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
        if (
            t in (operator.mul, operator.truediv, torch.mul)
            and len(tensors) == 1
            and not any(isinstance(a, fx.Node) and a not in self.layout for a in node.args)
        ):
            if _shape(tensors[0]) == out_shape:  # scaling by a python number
                self.set(node, self.layout[tensors[0]], self.axis[tensors[0]])
                return None
        if (t in _PASS_FUNCTIONS or (node.op == "call_method" and t in _PASS_METHODS)) and tensors:
            if self.follows(node, node.args[0]):
                return None
        if (t is torch.transpose or (node.op == "call_method" and t == "transpose")) and tensors:
            return self.transpose(node)
        if (
            getattr(t, "__name__", None) in _REDUCE
            and node.op == "call_function"
            and t in (torch.mean, torch.sum, torch.amax)
        ) or (node.op == "call_method" and t in _REDUCE):
            return self.reduce(node)
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
        if (
            len(tensors) == 1
            and shapes[0] == _shape(node)
            and not any(isinstance(a, fx.Node) and a not in self.layout for a in node.args)
        ):
            self.set(node, self.layout[tensors[0]], self.axis[tensors[0]])  # x + python number
            return None
        full = [a for a, s in zip(tensors, shapes) if s == _shape(node)]
        if len(tensors) == 2 and len(full) == 1:
            # x + a broadcast tensor (a bias, a position table): units stay where x has them,
            # but the other operand cannot be sliced with them: lock
            for t in tensors:
                self.b.lock_layout(self.layout[t], "added to a broadcast tensor")
            self.set(node, self.layout[full[0]], self.axis[full[0]])
            return None
        if len(tensors) == 1 or any(s != _shape(node) for s in shapes):  # broadcasting: not a channel sum
            return self.opaque(node, "broadcasting add/mul")
        a, b = (self.layout[x] for x in tensors)
        if self.axis[tensors[0]] != self.axis[tensors[1]] or [(s.units, s.factor) for s in a] != [
            (s.units, s.factor) for s in b
        ]:
            self.b.lock_layout(a, "sum of differently concatenated tensors")
            self.b.lock_layout(b, "sum of differently concatenated tensors")
        else:
            for sa, sb in zip(a, b):
                self.b.union(sa.space, sb.space)  # members of a sum share channels
        self.set(node, a, self.axis[tensors[0]])
        return None

    def transpose(self, node: fx.Node) -> None:
        src = node.args[0]
        shape = _shape(src)
        dims = list(node.args[1:3]) or [node.kwargs.get("dim0"), node.kwargs.get("dim1")]
        if shape is None or any(not isinstance(d, int) for d in dims):
            return self.opaque(node, "transpose with unknown dims")
        d0, d1 = (d % len(shape) for d in dims)
        if 0 in (d0, d1):
            return self.opaque(node, "transpose of the batch dim")
        a = self.axis[src]
        self.set(node, self.layout[src], d1 if a == d0 else d0 if a == d1 else a)
        return None

    def reduce(self, node: fx.Node) -> None:
        """mean/sum/amax over dims other than the units' (e.g. global pooling, token mean)."""
        src = node.args[0]
        shape = _shape(src)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if shape is None or dims is None:
            return self.opaque(node, "reduction over every dim")
        reduced: set[int] = {d % len(shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        a = self.axis[src]
        if a in reduced or 0 in reduced:
            return self.opaque(node, "reduction over the units or the batch")
        self.set(node, self.layout[src], a if keep else a - sum(d < a for d in reduced))
        return None

    def cat(self, node: fx.Node) -> None:
        items = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = _shape(node)
        if dim < 0:
            dim += len(out_shape)
        if not all(isinstance(x, fx.Node) and x in self.layout for x in items) or any(
            self.axis[x] != dim for x in items
        ):
            return self.opaque(node, "concatenation not along the traced units")
        self.set(node, tuple(seg for x in items for seg in self.layout[x]), dim)  # index offsets
        return None


class _LeafTracer(fx.Tracer):
    """Attention modules stay leaves: their reshapes into heads are handled as one unit. So do
    the modules ``leaves`` matches (an excluded module fx cannot trace: one opaque layer). The
    stack of modules being traced names the one that stopped a failed trace."""

    def __init__(self, leaves: tuple[str, ...] = ()):
        super().__init__()
        self.leaves = tuple(leaves)
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from .selectors import matches

        return (
            is_attention_leaf(m)
            or any(matches(sel, qualname, m) for sel in self.leaves)
            or super().is_leaf_module(m, qualname)
        )

    def call_module(self, m, forward, args, kwargs):
        self.stack.append(self.path_of_module(m))
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "model_type")


def trace_graph(model: nn.Module, example_inputs: Any, *, leaves: tuple[str, ...] = ()) -> DependencyGraph:
    """Dependency graph of ``model`` (``example_inputs``: one batch — a tensor, a tuple, or a
    dict of keyword inputs — for shapes).

    ``torch.fx`` first (module-level; the zoo and most user CNNs), then ``torch.export``
    (:func:`netslim.core.trace.export_graph`): Hugging Face models, and models fx cannot
    follow. A model neither can trace raises one NetslimError naming the module that stopped
    the trace and how to exclude it (``leaves``: module selectors traced as opaque layers).
    """
    from torch.fx.passes.shape_prop import ShapeProp

    from .trace import export_graph, trace_error

    if _is_hf(model) or isinstance(example_inputs, dict):
        return export_graph(model, example_inputs)
    b = GraphBuilder()
    tracer = _LeafTracer(leaves)
    try:
        gm = fx.GraphModule(model, tracer.trace(model))
        with eval_mode(model, grad=False):
            ShapeProp(gm).propagate(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))
    except Exception as e:  # noqa: BLE001 - fx cannot follow it: the generic path may
        where = tracer.stack[-1] if tracer.stack else None
        log.info("torch.fx cannot trace %s (%s): trying torch.export", type(model).__name__, e)
        try:
            return export_graph(model, example_inputs)
        except NetslimError:
            raise trace_error(model, where, e) from None
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
