"""NetAdapt-style iterative search (Yang et al. 2018), on channel groups.

Each iteration lowers the cost target by ``step`` (a share of the dense cost). For every
group, one candidate: remove that group's channels one unit (``granularity`` channels) at a
time until the model's cost meets the iteration's target (groups that cannot reach it even
at their minimum are skipped). Every candidate is pruned from the *current* model (the
survivor of the previous iteration), briefly fine-tuned and scored on a validation subset;
the best one becomes the current model. Iterations stop when the budget is met.

Candidates are trials (:class:`~netslim.search.trials.TrialRunner`): they run in parallel on
Ray and are recorded, so a killed search resumes; on resume the driver rebuilds the chosen
candidate of every finished iteration with the same seed (one short fine-tune each).
Policies are absolute (share of the *original* group removed), so the cost of a candidate is
the cost of that policy on the original model (MACs, params, bytes or a latency table).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from netslim.core.errors import bad_param
from netslim.prune.structured import apply_plan, plan_channels

from .allocate import unreachable
from .evaluate import accuracy, short_finetune
from .trials import run_one


@dataclass
class NetAdaptResult:
    policy: dict[str, float]
    model: nn.Module
    cost: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _kept(policy: dict[str, float], sizes: dict[str, int]) -> dict[str, int]:
    return {n: sizes[n] - int(round(policy.get(n, 0.0) * sizes[n])) for n in sizes}


def candidate_model(shared: dict, params: dict, seed: int) -> nn.Module:
    """The current model with ``params['group']`` cut to ``params['keep']`` channels, briefly fine-tuned."""
    model = copy.deepcopy(shared["current"])
    space = shared["space"]
    size_now = shared["kept"][params["group"]]
    ratio = 1 - params["keep"] / size_now
    plan, _, _ = plan_channels(
        model,
        space.example,
        ratios={params["group"]: ratio},
        criterion=space.criterion,
        min_keep_ratio=1e-6,
        round_to=1,
        exclude=space.exclude,
    )
    apply_plan(model, plan, "shrink")
    return short_finetune(model, shared["train"], steps=shared["candidate_steps"], lr=shared["candidate_lr"], seed=seed)


def candidate_trial(shared: dict, params: dict, seed: int) -> dict:
    return {"accuracy": accuracy(candidate_model(shared, params, seed), shared["val"])}


def netadapt(
    space,
    runner,
    budget: float,
    *,
    step: float = 0.05,
    granularity: int = 0,
    train=None,
    val=None,
    candidate_steps: int = 20,
    candidate_lr: float = 0.01,
    max_iterations: int = 50,
) -> NetAdaptResult:
    """Shrink ``space.model`` until ``space.cost <= budget``; ``runner`` runs :func:`candidate_trial`."""
    if not 0 < step < 1:
        raise bad_param("netadapt", "step", "a float in (0, 1) (share of the dense cost per iteration)", step)
    sizes = {g.name: g.size for g in space.groups}
    floor = {g.name: min(g.size, max(1, math.ceil(g.size * space.min_keep_ratio))) for g in space.groups}
    absolute = lambda kept: {n: 1 - kept[n] / sizes[n] for n in sizes if kept[n] < sizes[n]}  # noqa: E731
    lowest = space.cost(absolute(floor))
    if lowest > budget:
        raise unreachable(budget, lowest, space.metric)
    dense = space.dense_cost()
    kept = dict(sizes)
    current = copy.deepcopy(space.model)
    cost = dense
    history: list[dict[str, Any]] = []
    it = 0
    while cost > budget and it < max_iterations:
        target = max(budget, cost - step * dense)
        cands = []
        for n in space.names:
            unit = granularity or max(1, sizes[n] // 16)
            k = kept[n]
            while k > floor[n]:
                k = max(floor[n], k - unit)
                if space.cost(absolute({**kept, n: k})) <= target:
                    cands.append({"group": n, "keep": k})
                    break
        if not cands:  # no single group reaches the target: take the largest single step instead
            best = min(
                ((space.cost(absolute({**kept, n: floor[n]})), n) for n in space.names if kept[n] > floor[n]),
                default=None,
            )
            if best is None:
                break
            cands = [{"group": best[1], "keep": floor[best[1]]}]
        shared = {
            "space": space,
            "current": current,
            "kept": dict(kept),
            "train": train,
            "val": val,
            "candidate_steps": candidate_steps,
            "candidate_lr": candidate_lr,
        }
        runner.set_shared(shared)
        first = runner.next_index
        results = runner.run(cands)
        i = max(range(len(cands)), key=lambda j: (results[j]["accuracy"], -j))
        choice = cands[i]
        # Rebuild the winner in the driver (same seed and threads as its trial).
        current = run_one(
            lambda s, p, sd: {"model": candidate_model(s, p, sd)},
            shared,
            choice,
            _seed(runner, first + i),
            runner.threads,
        )["model"]
        before = absolute(kept)
        kept[choice["group"]] = choice["keep"]
        cost = space.cost(absolute(kept))
        history.append(
            {
                "iteration": it,
                "target": target,
                "chosen": choice,
                "cost": cost,
                "policy_before": before,
                "accuracy": results[i]["accuracy"],
                "candidates": [{**c, "accuracy": r["accuracy"]} for c, r in zip(cands, results)],
            }
        )
        it += 1
    return NetAdaptResult(absolute(kept), current, cost, history)


def _seed(runner, index: int) -> int:
    from .trials import trial_seed

    return trial_seed(runner.seed, index)
