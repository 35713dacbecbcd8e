"""Attention heads of any model, found from its computation rather than its class.

:func:`attention_cores`: in an exported graph, each ``scaled_dot_product_attention`` /
``softmax`` and the ops after it up to the first projection that reads the result make a
*core*; the projections reached walking back from the core are its inputs (q, k, v, or one
fused q|k|v). :func:`find_heads` then runs one real forward pass in which every input
projection's output is a fresh leaf tensor, and asks autograd which rows of those outputs
each column of the out-projection's input depends on. Columns that share rows are one head
(with grouped-query attention, one key/value head with every query head reading it: the
rows a group shares join them), so the head groups, their sizes and the order of every
projection's rows (q|k|v thirds, BLOOM's per-head interleave, Falcon's per-group blocks)
come from the sparsity of that Jacobian, not from names or config fields.

A core whose pattern is not a set of equal groups laid out as consecutive blocks, or that has
only one group (multi-query attention shares one key/value head across all queries), keeps
its heads, with the reason. The counts a module keeps (``num_heads``, ``split_size``) are
candidate attributes; :mod:`netslim.prune.structured.generic` checks on the captured inputs
that removing a head equals zeroing it before a head group is offered for pruning.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_map

from .hooks import eval_mode
from .trace import _ATTENTION, Core, _op, dense_parts, example_call

log = logging.getLogger(__name__)
_MAX_WALK = 4000
_SIZE_ATTRS = {
    "head_dim",
    "head_size",
    "attention_head_size",
    "dim_head",
    "kv_head_dim",
    "qk_head_dim",
    "v_head_dim",
    "head_dim_kv",
}


def _projection(node: fx.Node, params: dict[str, str]) -> str | None:
    """The module of a dense layer node (linear, addmm, matmul: :func:`dense_parts`) with a parameter weight."""
    parts = dense_parts(node) if node.op == "call_function" else None
    if parts is not None and parts[1].name in params:
        return params[parts[1].name].rpartition(".")[0]
    return None


def attention_cores(ep) -> list[Core]:
    """The attention cores of an exported program (see the module doc)."""
    params = dict(ep.graph_signature.inputs_to_parameters)
    cores: dict[tuple, Core] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function" or _op(node) not in _ATTENTION:
            continue
        region, outs, frontier = {node}, set(), [node]
        while frontier and len(region) < _MAX_WALK:  # forward to the projection that reads the result
            n = frontier.pop()
            for u in n.users:
                if u.op != "call_function" or u in region:
                    continue
                m = _projection(u, params)
                if m is not None:
                    outs.add(m)
                else:
                    region.add(u)
                    frontier.append(u)
        if len(outs) != 1:
            continue  # not an attention (a classifier's softmax, a router): nothing to do
        ins, seen, frontier = set(), set(region), list(region)
        while frontier and len(seen) < _MAX_WALK:  # back to the projections that feed it
            n = frontier.pop()
            for a in n.all_input_nodes:
                if a in seen or a.op != "call_function":
                    continue
                seen.add(a)
                m = _projection(a, params)
                if m is not None:
                    ins.add(m)
                else:
                    frontier.append(a)
        out = outs.pop()
        if not ins or out in ins:
            continue
        key = (tuple(sorted(ins)), out)
        if key not in cores:
            names = [*sorted(ins), out]
            parts = [n.split(".") for n in names]
            common = []
            for xs in zip(*parts):
                if len(set(xs)) != 1:
                    break
                common.append(xs[0])
            cores[key] = Core(tuple(sorted(ins)), out, ".".join(common))
    return list(cores.values())


def _detached(x: Any) -> Any:
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, x)


def find_heads(model: nn.Module, example_inputs: Any, cores: list[Core]) -> None:
    """Fill each core's head layout (``units``, ``rows``, ``cols``, ``attrs``, ``call``) or ``reason``."""
    leaves: dict[str, torch.Tensor] = {}
    ctx: dict[str, torch.Tensor] = {}
    calls: dict[str, tuple] = {}
    hooks: list[tuple] = []

    def as_leaf(name):
        def fn(mod, args, out):
            if name in leaves or not isinstance(out, torch.Tensor):
                return None
            leaf = out.detach().requires_grad_(True)
            leaves[name] = leaf
            return leaf

        return fn

    def grab_ctx(name):
        def fn(mod, args):
            if name not in ctx and args and isinstance(args[0], torch.Tensor):
                ctx[name] = args[0]

        return fn

    def grab_call(name):
        def fn(mod, args, kwargs):
            if name not in calls:
                calls[name] = (_detached(args), _detached(kwargs))

        return fn

    for c in cores:
        hooks += [(m, as_leaf(m)) for m in c.ins]
        hooks += [(c.out, grab_ctx(c.out), "pre"), (c.owner, grab_call(c.owner), "pre_kwargs")]
    args, kwargs = example_call(model, example_inputs)
    with eval_mode(model, hooks, grad=True):
        model(*args, **kwargs)
    for c in cores:
        try:
            _layout(model, c, [leaves.get(m) for m in c.ins], ctx.get(c.out))
        except RuntimeError as e:  # autograd cannot differentiate the core
            c.reason = f"its dependency pattern cannot be computed ({str(e).splitlines()[0][:120]})"
        c.call = calls.get(c.owner)


