"""The searches behind the recipe steps, callable from Python and the benchmarks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from .allocate import UnreachableBudget, greedy_allocate, knapsack, repair
from .channels import ChannelSpace
from .evaluate import Subset, accuracy
from .options import ChannelSpaceOptions, TrialOptions
from .sensitivity import channel_sensitivity, default_cache_dir
from .trials import TrialRunner


def make_space(
    model: nn.Module,
    task,
    opts: ChannelSpaceOptions,
    target: str = "macs",
    latency_batch: int = 1,
    out_dir: Path | None = None,
) -> ChannelSpace:
    latency = None
    if target == "latency":
        from .latency import LatencyTable

        latency = LatencyTable(default_cache_dir() / "latency_table.json", batch_size=latency_batch, threads=1)
    return ChannelSpace(
        model,
        task.example_inputs(max(1, latency_batch)),
        options=opts.ratios,
        criterion=opts.criterion,
        min_keep_ratio=opts.min_keep_ratio,
        round_to=opts.round_to,
        exclude=opts.exclude,
        metric=target,
        latency=latency,
    )


def make_runner(
    fn, shared: Any, trials: TrialOptions, *, seed: int, out_dir: Path | None, fingerprint: Any
) -> TrialRunner:
    log_path = Path(out_dir) / trials.log if (out_dir is not None and trials.log) else None
    return TrialRunner(
        fn,
        shared,
        seed=seed,
        backend=trials.backend,
        address=trials.address,
        workers=trials.workers,
        threads=trials.threads,
        retries=trials.retries,
        log_path=log_path,
        fingerprint=fingerprint,
    )


def sensitivity_for(space: ChannelSpace, val: Subset, *, seed: int, out_dir: Path | None, shared_cache: bool = True):
    cache = default_cache_dir() if shared_cache or out_dir is None else Path(out_dir)
    table = channel_sensitivity(space, lambda m: accuracy(m, val), eval_key=f"val:{len(val)}:{seed}", cache_dir=cache)
    if out_dir is not None:
        Path(out_dir, "sensitivity.md").write_text(table.to_markdown() + "\n")
        table.plot(Path(out_dir) / "sensitivity.png")
    return table


def allocate_from_sensitivity(space: ChannelSpace, table, budget: float, strategy: str = "knapsack") -> dict:
    """Option index per group: exact knapsack on the separable bound, repaired on the exact cost;
    greedy on the exact cost when the metric has no separable form (latency) or ``strategy='greedy'``."""
    losses = {n: table.losses(n) for n in space.names}
    cost = lambda c: space.cost(space.policy(c))  # noqa: E731
    if strategy == "knapsack" and space.metric != "latency":
        sep, fixed = space.separable_options()
        opts = {n: list(zip(sep[n], losses[n])) for n in space.names}
        try:
            choice = knapsack(opts, budget, fixed=fixed)
            return repair(choice, losses, cost, budget)
        except UnreachableBudget:
            # The bound is loose when neighbours differ; the exact cost may still fit.
            pass
    return greedy_allocate(losses, cost, budget)


def channel_policy(space: ChannelSpace, task, cfg, *, seed: int, out_dir: Path | None) -> tuple[dict, dict]:
    """The ``search_channels`` search: returns (policy, info)."""
    from .cem import cem_search, policy_accuracy

    t0 = time.perf_counter()
    val = Subset.from_task(task, "val", cfg.val_samples, seed=seed)
    budget = cfg.budget * space.dense_cost()
    info: dict[str, Any] = {
        "strategy": cfg.strategy,
        "target": cfg.target,
        "budget_share": cfg.budget,
        "budget": budget,
    }
    table = None  # the sensitivity curves: the knapsack's input, or the CEM agent's fill-back order
    if cfg.strategy != "cem" or cfg.fill_back == "sensitivity":
        table = sensitivity_for(space, val, seed=seed, out_dir=out_dir, shared_cache=cfg.sensitivity_cache == "shared")
    if cfg.strategy == "cem":
        fp = {
            "search": "cem",
            "options": list(space.options),
            "budget": budget,
            "target": cfg.target,
            "val": len(val),
            "population": cfg.population,
            "generations": cfg.generations,
            "seed": seed,
        }
        losses = None
        if cfg.fill_back == "sensitivity":
            fp["fill_back"] = "sensitivity"  # (absent for 'none': logs of searches without fill-back still resume)
            losses = {n: table.losses(n) for n in space.names}
            info["fill_back"] = "sensitivity"
        runner = make_runner(
            policy_accuracy, {"space": space, "val": val}, cfg.trials, seed=seed, out_dir=out_dir, fingerprint=fp
        )
        res = cem_search(
            space,
            runner,
            budget,
            generations=cfg.generations,
            population=cfg.population,
            elite=cfg.elite,
            seed=seed,
            fill_back=losses,
        )
        policy = res.best
        info.update(
            {
                "reward": res.best_reward,
                "history": res.history,
                "trials": runner.next_index,
                "resumed_trials": runner.resumed,
                "retried_trials": runner.retried,
            }
        )
        points = [
            {"label": f"g{h['generation']}", "cost": c, "accuracy": r}
            for h in res.history
            for c, r in zip(h["costs"], h["rewards"])
        ]
        _pareto_outputs(points, out_dir, space.metric)
    else:
        choice = allocate_from_sensitivity(space, table, budget, cfg.strategy)
        policy = space.policy(choice)
        info.update(
            {
                "predicted_loss": sum(table.losses(n)[k] for n, k in choice.items()),
                "sensitivity_baseline": table.baseline,
            }
        )
    if space.metric == "latency" and space.latency is not None:
        space.latency.save()
    info["seconds"] = time.perf_counter() - t0
    return policy, info


def netadapt_policy(space: ChannelSpace, task, cfg, *, seed: int, out_dir: Path | None):
    """The ``netadapt`` search: returns (policy, info, model)."""
    from .netadapt import candidate_trial, netadapt

    t0 = time.perf_counter()
    train = Subset.from_task(task, "train", cfg.train_samples, seed=seed)
    val = Subset.from_task(task, "val", cfg.val_samples, seed=seed + 1)
    budget = cfg.budget * space.dense_cost()
    fp = {
        "search": "netadapt",
        "budget": budget,
        "target": cfg.target,
        "step": cfg.step,
        "seed": seed,
        # the candidates' short fine-tune under its keys of before issue 24 (resumes those trial logs)
        "granularity": cfg.granularity,
        "finetune_steps": cfg.candidate_steps,
        "lr": cfg.candidate_lr,
        "train": len(train),
        "val": len(val),
    }
    runner = make_runner(candidate_trial, None, cfg.trials, seed=seed, out_dir=out_dir, fingerprint=fp)
    res = netadapt(
        space,
        runner,
        budget,
        step=cfg.step,
        granularity=cfg.granularity,
        train=train,
        val=val,
        candidate_steps=cfg.candidate_steps,
        candidate_lr=cfg.candidate_lr,
    )
    if space.latency is not None:
        space.latency.save()
    points = [
        {"label": f"it{h['iteration']}:{c['group']}", "cost": space.cost(_abs(space, h, c)), "accuracy": c["accuracy"]}
        for h in res.history
        for c in h["candidates"]
    ]
    _pareto_outputs(points, out_dir, space.metric)
    info = {
        "strategy": "netadapt",
        "target": cfg.target,
        "budget_share": cfg.budget,
        "budget": budget,
        "iterations": len(res.history),
        "history": res.history,
        "trials": runner.next_index,
        "resumed_trials": runner.resumed,
        "retried_trials": runner.retried,
        "seconds": time.perf_counter() - t0,
    }
    return res.policy, info, res.model


def _abs(space: ChannelSpace, h: dict, cand: dict) -> dict[str, float]:
    """Absolute policy of one NetAdapt candidate (the iteration's chosen state plus its cut)."""
    pol = dict(h.get("policy_before", {}))
    size = next(g.size for g in space.groups if g.name == cand["group"])
    pol[cand["group"]] = 1 - cand["keep"] / size
    return pol


def _pareto_outputs(points: list[dict], out_dir: Path | None, metric: str) -> None:
    if out_dir is None or not points:
        return
    from .report import pareto_markdown, pareto_plot

    Path(out_dir, "pareto.md").write_text(pareto_markdown(points, "cost", "accuracy") + "\n")
    pareto_plot({"candidates": points}, Path(out_dir) / "pareto.png", cost="cost", title=f"accuracy vs {metric}")
