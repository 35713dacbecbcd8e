"""Recipe steps of policy search: ``search_channels`` and ``netadapt`` (``nas`` lives in :mod:`.nas`).

```yaml
- method: search_channels
  target: macs            # macs | params | bytes | latency
  budget: 0.5             # keep half of the dense cost
  strategy: knapsack      # knapsack (sensitivity curves, exact DP) | greedy | cem (AMC-style agent)
  finetune: {epochs: 1}   # fine-tuning of the shrunk model (a FinetuneConfig, as in every step that trains)
```

Both steps shrink the model physically with the found per-group ratios (the plan goes to
``info["prune_plans"]`` like the ``channels`` step's), and write under ``OUT/search/``: the
sensitivity table and plot, the trial log, ``policy.json``, the Pareto table / plot of the
evaluated candidates and ``best_recipe.yaml`` (a ``channels`` step with these ratios, then the
fine-tuning), which reproduces the policy from the original model.

Both configs are training steps (:class:`~netslim.train.loop.TrainingStep`): the options of the
final fine-tune nest under ``finetune:`` (none by default); a flat ``epochs`` / ``lr`` / ... is
refused naming it. NetAdapt's short fine-tune of every candidate is its own: ``candidate_steps`` SGD steps at
``candidate_lr`` (formerly ``finetune_steps`` / ``lr``, refused naming the new names).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from netslim.api import method_function
from netslim.core.config import register
from netslim.core.serialize import atomic_write
from netslim.train.loop import FinetuneConfig, TrainingStep, fit

from .options import ChannelSpaceOptions, TrialOptions

log = logging.getLogger(__name__)
Target = Literal["macs", "params", "bytes", "latency"]


class SearchChannelsConfig(TrainingStep):
    """Per-group channel ratios meeting a cost budget, chosen from sensitivity curves or by a CEM agent."""

    method = "search_channels"
    target: Target = "macs"
    budget: float = Field(..., gt=0, lt=1, description="share of the dense model's cost to keep")
    strategy: Literal["knapsack", "greedy", "cem"] = "knapsack"
    space: ChannelSpaceOptions = ChannelSpaceOptions()
    val_samples: int = Field(1000, ge=10, description="validation images scoring sensitivity / candidates")
    population: int = Field(16, ge=2, description="cem: policies per generation")
    generations: int = Field(6, ge=1, description="cem: generations")
    elite: float = Field(0.25, gt=0, le=1, description="cem: share of a generation kept as elite")
    fill_back: Literal["sensitivity", "none"] = Field(
        "sensitivity",
        description="cem: after projecting each sampled policy onto the budget, restore channels "
        "to the most sensitive groups (sensitivity curves) until no step back fits; "
        "none: the projection alone (AMC's action clipping), which undershoots",
    )
    latency_batch: int = Field(1, ge=1, description="target latency: batch size of the lookup table")
    sensitivity_cache: Literal["shared", "run"] = Field(
        "shared", description="shared: $NETSLIM_CACHE/search (reused by later searches); run: OUT/search"
    )
    trials: TrialOptions = TrialOptions()
    finetune: FinetuneConfig | None = Field(
        None, description="fine-tuning of the shrunk model (also the last step of best_recipe.yaml); none by default"
    )

    @classmethod
    def example(cls) -> SearchChannelsConfig:
        return cls(
            budget=0.7,
            val_samples=50,
            space=ChannelSpaceOptions(ratios=(0.0, 0.5)),
            trials=TrialOptions(log=None),
            sensitivity_cache="run",
        )


class NetAdaptConfig(TrainingStep):
    """NetAdapt: per iteration, shrink each group until the cost drops by ``step``, fine-tune briefly, keep the best."""

    method = "netadapt"
    renamed: ClassVar[dict[str, str]] = {"finetune_steps": "candidate_steps", "lr": "candidate_lr"}
    target: Target = "latency"
    budget: float = Field(..., gt=0, lt=1, description="share of the dense model's cost to keep")
    step: float = Field(0.05, gt=0, lt=1, description="cost reduction per iteration (share of the dense cost)")
    granularity: int = Field(0, ge=0, description="channels removed at a time (0: 1/16 of the group)")
    space: ChannelSpaceOptions = ChannelSpaceOptions()
    candidate_steps: int = Field(20, ge=0, description="short fine-tune of every candidate (SGD steps)")
    candidate_lr: float = Field(
        0.01, gt=0, description="learning rate of that short fine-tune (the final fine-tune's: finetune.lr)"
    )
    train_samples: int = Field(5000, ge=10)
    val_samples: int = Field(1000, ge=10)
    latency_batch: int = Field(1, ge=1)
    trials: TrialOptions = TrialOptions()
    finetune: FinetuneConfig | None = Field(
        None, description="fine-tuning of the searched model (also the last step of best_recipe.yaml); none by default"
    )

    @classmethod
    def example(cls) -> NetAdaptConfig:
        return cls(
            target="macs",
            budget=0.8,
            step=0.1,
            candidate_steps=1,
            train_samples=20,
            val_samples=20,
            trials=TrialOptions(log=None),
        )


def search_dir(ctx) -> Path:
    d = Path(ctx.out_dir) / "search"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, default=float)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _finish(model, policy: dict[str, float], cfg, ctx, space, info: dict[str, Any], searched=None) -> Any:
    """Apply ``policy`` through the channels plan (or take the ``searched`` model, NetAdapt's
    iteratively pruned one), record it, emit the recipe, fine-tune."""
    from netslim.prune.structured import apply_plan

    from .report import write_recipe

    plan = space.plan(policy)
    if searched is None:
        model = apply_plan(model, plan, "shrink")
        ctx.info.setdefault("prune_plans", []).append(plan.to_dict())
    else:
        model = searched
    out = search_dir(ctx)
    steps: list[dict[str, Any]] = [
        {
            "method": "channels",
            "ratios": {k: round(v, 6) for k, v in policy.items()},
            "criterion": space.criterion,
            "min_keep_ratio": space.min_keep_ratio,
            "round_to": space.round_to,
            "exclude": list(space.exclude),
        }
    ]
    if not policy:  # the budget needs no pruning: keep the recipe valid with a no-op ratio
        steps[0]["ratios"] = {space.names[0]: 0.0}
    if cfg.finetune is not None:
        steps.append(cfg.finetune.to_dict())
    recipe = {
        "name": f"{cfg.method}-best",
        "description": f"per-group channel ratios found by {cfg.method} "
        f"({info.get('strategy', cfg.method)}), {cfg.target} budget {cfg.budget}",
        "model": ctx.info.get("model"),
        "steps": steps,
    }
    info["recipe"] = str(write_recipe(out / "best_recipe.yaml", recipe))
    info.update(
        {
            "policy": policy,
            "cost": space.cost(policy),
            "dense_cost": space.dense_cost(),
            "cost_share": space.cost(policy) / space.dense_cost(),
            "groups": plan.groups,
        }
    )
    write_json(out / "policy.json", info)
    if cfg.finetune is not None:
        summary = fit(model.to(ctx.device), ctx.task, cfg.finetune)
        info["finetune"] = {k: v for k, v in summary.items() if k != "history"}
    ctx.notes[cfg.method] = info
    return model


@register(SearchChannelsConfig)
def run_search_channels(model, cfg: SearchChannelsConfig, ctx):
    from .api import channel_policy, make_space

    space = make_space(model, ctx.task, cfg.space, cfg.target, cfg.latency_batch, search_dir(ctx))
    policy, info = channel_policy(space, ctx.task, cfg, seed=ctx.seed, out_dir=search_dir(ctx))
    return _finish(model, policy, cfg, ctx, space, info)


@register(NetAdaptConfig)
def run_netadapt(model, cfg: NetAdaptConfig, ctx):
    from .api import make_space, netadapt_policy

    space = make_space(model, ctx.task, cfg.space, cfg.target, cfg.latency_batch, search_dir(ctx))
    policy, info, searched = netadapt_policy(space, ctx.task, cfg, seed=ctx.seed, out_dir=search_dir(ctx))
    return _finish(model, policy, cfg, ctx, space, info, searched)


search_channels = method_function(SearchChannelsConfig, "search_channels")  # search_channels(model, data, budget=0.5)
netadapt = method_function(NetAdaptConfig, "netadapt")  # netadapt(model, data, budget=0.5)
