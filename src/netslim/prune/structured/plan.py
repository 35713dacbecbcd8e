"""Prune plans: which indices each parameter keeps, applied as masks or physically.

A :class:`PrunePlan` is plain JSON data — ``(module, param, dim, keep)`` entries plus, for
Hugging Face models, config updates and module attributes — so it is stored with the
artifact (``info["prune_plans"]``) and replays on a fresh copy of the original model.

* ``apply_plan(model, plan, mode="mask")``: zeroes every pruned slice through
  :func:`netslim.core.masks.set_mask` (reversible, trainable, for verification);
* ``apply_plan(model, plan, mode="shrink")``: builds smaller modules (Conv, BN, Linear,
  LayerNorm, GPT-2 Conv1D, ...) with the kept slices and puts them in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError, bad_param
from netslim.core.graph import DependencyGraph, Group, unit_indices
from netslim.core.masks import set_mask
from netslim.core.surgery import get_module, replace_module

log = logging.getLogger(__name__)


@dataclass
class PrunePlan:
    entries: list[dict[str, Any]] = field(default_factory=list)  # {"module","param","dim","keep"}
    groups: list[dict[str, Any]] = field(default_factory=list)  # {"name","kind","size","kept"} per pruned group
    config: dict[str, Any] = field(default_factory=dict)  # HF config updates
    attrs: list[dict[str, Any]] = field(default_factory=list)  # {"module","attr","value"}
    drop_layers: list[int] = field(default_factory=list)  # whole transformer blocks removed
    drop_modules: list[str] = field(default_factory=list)  # CNN residual blocks replaced by identity

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, compact: the slots of one group (a conv's rows, its BN's four vectors, the
        next conv's columns) share one kept-index list, stored once in ``keeps`` and referenced
        by position; an increasing list is stored as the hex digits of its bitmask."""
        keeps: list[Any] = []
        where: dict[tuple[int, ...], int] = {}
        entries = []
        for e in self.entries:
            k = tuple(int(i) for i in e["keep"])
            if k not in where:
                where[k] = len(keeps)
                keeps.append(_encode_keep(k))
            entries.append({**e, "keep": where[k]})
        return {
            "keeps": keeps,
            "entries": entries,
            "groups": self.groups,
            "config": self.config,
            "attrs": self.attrs,
            "drop_layers": self.drop_layers,
            "drop_modules": self.drop_modules,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrunePlan:
        """Inverse of :meth:`to_dict`; also reads plans whose entries hold their index lists inline."""
        if not isinstance(data, dict):
            raise NetslimError(f"A prune plan must be a JSON object; got {type(data).__name__}.")
        keeps = [_decode_keep(k) for k in data.get("keeps", [])]
        entries = []
        for e in data.get("entries", []):
            k = e.get("keep")
            if isinstance(k, int):
                if not 0 <= k < len(keeps):
                    raise NetslimError(
                        f"Prune plan entry {e.get('module')!r}.{e.get('param')!r} refers to "
                        f"keep list {k}; the plan has {len(keeps)}."
                    )
                e = {**e, "keep": keeps[k]}
            entries.append(e)
        return cls(
            entries,
            list(data.get("groups", [])),
            dict(data.get("config", {})),
            list(data.get("attrs", [])),
            list(data.get("drop_layers", [])),
            [str(n) for n in data.get("drop_modules", [])],
        )

    @property
    def empty(self) -> bool:
        return not (self.entries or self.drop_layers or self.drop_modules)


def _encode_keep(keep: tuple[int, ...]) -> str | list[int]:
    if all(a < b for a, b in zip(keep, keep[1:])) and (not keep or keep[0] >= 0):
        mask = bytearray(keep[-1] // 8 + 1 if keep else 1)
        for i in keep:
            mask[i // 8] |= 1 << (i % 8)
        return format(int.from_bytes(mask, "little"), "x")
    return list(keep)  # not increasing (never made by plan_from_keep, but a plan may be written by hand)


def _decode_keep(code: str | list[int]) -> list[int]:
    if isinstance(code, list):
        return [int(i) for i in code]
    try:
        bits = int(code, 16)
    except (TypeError, ValueError):
        raise NetslimError(
            f"Prune plan: a keep list must be a list of indices or a hex bitmask; got {code!r}."
        ) from None
    return [i for i, b in enumerate(reversed(bin(bits)[2:])) if b == "1"]


def plan_from_keep(graph: DependencyGraph, keep: dict[int, torch.Tensor]) -> PrunePlan:
    """Expand kept *units* per group id into kept *indices* per parameter slot."""
    by_id = {g.id: g for g in graph.groups}
    space_group: dict[int, Group] = {}
    for g in graph.groups:
        for slot, i in g.slots:
            space_group[slot.layout[i].space] = g
    plan = PrunePlan()
    for gid, kept in keep.items():
        g = by_id[gid]
        if not g.prunable:
            raise NetslimError(f"Group {g.name!r} is locked ({g.locked}); it cannot be pruned.")
        if len(kept) < g.size:
            plan.groups.append({"name": g.name, "kind": g.kind, "size": g.size, "kept": int(len(kept))})
            plan.attrs += [
                {"module": a["module"], "attr": a["attr"], "value": int(len(kept)) * a["per_unit"]} for a in g.attrs
            ]
    for slot in graph.slots:
        parts, changed = [], False
        for i, seg in enumerate(slot.layout):
            g = space_group[seg.space]
            units = keep.get(g.id)
            if units is None or len(units) == seg.units:
                units = torch.arange(seg.units)
            else:
                changed = True
            parts.append(unit_indices(slot.layout, i, torch.as_tensor(units, dtype=torch.long).sort().values))
        if changed:
            plan.entries.append(
                {"module": slot.module, "param": slot.param, "dim": slot.dim, "keep": torch.cat(parts).tolist()}
            )
    return plan


# ------------------------------------------------------------------------ apply
def apply_plan(model: nn.Module, plan: PrunePlan, mode: str = "shrink") -> nn.Module:
    """Apply ``plan`` to ``model`` in place; returns the model (``mode``: shrink | mask)."""
    if mode not in ("shrink", "mask"):
        raise bad_param("apply_plan", "mode", "one of 'shrink', 'mask'", mode)
    by_module: dict[str, list[dict]] = {}
    for e in plan.entries:
        by_module.setdefault(e["module"], []).append(e)
    if mode == "mask":
        if plan.drop_layers or plan.drop_modules:
            raise NetslimError("A plan that drops whole blocks cannot be applied as masks; use mode='shrink'.")
        for name, entries in by_module.items():
            _mask_module(get_module(model, name), entries)
        return model
    # Build every new module first: a plan that does not fit raises before the model changes.
    news = {name: _shrunk(get_module(model, name), entries, name) for name, entries in by_module.items()}
    aliases = _tied_aliases(model)
    config = getattr(model, "config", None)
    before = config.to_dict() if hasattr(config, "to_dict") else {}
    for name, new in news.items():
        if isinstance(new, dict):  # a module without shape attributes: its tensors are swapped in place
            _swap_tensors(get_module(model, name), new)
        else:
            replace_module(model, name, new)
    _retie(model, aliases)
    for a in plan.attrs:
        setattr(get_module(model, a["module"]), a["attr"], a["value"])
    if plan.config and hasattr(model, "config"):
        for k, v in plan.config.items():
            setattr(model.config, k, v)
    if plan.drop_layers:
        from .hf import drop_blocks

        drop_blocks(model, plan.drop_layers)
    for name in plan.drop_modules:
        get_module(model, name)  # a plan made for another model fails here, by name
        replace_module(model, name, nn.Identity())
    after = config.to_dict() if hasattr(config, "to_dict") else {}
    # What was done, for netslim.save: the base model + these plans rebuild it (the config
    # values they changed are put back to build the base)
    model.__dict__.setdefault("netslim_plans", []).append(
        {"plan": plan.to_dict(), "config_before": {k: before.get(k) for k in after if after[k] != before.get(k)}}
    )
    return model


def _tied_aliases(model: nn.Module) -> list[tuple[nn.Parameter, list[tuple[str, str]]]]:
    """Parameters known under several names (a tied embedding and LM head): (tensor, [(module, param)])."""
    names: dict[int, tuple[nn.Parameter, list[tuple[str, str]]]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        module, _, param = n.rpartition(".")
        names.setdefault(id(p), (p, []))[1].append((module, param))
    return [v for v in names.values() if len(v[1]) > 1]


def _retie(model: nn.Module, aliases: list[tuple[nn.Parameter, list[tuple[str, str]]]]) -> None:
    """A plan slices a tied tensor through one of its names (e.g. the input embedding's columns of
    a width plan): the other names get the same new tensor, and their modules' sizes follow."""
    for old, names in aliases:
        owners = [(get_module(model, m), p) for m, p in names]
        new = [getattr(mod, p) for mod, p in owners if getattr(mod, p) is not old]
        if not new:
            continue
        for mod, p in owners:
            if getattr(mod, p) is old:
                setattr(mod, p, new[0])
                _sizes_from_weight(mod)


def _sizes_from_weight(module: nn.Module) -> None:
    w = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and w is not None:
        module.out_features, module.in_features = w.shape
    elif isinstance(module, nn.Embedding) and w is not None:
        module.num_embeddings, module.embedding_dim = w.shape


def _mask_module(module: nn.Module, entries: list[dict]) -> None:
    masks: dict[str, torch.Tensor] = {}
    for e in entries:
        t = getattr(module, e["param"])
        if not isinstance(t, nn.Parameter) and e["param"] in dict(module.named_buffers(recurse=False)):
            continue  # running stats: the zeroed affine parameters already silence the channel
        m = masks.setdefault(e["param"], torch.ones_like(t, dtype=torch.bool))
        drop = torch.ones(t.shape[e["dim"]], dtype=torch.bool, device=t.device)
        drop[torch.as_tensor(e["keep"], dtype=torch.long, device=t.device)] = False
        shape = [1] * t.dim()
        shape[e["dim"]] = -1
        m &= ~drop.view(shape)
    for pname, m in masks.items():
        set_mask(module, m, pname)


def _sliced_state(module: nn.Module, entries: list[dict], where: str) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in module.state_dict().items() if "." not in k}
    for e in entries:
        if e["param"] not in state:
            raise NetslimError(f"Prune plan: module {where!r} has no parameter or buffer {e['param']!r}.")
        t = state[e["param"]]
        idx = [int(i) for i in e["keep"]]  # checked in Python: the model may be on the meta device
        if not idx:
            raise NetslimError(f"Prune plan would remove every slice of {where}.{e['param']} (dim {e['dim']}).")
        if max(idx) >= t.shape[e["dim"]] or min(idx) < 0:
            raise NetslimError(
                f"Prune plan does not fit {where}.{e['param']}: index {max(idx)} on dim {e['dim']} "
                f"of shape {tuple(t.shape)} (was it made for another model?)."
            )
        state[e["param"]] = t.index_select(e["dim"], torch.tensor(idx, dtype=torch.long, device=t.device))
    return state


def _swap_tensors(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for k, v in state.items():
        cur = getattr(module, k)
        if isinstance(cur, nn.Parameter):
            setattr(module, k, nn.Parameter(v, requires_grad=cur.requires_grad))
        elif cur is not None:
            setattr(module, k, v)


_OWN_CONSTRUCTOR = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _shrunk_subclass(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A Conv/Linear subclass (e.g. transformers' EfficientNetDepthwiseConv2d) whose constructor
    takes other arguments: a copy with the sliced tensors and its size attributes updated."""
    import copy

    w = state["weight"]
    new = copy.deepcopy(module)
    _swap_tensors(new, state)
    if isinstance(module, nn.Linear):
        new.in_features, new.out_features = w.shape[1], w.shape[0]
    else:
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        new.groups = w.shape[0] if depthwise else module.groups
        new.in_channels, new.out_channels = w.shape[1] * new.groups, w.shape[0]
    return new


def _shrunk(module: nn.Module, entries: list[dict], where: str) -> nn.Module | dict[str, torch.Tensor]:
    state = _sliced_state(module, entries, where)
    w = state.get("weight")
    p = next(iter(module.parameters()), None)
    kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    if type(module) not in _OWN_CONSTRUCTOR and isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
        return _shrunk_subclass(module, state)
    if isinstance(module, nn.Embedding):  # a width plan's columns (subclasses scale or offset: copy them)
        import copy

        new = copy.deepcopy(module)
        _swap_tensors(new, state)
        _sizes_from_weight(new)
        return new
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        groups = w.shape[0] if depthwise else module.groups
        new = type(module)(
            w.shape[1] * groups,
            w.shape[0],
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups,
            module.bias is not None,
            module.padding_mode,
            **kw,
        )
    elif isinstance(module, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], module.bias is not None, **kw)
    elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        n = state["running_mean"].shape[0] if "running_mean" in state else w.shape[0]
        new = type(module)(n, module.eps, module.momentum, module.affine, module.track_running_stats, **kw)
    elif isinstance(module, nn.LayerNorm):
        new = nn.LayerNorm(w.shape[0], module.eps, module.elementwise_affine, module.bias is not None, **kw)
    elif type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D: weight (in, out)
        new = type(module)(w.shape[1], w.shape[0])
        new.to(**kw)
    else:
        return state  # a module without shape attributes (e.g. an RMSNorm): sliced in place later
    try:
        new.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a plan whose indices fit but whose slices disagree with each other
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise NetslimError(f"Prune plan does not fit module {where!r}: {detail}") from None
    new.train(module.training)
    for (_n1, p1), (_, p2) in zip(module.named_parameters(), new.named_parameters()):
        p2.requires_grad_(p1.requires_grad)
    return new
