"""CoFi's masks (Xia, Zhong & Chen 2022) on a Hugging Face transformer: where they act, what they cost.

Five hard-concrete (L0) gate vectors, the gates of :class:`netslim.prune.l0.HardConcreteGate`:

==========  ==========================  =================================================
mask        shape                       multiplies
==========  ==========================  =================================================
attention   (L,)                        the attention out-projection's output (whole layer)
heads       (L, heads)                  each head's columns of the out-projection's input
ffn         (L,)                        the FFN out-projection's output (whole layer)
neurons     (L, FFN size)               the FFN out-projection's input
hidden      (D,)                        every norm's output and every sublayer's output
==========  ==========================  =================================================

The units come from the generic dependency graph: one head group (Llama GQA: key/value groups)
and one neuron group per block; the residual-stream group's norms and writers (see
:mod:`netslim.prune.structured.width`). Masks act through forward hooks; one sample of every
gate per forward pass in training mode, the deterministic gate in eval mode.

**Expected size** (:func:`expected_size`): the weight elements of every block's attention
(q, k, v, o) and FFN matrices — "the encoder's parameters" of CoFi, without biases and norms —
as a function of the probabilities ``P(z != 0)``, the gates being independent::

    E[size] = sum_l ( P_att[l] * sum_h P_head[l,h] * c_head + P_ffn[l] * sum_i P_int[l,i] * c_int ) * sum_k P_hid[k]

with ``c_head`` / ``c_int`` the elements of one head / neuron per hidden dim, read from the
graph's slots (BERT: 4 * head_dim per head, 2 per neuron; Llama GQA: (2 * groups + 2) *
head_dim per key/value head, 3 per neuron).

**Final masks** (:meth:`CoFiMasks.final`): per vector, the expected number of open gates
``round(sum P(z != 0))``, taken by ``log_alpha`` (CoFi's rule; the layer gates of all blocks are
one vector). The expected size of products of gates is not the size of their rounded counts (a
layer gate at P = 0.7 counts 0.7 of its layer in expectation, all or nothing at the end), so
with a target (``exact``, the default of the ``cofi`` step) units are then closed by ascending
``log_alpha``, or reopened by descending, until the size meets the target (:func:`fit_to_size`).
Kept units carry their deterministic gate value, folded into the weights (:func:`fold`), so the
shrunk model computes what the masked model computes with those values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.graph import DependencyGraph, Group
from netslim.prune.l0 import GAMMA, ZETA, HardConcreteGate

GRANULARITIES = ("attention", "heads", "ffn", "neurons", "hidden")


@dataclass
class Units:
    """One block's heads or FFN neurons: the group, the module reading them (its input columns,
    ``factor`` per unit) and the weight elements of one unit per hidden dim (``cost``)."""

    group: Group
    reader: str
    factor: int
    cost: float

    @property
    def size(self) -> int:
        return self.group.size


@dataclass
class CoFiStructure:
    graph: DependencyGraph
    residual: Group
    blocks: list[str]  # block module names, in order
    heads: list[Units]  # per block
    neurons: list[Units]  # per block
    norms: list[str]  # residual-stream norms (their outputs are masked)
    writers: list[tuple[str, str, int]]  # (module, param, dim) rows / columns that write the stream
    hidden: int
    excluded: set[int] = field(default_factory=set)  # blocks whose heads / neurons / layers stay

    def full_size(self) -> float:
        return sum(u.size * u.cost for u in (*self.heads, *self.neurons)) * self.hidden


def _block_names(model: nn.Module) -> list[str]:
    from netslim.prune.structured.hf import block_list

    layers, owner, attr = block_list(model)
    owner_name = next(n for n, m in model.named_modules() if m is owner)
    prefix = f"{owner_name}.{attr}" if owner_name else attr
    return [f"{prefix}.{i}" for i in range(len(layers))]


def _units(model: nn.Module, g: Group, hidden: int) -> Units:
    readers = [(s, i) for s, i in g.slots if s.role == "in" and s.param == "weight"]
    if len(readers) != 1 or len(readers[0][0].layout) != 1:
        raise NetslimError(
            f"CoFi: the units of {g.name} are read by {len(readers)} projections (or a concatenation); "
            "netslim masks one out-projection per head / neuron group."
        )
    reader, _ = readers[0]
    cost = 0
    for s, i in g.slots:
        if s.param != "weight":
            continue
        w = model.get_submodule(s.module).weight
        other = [d for j, d in enumerate(w.shape) if j != s.dim]
        if other != [hidden]:
            raise NetslimError(f"CoFi: {s.module}.weight {tuple(w.shape)} is not a (units x hidden) matrix.")
        cost += s.layout[i].factor
    return Units(g, reader.module, reader.layout[0].factor, float(cost))


def cofi_structure(model: nn.Module, example_inputs: Any = None, exclude_layers=()) -> CoFiStructure:
    """Blocks, their head and neuron groups, the residual norms and writers of ``model``."""
    from netslim.prune.structured.generic import structured_graph
    from netslim.prune.structured.width import norm_names, on_device, residual_group

    graph = structured_graph(model, None if example_inputs is None else on_device(model, example_inputs))
    hidden = int(model.config.hidden_size)
    blocks = _block_names(model)
    res = residual_group(model, graph)
    per: dict[tuple[int, str], Group] = {}
    for g in graph.groups:
        if g.kind not in ("head", "neuron") or not g.slots:
            continue
        b = next(
            (i for i, name in enumerate(blocks) if re.match(rf"{re.escape(name)}\.", g.slots[0][0].module + ".")), None
        )
        if b is not None:
            if not g.prunable:
                raise NetslimError(f"CoFi: the {g.kind}s of {g.name} cannot be removed ({g.locked}).")
            per[(b, g.kind)] = g
    missing = [(i, k) for i in range(len(blocks)) for k in ("head", "neuron") if (i, k) not in per]
    if missing:
        i, k = missing[0]
        raise NetslimError(
            f"CoFi: block {blocks[i]} has no {k} group netslim can prune "
            f"({'; '.join(s['reason'] for s in graph.skipped[:2]) or 'none traced'})."
        )
    norms = norm_names(model, res)
    writers = []
    for s, _ in res.slots:
        m = model.get_submodule(s.module)
        if s.role == "out" and s.module not in norms and not isinstance(m, nn.Embedding):
            writers.append((s.module, s.param, s.dim))
    bad = [i for i in exclude_layers if not 0 <= i < len(blocks)]
    if bad:
        from netslim.core.errors import bad_param

        raise bad_param("cofi", "exclude_layers", f"block indices in [0, {len(blocks) - 1}]", list(exclude_layers))
    return CoFiStructure(
        graph,
        res,
        blocks,
        [_units(model, per[(i, "head")], hidden) for i in range(len(blocks))],
        [_units(model, per[(i, "neuron")], hidden) for i in range(len(blocks))],
        norms,
        writers,
        hidden,
        set(exclude_layers),
    )


# ------------------------------------------------------------------------------ gates
def _gate(shape: tuple[int, ...], init: float, device) -> HardConcreteGate:
    return HardConcreteGate(shape, init, cover=1).to(device)


class CoFiMasks(nn.Module):
    """The gate vectors of :class:`CoFiStructure` for the granularities in ``prune``."""

    def __init__(self, struct: CoFiStructure, prune: tuple[str, ...], init_keep: float, device=None):
        super().__init__()
        self.struct, self.prune = struct, tuple(prune)
        init = math.log(init_keep / (1 - init_keep))
        n = len(struct.blocks)
        self.gates = nn.ModuleDict()
        if "attention" in prune:
            self.gates["attention"] = _gate((n,), init, device)
        if "ffn" in prune:
            self.gates["ffn"] = _gate((n,), init, device)
        if "hidden" in prune:
            self.gates["hidden"] = _gate((struct.hidden,), init, device)
        for key, units in (("heads", struct.heads), ("neurons", struct.neurons)):
            if key in prune:
                self.gates[key] = nn.ModuleList(_gate((u.size,), init, device) for u in units)
        self.z: dict[str, Any] = {}
        self.fixed = False

    # -- probabilities and values
    def _layer_open(self, key: str) -> torch.Tensor:
        """P(z != 0) of the per-block gates (excluded blocks: 1)."""
        n = len(self.struct.blocks)
        if key not in self.gates:
            return torch.ones(n)
        p = self.gates[key].prob_nonzero()
        keep = torch.tensor([i in self.struct.excluded for i in range(n)], device=p.device)
        return torch.where(keep, torch.ones_like(p), p)

    def _unit_open(self, key: str, i: int) -> torch.Tensor:
        units = (self.struct.heads if key == "heads" else self.struct.neurons)[i]
        if key not in self.gates or i in self.struct.excluded:
            return torch.ones(units.size)
        return self.gates[key][i].prob_nonzero()

    def expected_size(self) -> torch.Tensor:
        """E[weight elements of the blocks' attention and FFN matrices] (module docstring; differentiable)."""
        att, ffn = self._layer_open("attention"), self._layer_open("ffn")
        total = 0.0
        for i, (h, f) in enumerate(zip(self.struct.heads, self.struct.neurons)):
            total = (
                total
                + att[i].cpu() * (self._unit_open("heads", i).cpu() * h.cost).sum()
                + ffn[i].cpu() * (self._unit_open("neurons", i).cpu() * f.cost).sum()
            )
        hidden = (
            self.gates["hidden"].prob_nonzero().sum().cpu()
            if "hidden" in self.gates
            else torch.tensor(float(self.struct.hidden))
        )
        return total * hidden

    def expected_sparsity(self) -> torch.Tensor:
        return 1 - self.expected_size() / self.struct.full_size()

    # -- one forward's gate values
    def sample(self, training: bool) -> None:
        """Draw every gate once (training) or take its deterministic value (eval) for the next forward;
        nothing while fixed values are set (:meth:`set_values`)."""
        if self.fixed:
            return
        for g in self.modules():
            if isinstance(g, HardConcreteGate):
                g.train(training)
        z: dict[str, Any] = {}
        for key in ("attention", "ffn", "hidden"):
            if key in self.gates:
                z[key] = self.gates[key].gate()
        for key in ("heads", "neurons"):
            if key in self.gates:
                z[key] = [g.gate() for g in self.gates[key]]
        self.z = self._exclude(z)

    def _exclude(self, z: dict[str, Any]) -> dict[str, Any]:
        for i in self.struct.excluded:
            for key in ("attention", "ffn"):
                if key in z:
                    z[key] = z[key].index_fill(0, torch.tensor([i], device=z[key].device), 1.0)
            for key in ("heads", "neurons"):
                if key in z:
                    z[key][i] = torch.ones_like(z[key][i])
        return z

    def set_values(self, z: dict[str, Any] | None) -> None:
        """Use fixed gate values (e.g. :meth:`final`'s) instead of sampling (None: sample again)."""
        self.fixed = z is not None
        self.z = z if z is not None else {}

    # -- the end
    @torch.no_grad()
    def final(self, target_size: float | None = None) -> dict[str, Any]:
        """Deterministic masks: per vector the expected count of open gates (``round(sum P(z != 0))``,
        the layer gates of all blocks as one vector), taken by ``log_alpha``; kept units carry their
        deterministic gate value (``sigmoid(log_alpha)`` where that is 0). With ``target_size``, units
        are then closed (lowest ``log_alpha`` first) or reopened (highest first) until the blocks'
        size is at most the target with no closed unit left that fits (:func:`fit_to_size`)."""
        out: dict[str, Any] = {}
        for key in ("attention", "ffn"):
            if key in self.gates:
                g = self.gates[key]
                out[key] = _keep_top(g, int(round(float(self._layer_open(key).sum()))), self.struct.excluded)
        if "hidden" in self.gates:
            g = self.gates["hidden"]
            out["hidden"] = _keep_top(g, max(1, int(round(float(g.prob_nonzero().sum())))))
        for key in ("heads", "neurons"):
            if key in self.gates:
                out[key] = [_keep_top(g, int(round(float(g.prob_nonzero().sum())))) for g in self.gates[key]]
        out = self._exclude(out)
        return out if target_size is None else fit_to_size(self, out, target=target_size)


def _value(g: HardConcreteGate) -> torch.Tensor:
    """The deterministic gate, or ``sigmoid(log_alpha)`` where that is 0 (a kept unit is never a hidden zero)."""
    la = g.log_alpha.detach()
    det = (torch.sigmoid(la) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    return torch.where(det > 0, det, torch.sigmoid(la))


def _keep_top(g: HardConcreteGate, k: int, forced: set[int] = frozenset()) -> torch.Tensor:
    """Gate values with the top-``k`` ``log_alpha`` (and the ``forced`` indices) open, the rest 0."""
    la = g.log_alpha.detach()
    keep = torch.zeros_like(la, dtype=torch.bool)
    if forced:
        keep[list(forced)] = True
    order = [int(i) for i in torch.argsort(la, descending=True, stable=True) if int(i) not in forced]
    keep[order[: max(0, k - len(forced))]] = True
    return torch.where(keep, _value(g), torch.zeros_like(la))


def fit_to_size(masks: CoFiMasks, z: dict[str, Any], *, target: float) -> dict[str, Any]:
    """Close open heads / neurons / hidden dims by ascending ``log_alpha`` while the size is above
    ``target``, then reopen closed ones by descending ``log_alpha`` where they still fit."""
    s = masks.struct
    cands = []  # (log_alpha, key, block or None, index)
    for key in ("heads", "neurons"):
        if key in z:
            for i, g in enumerate(masks.gates[key]):
                if i not in s.excluded:
                    cands += [(float(a), key, i, j) for j, a in enumerate(g.log_alpha.detach().tolist())]
    if "hidden" in z:
        cands += [
            (float(a), "hidden", None, j) for j, a in enumerate(masks.gates["hidden"].log_alpha.detach().tolist())
        ]
    z = {k: ([t.clone() for t in v] if isinstance(v, list) else v.clone()) for k, v in z.items()}

    def vec(key, i):
        return z[key] if i is None else z[key][i]

    def gate(key, i):
        return masks.gates[key] if i is None else masks.gates[key][i]

    size = size_of(s, z)
    for _a, key, i, j in sorted(cands):
        if size <= target:
            break
        v = vec(key, i)
        if v[j] > 0 and not (key == "hidden" and int((v > 0).sum()) == 1):
            v[j] = 0.0
            size = size_of(s, z)
    for _a, key, i, j in sorted(cands, reverse=True):
        v = vec(key, i)
        if v[j] == 0:
            v[j] = _value(gate(key, i))[j]
            new = size_of(s, z)
            if new <= target:
                size = new
            else:
                v[j] = 0.0
    return z


def size_of(struct: CoFiStructure, z: dict[str, Any]) -> int:
    """Weight elements left by fixed masks ``z`` (a closed gate is 0): :func:`expected_size` with indicators."""
    n = len(struct.blocks)
    att = z.get("attention", torch.ones(n)).cpu() > 0
    ffn = z.get("ffn", torch.ones(n)).cpu() > 0
    hidden = int((z["hidden"] > 0).sum()) if "hidden" in z else struct.hidden
    total = 0.0
    for i, (h, f) in enumerate(zip(struct.heads, struct.neurons)):
        nh = int((z["heads"][i] > 0).sum()) if "heads" in z else h.size
        ni = int((z["neurons"][i] > 0).sum()) if "neurons" in z else f.size
        total += bool(att[i]) * nh * h.cost + bool(ffn[i]) * ni * f.cost
    return int(round(total * hidden))


# ------------------------------------------------------------------------------ hooks
def mask_hooks(model: nn.Module, masks: CoFiMasks) -> list[tuple[str, Callable, str]]:
    """Forward hooks applying ``masks.z`` (for :func:`netslim.core.hooks.hooked` with ``root=model``);
    the root pre-hook samples the gates once per forward."""
    s = masks.struct
    hooks = [("", lambda m, a: masks.sample(model.training), "pre")]

    def reader(key: str, i: int, factor: int):
        def pre(module, args):
            z = masks.z.get(key)
            if z is None:
                return None
            x = args[0]
            return (x * z[i].to(x.dtype).repeat_interleave(factor), *args[1:])

        return pre

    def writer(layer_key: str | None, i: int | None):
        def post(module, args, out):
            y = out
            if layer_key is not None and layer_key in masks.z:
                y = y * masks.z[layer_key][i].to(y.dtype)
            if "hidden" in masks.z:
                y = y * masks.z["hidden"].to(y.dtype)
            return y

        return post

    owners: dict[str, tuple[str, int]] = {}
    for i, (h, f) in enumerate(zip(s.heads, s.neurons)):
        hooks += [(h.reader, reader("heads", i, h.factor), "pre"), (f.reader, reader("neurons", i, f.factor), "pre")]
        owners[h.reader], owners[f.reader] = ("attention", i), ("ffn", i)
    writers = {m for m, _, _ in s.writers}
    for name in sorted(writers | set(owners) | set(s.norms)):
        key, i = owners.get(name, (None, None))
        if name in owners and name not in writers:
            raise NetslimError(f"CoFi: {name} reads a head / neuron group but does not write the residual stream.")
        hooks.append((name, writer(key, i), "forward"))
    return hooks


# ------------------------------------------------------------------------------ fold
@torch.no_grad()
def _scale(t: torch.Tensor, dim: int, v: torch.Tensor) -> None:
    shape = [1] * t.dim()
    shape[dim] = -1
    t.mul_(v.to(t.dtype).view(shape))


@torch.no_grad()
def fold(model: nn.Module, struct: CoFiStructure, *, z: dict[str, Any]) -> None:
    """Multiply the fixed gate values ``z`` into the weights, so the hook-free model computes the
    masked one (closed units become zeros, removed later by the plans)."""
    for i, (h, f) in enumerate(zip(struct.heads, struct.neurons)):
        for key, units, layer_key in (("heads", h, "attention"), ("neurons", f, "ffn")):
            m = model.get_submodule(units.reader)
            if key in z:
                w = m.weight
                in_dim = 0 if type(m).__name__ == "Conv1D" else 1
                _scale(w, in_dim, z[key][i].repeat_interleave(units.factor))
            if layer_key in z:
                m.weight.mul_(z[layer_key][i].to(m.weight.dtype))
                if getattr(m, "bias", None) is not None:
                    m.bias.mul_(z[layer_key][i].to(m.bias.dtype))
    if "hidden" in z:
        hz = z["hidden"]
        for name, param, dim in struct.writers:
            _scale(getattr(model.get_submodule(name), param), dim, hz)
        for name in struct.norms:
            norm = model.get_submodule(name)
            _scale(norm.weight, 0, hz)
            if getattr(norm, "bias", None) is not None:
                _scale(norm.bias, 0, hz)
