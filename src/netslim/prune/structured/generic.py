"""The generic dependency graph, checked: any model, any Hugging Face family.

:func:`structured_graph` is what every structured method plans on: ``torch.fx`` for models it
traces (the zoo, most user CNNs), else ``torch.export`` (:mod:`netslim.core.trace`: every
Hugging Face model, user models with control flow fx cannot follow). Head groups found from
the computation (:mod:`netslim.core.heads`) are offered only after :func:`verify_heads` has
checked, on the inputs the attention got in a real forward pass, that removing a head (and
updating the counts the module keeps, when it keeps any) gives what zeroing it gives.

:func:`nothing_removed` says why a structured step removed nothing — the locked groups and
their reasons, the ratio that rounds to zero, the exclusions — so no step is a silent no-op.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.graph import DependencyGraph, trace_graph

from .plan import PrunePlan, apply_plan, plan_from_keep

log = logging.getLogger(__name__)


def is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "model_type")


def example_inputs_for(model: nn.Module) -> Any:
    """One small batch a Hugging Face model accepts (random token ids or pixels), for tracing."""
    if not is_hf(model):
        raise NetslimError(
            f"Structured pruning of a {type(model).__name__} needs example inputs (one batch) to trace it."
        )
    cfg = model.config
    name = getattr(model, "main_input_name", "input_ids")
    g = torch.Generator().manual_seed(0)
    device = next(iter(model.parameters())).device
    if name == "pixel_values":
        size = getattr(cfg, "image_size", 64)
        size = size if isinstance(size, (tuple, list)) else (size, size)
        x = torch.randn(2, getattr(cfg, "num_channels", 3), int(size[0]), int(size[1]), generator=g)
        return {"pixel_values": x.to(device)}
    vocab = int(getattr(cfg, "vocab_size", None) or 256)
    return {name: torch.randint(0, min(vocab, 1000), (2, 8), generator=g).to(device)}


def structured_graph(model: nn.Module, example_inputs: Any = None, exclude=()) -> DependencyGraph:
    """The dependency graph every structured method plans on (see the module doc); modules
    ``exclude`` selects are traced as opaque layers where fx traces the model."""
    if example_inputs is None:
        example_inputs = example_inputs_for(model)
    graph = trace_graph(model, example_inputs, leaves=tuple(exclude or ()))
    if graph.kind == "export":
        verify_heads(model, graph)
    return graph


def _first_tensor(y: Any) -> torch.Tensor | None:
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, (tuple, list)):
        return next((t for t in (_first_tensor(v) for v in y) if t is not None), None)
    if hasattr(y, "to_tuple"):
        return _first_tensor(y.to_tuple())
    return None


def _relative(plan: PrunePlan, owner: str) -> PrunePlan:
    cut = len(owner) + 1 if owner else 0
    return PrunePlan(
        [{**e, "module": e["module"][cut:]} for e in plan.entries],
        attrs=[{**a, "module": a["module"][cut:]} for a in plan.attrs],
    )


@torch.no_grad()
def _removal_equals_zeroing(model: nn.Module, graph: DependencyGraph, g, attrs: list[dict]) -> str | None:
    owner = g.name
    module = model.get_submodule(owner) if owner else model
    args, kwargs = graph.calls[owner]
    saved, g.attrs = g.attrs, attrs
    try:
        plan = _relative(plan_from_keep(graph, {g.id: torch.arange(1, g.size)}), owner)
    finally:
        g.attrs = saved
    if any(e["module"] is None for e in plan.entries):
        return "its slices reach outside the attention module"
    try:
        shrunk = apply_plan(copy.deepcopy(module), plan, "shrink")
        masked = apply_plan(copy.deepcopy(module), PrunePlan(plan.entries), "mask")
        y1, y0 = _first_tensor(shrunk(*args, **kwargs)), _first_tensor(masked(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - user/library forward code: any failure means "not provably safe"
        return f"its forward fails with one head fewer ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if y0 is None or y1 is None or y0.shape != y1.shape:
        return "its output changes shape with one head fewer"
    if not torch.allclose(y0, y1, atol=1e-5, rtol=1e-4):
        return "removing a head does not equal zeroing it (its forward does not follow the head count)"
    return None


def verify_heads(model: nn.Module, graph: DependencyGraph) -> None:
    """Lock every head group for which removing one head differs from zeroing it; keep the
    count attributes only where the forward needs them."""
    for g in graph.groups:
        if g.kind != "head" or not g.prunable:
            continue
        if g.size < 2:
            g.locked = "a single head group"
        elif g.name not in graph.calls:
            g.locked = "no forward call of its attention module was seen"
        else:
            reason = None
            for attrs in [g.attrs, []] if g.attrs else [[]]:
                reason = _removal_equals_zeroing(model, graph, g, attrs)
                if reason is None:
                    g.attrs = attrs
                    break
            g.locked = reason
        if g.locked:
            graph.skipped.append({"name": g.name, "reason": f"attention heads kept: {g.locked}"})


def nothing_removed(
    graph: DependencyGraph, what: str, kinds: tuple[str, ...] | None, ratio: float, excluded: set[int]
) -> list[dict[str, str]]:
    """Why a step that should remove ``what`` removed nothing: ``skipped`` entries."""
    mine = [g for g in graph.groups if kinds is None or g.kind in kinds]
    free = [g for g in mine if g.prunable and g.id not in excluded]
    if not mine:
        found = "no attention" if kinds == ("head",) else f"no {what}"
        reason = f"{what}: the model has {found} netslim can trace"
        extra = "; ".join(f"{s['name']}: {s['reason']}" for s in graph.skipped[:3])
        return [{"name": "(model)", "reason": reason + (f" ({extra})" if extra else "")}]
    if free:
        sizes = "/".join(str(s) for s in sorted({g.size for g in free}))
        unit = {("head",): "head", ("neuron",): "neuron"}.get(kinds or (), "channel" if what == "channels" else "unit")
        return [
            {
                "name": "(model)",
                "reason": f"{what}: ratio {ratio:.3g} removes no {unit}: groups have {sizes} "
                f"{unit}s, too few for that share; raise the ratio",
            }
        ]
    out = []
    if excluded:
        out.append({"name": "(model)", "reason": f"{what}: 'exclude' covers {len(excluded)} group(s)"})
    reasons = Counter(g.locked for g in mine if not g.prunable)
    for reason, n in reasons.most_common(5):
        out.append({"name": "(model)", "reason": f"{what}: {n} group(s) locked: {reason}"})
    return out


def report_empty(skipped: list[dict[str, str]], on_empty: str, what: str) -> None:
    """Say it on the console; with ``on_empty='fail'``, raise."""
    text = "; ".join(s["reason"] for s in skipped)
    if on_empty == "fail":
        raise NetslimError(f"{what} removed nothing (on_empty='fail'): {text}")
    log.warning("%s removed nothing: %s", what, text)
