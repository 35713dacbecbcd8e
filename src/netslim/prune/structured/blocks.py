"""Whole residual blocks of CNNs: ``y = f(x) + x`` blocks replaced by the identity.

A residual block whose output has its input's shape can be removed without touching any other
layer: replacing it by ``nn.Identity`` keeps every shape valid (Veit et al. 2016 show residual
networks degrade gracefully when single blocks go). Candidates are found by tracing each module
with ``torch.fx``: its input must reach an addition directly (through identity shortcuts only)
and its output shape must equal its input shape on the example inputs. Which blocks go is either
given by name or chosen as the ones that change their input least (block influence,
1 - cosine(input, output) over channels at every position, the CNN form of ShortGPT's measure).

Depth is the granularity that speeds up small-channel CNNs where width does not: a 16-channel
convolution at 28x28 runs far below the CPU's peak, and cutting its channels to 8 saves little
time, while removing the block saves all of it (see BENCHMARKS.md, issue 4).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from netslim.core.errors import NetslimError, bad_param
from netslim.core.hooks import eval_mode
from netslim.measure.counts import count_params
from netslim.measure.latency import measure_latency

from .plan import PrunePlan, apply_plan

_ADDS = {operator.add, operator.iadd, torch.add}
_PASS = (nn.Identity, nn.Dropout)  # shortcut modules that return their input


def _is_input(node: fx.Node, root: nn.Module, placeholder: fx.Node) -> bool:
    while node is not placeholder:
        if node.op == "call_module" and isinstance(root.get_submodule(node.target), _PASS) and node.args:
            node = node.args[0]
        else:
            return False
    return True


def _adds_its_input(module: nn.Module) -> bool:
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - untraceable modules are simply not candidates
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    for n in graph.nodes:
        is_add = (n.op == "call_function" and n.target in _ADDS) or (
            n.op == "call_method" and n.target in ("add", "add_")
        )
        if is_add and any(isinstance(a, fx.Node) and _is_input(a, module, inputs[0]) for a in n.args[:2]):
            return True
    return False


@torch.no_grad()
def residual_blocks(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the modules that can be replaced by the identity (in the model's order)."""
    shapes: dict[str, tuple[tuple, tuple]] = {}

    def hook(name):
        def fn(module, args, output):
            if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                shapes[name] = (tuple(args[0].shape), tuple(output.shape))

        return fn

    hooks = {
        m: hook(n)
        for n, m in model.named_modules()
        if n and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
    }
    with eval_mode(model, hooks):
        model(example_inputs)
    names = [n for n, (i, o) in shapes.items() if i == o and list(model.get_submodule(n).parameters())]
    return [n for n in names if _adds_its_input(model.get_submodule(n))]


@torch.no_grad()
def mean_influence(model: nn.Module, blocks: Sequence[nn.Module], batches: Iterable[Any], dim: int) -> torch.Tensor:
    """Per block: mean of 1 - cos(block input, block output) along ``dim`` (channels of a CNN,
    hidden size of a transformer) over every other position of ``batches``; low = removable.
    A batch is a tensor, an ``(inputs, target)`` pair or a dict of keyword inputs."""
    sums = torch.zeros(len(blocks))
    counts = torch.zeros(len(blocks))

    def hook(i):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("hidden_states")
            y = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(x.float(), y.float(), dim=dim)
            sums[i] += (1 - cos).sum().cpu()
            counts[i] += cos.numel()

        return fn

    with eval_mode(model, [(blk, hook(i)) for i, blk in enumerate(blocks)], kind="forward_kwargs"):
        for batch in batches:
            if isinstance(batch, dict):
                model(**batch)
            else:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return sums / counts.clamp_min(1)


def residual_block_influence(model: nn.Module, names: Sequence[str], batches: Iterable[Any]) -> torch.Tensor:
    """Per residual block ``names``: 1 - cos(input, output) over channels, averaged over positions."""
    return mean_influence(model, [model.get_submodule(n) for n in names], batches, dim=1)