def _dependencies(out: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per leaf, a (D, R) bool matrix: column j of ``out`` depends on row r of the leaf."""
    d = out.shape[-1]
    flat = out.reshape(-1, d)
    deps = [torch.zeros(d, leaf.shape[-1], dtype=torch.bool) for leaf in leaves]
    for j in range(d):
        grads = torch.autograd.grad(flat[:, j].sum(), leaves, retain_graph=True, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                deps[i][j] = g.detach().reshape(-1, g.shape[-1]).abs().sum(0) > 0
    return deps


def _layout(model: nn.Module, c: Core, leaves: list, out: torch.Tensor | None) -> None:
    if out is None or any(leaf is None for leaf in leaves) or not out.requires_grad:
        c.reason = "its output does not depend on its projections in a forward pass"
        return
    deps = _dependencies(out, leaves)
    d = out.shape[-1]
    sizes = [leaf.shape[-1] for leaf in leaves]
    # union-find over the out-projection's input columns and every projection's rows
    parent = list(range(d + sum(sizes)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    offset = d
    for dep, r in zip(deps, sizes):
        for j, row in zip(*torch.nonzero(dep, as_tuple=True)):
            a, b = find(int(j)), find(offset + int(row))
            if a != b:
                parent[max(a, b)] = min(a, b)
        offset += r
    roots = [find(x) for x in range(len(parent))]
    col_roots = sorted(set(roots[:d]), key=roots[:d].index)
    if any(r not in col_roots for r in roots[d:]):
        c.reason = "some projection rows do not reach the attention output"
        return
    unit = {r: i for i, r in enumerate(col_roots)}
    n = len(col_roots)
    if n < 2:
        c.reason = "all heads share their keys and values (one group): no head can go alone"
        return
    cols = _segments([unit[r] for r in roots[:d]], n)
    rows: dict[str, list[tuple[int, int]] | None] = {}
    offset = d
    for m, r in zip(c.ins, sizes):
        rows[m] = _segments([unit[x] for x in roots[offset : offset + r]], n)
        offset += r
    if cols is None or any(v is None for v in rows.values()):
        c.reason = "its heads are not laid out as equal consecutive blocks"
        return
    c.units, c.cols, c.rows = n, cols, {m: v for m, v in rows.items() if v is not None}  # none is None here
    c.attrs = _count_attrs(model, c, n)


def _segments(unit_of: list[int], n: int) -> list[tuple[int, int]] | None:
    """``unit_of`` (the unit of each index) as ``k`` repeats of units 0..n-1, each a block of
    ``f`` consecutive indices: ``[(n, f)] * k``; None when it is not."""
    runs: list[tuple[int, int]] = []  # (unit, length)
    for u in unit_of:
        if runs and runs[-1][0] == u:
            runs[-1] = (u, runs[-1][1] + 1)
        else:
            runs.append((u, 1))
    f = runs[0][1]
    if any(length != f for _, length in runs) or len(runs) % n:
        return None
    if [u for u, _ in runs] != list(range(n)) * (len(runs) // n):
        return None
    return [(n, f)] * (len(runs) // n)


def _count_attrs(model: nn.Module, c: Core, n: int) -> list[dict[str, Any]]:
    """Integer attributes of the core's modules that count heads (``num_heads``, ``split_size``, ...)."""
    out = []
    owner = model.get_submodule(c.owner)
    skip = set(c.ins) | {c.out}
    for name, m in owner.named_modules():
        full = f"{c.owner}.{name}" if c.owner and name else (name or c.owner)
        if full in skip:
            continue
        for attr, v in vars(m).items():
            if attr.startswith("_") or isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % n:
                continue
            if attr in _SIZE_ATTRS or attr.endswith("_head_dim") or not re.search(r"head|split", attr):
                continue
            out.append({"module": full, "attr": attr, "per_unit": v // n})
    return out