@torch.no_grad()
def block_costs(model: nn.Module, names: Sequence[str], inputs: Any, repeats: int = 20) -> dict[str, float]:
    """Milliseconds of each block ``names`` alone on the input it receives when ``model`` runs
    ``inputs`` (median of ``repeats`` calls, current threads): what removing it saves."""
    seen: dict[str, torch.Tensor] = {}
    hooks = {n: lambda m, args, n=n: seen.__setitem__(n, args[0].detach().clone()) for n in names}
    with eval_mode(model, hooks, kind="pre"):
        model(inputs)
    return {n: measure_latency(model.get_submodule(n), seen[n], warmup=3, repeats=repeats).median_ms for n in names}


def check_block_choice(
    model: nn.Module, candidates: Sequence[str], count: int | None = None, names: Sequence[str] | None = None
) -> None:
    """``names`` (distinct residual blocks among ``candidates``) or ``count`` (at most as many as
    there are) can be dropped; raises otherwise."""
    if not candidates:
        raise NetslimError(
            f"{type(model).__name__} has no residual block (y = f(x) + x with the input's shape) that can be removed."
        )
    if names is not None:
        bad = [n for n in names if n not in candidates]
        if bad or not names or len(set(names)) != len(names):
            raise bad_param("drop_residual_blocks", "names", f"distinct names among {list(candidates)}", list(names))
    elif not isinstance(count, int) or not 0 < count <= len(candidates):
        raise bad_param(
            "drop_residual_blocks",
            "count",
            f"an int in [1, {len(candidates)}] (removable blocks: {list(candidates)})",
            count,
        )


def drop_residual_blocks(
    model: nn.Module,
    example_inputs: Any,
    count: int | None = None,
    *,
    names: Sequence[str] | None = None,
    batches: Iterable[Any] | None = None,
    by: str = "influence",
    costs: dict[str, float] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Replace ``count`` residual blocks or the blocks ``names`` by the identity, in place;
    returns ``(model, report)`` with the plan.

    ``by="influence"``: the blocks that change their input least on ``batches``;
    ``by="influence_per_ms"``: least influence per millisecond the block costs (``costs``, or
    measured by :func:`block_costs` on the first batch), so that slow blocks go first among
    equally unimportant ones (NetAdapt's idea, for depth)."""
    if by not in ("influence", "influence_per_ms"):
        raise bad_param("drop_residual_blocks", "by", "'influence' or 'influence_per_ms'", by)
    candidates = residual_blocks(model, example_inputs)
    check_block_choice(model, candidates, count, names)
    influence = None
    if names is not None:
        chosen = list(names)
    else:
        if batches is None:
            raise NetslimError("drop_residual_blocks: block influence needs calibration batches (or give 'names').")
        batches = list(batches)
        influence = residual_block_influence(model, candidates, batches)
        score = influence
        if by == "influence_per_ms":
            if costs is None:
                first = batches[0]
                costs = block_costs(model, candidates, first[0] if isinstance(first, (tuple, list)) else first)
            missing = [n for n in candidates if n not in costs]
            if missing:
                raise bad_param(
                    "drop_residual_blocks", "costs", f"a cost in ms for every block of {candidates}", sorted(costs)
                )
            score = influence / torch.tensor([max(float(costs[n]), 1e-9) for n in candidates])
        chosen = [candidates[i] for i in sorted(torch.argsort(score)[:count].tolist())]
    before = count_params(model)
    plan = PrunePlan(drop_modules=chosen)
    apply_plan(model, plan, "shrink")
    return model, {
        "params_before": before,
        "params_after": count_params(model),
        "dropped": chosen,
        "candidates": candidates,
        "plan": plan.to_dict(),
        "skipped": [],
        "influence": None if influence is None else dict(zip(candidates, influence.tolist())),
        "by": by,
        "costs_ms": costs,
    }
