"""Architecture search over the zoo's CNN families: evolutionary, multi-objective, Pareto set.

Search space (``families``): ``resnet`` (CIFAR ResNet: depth 6n+2, stem width) and
``mbnet`` (MobileNetV2-style: width multiplier, expansion ratio, depthwise kernel size,
repeats per stage), each knob a list of allowed values. Cost model: MACs and parameters
(counted on the built network) or measured batch-1 latency.

**Proxy** (as in most efficient-NAS work on a budget): a candidate is trained from scratch
for ``train_steps`` SGD steps on a ``train_samples`` subset and scored on a validation
subset — it ranks architectures, it is not their final accuracy. The chosen architecture is
then trained for real by the recipe's next step.

Evolution (NSGA-II-lite): an initial random population; each generation keeps the best
half by (Pareto rank on accuracy vs cost, then accuracy) and fills the rest with mutations
(one knob moved to a neighbouring value, or the family switched) of the survivors.
Candidates are trials: parallel on Ray, recorded, resumable.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator
from torch import nn

from netslim.api import method_function
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.measure.counts import count_params, macs_per_layer
from netslim.models import build_model
from netslim.train.loop import TrainConfig, fit

from . import arch as _arch  # noqa: F401  (registers the ``mbnet`` zoo model)
from .evaluate import Subset, accuracy, short_finetune
from .options import TrialOptions
from .report import pareto

DEFAULT_FAMILIES: dict[str, dict[str, list]] = {
    "resnet": {"depth": [8, 14, 20], "width": [8, 12, 16]},
    "mbnet": {"width_mult": [0.35, 0.5, 0.75, 1.0], "expansion": [2, 4, 6], "kernel": [3, 5], "depth": [1, 2]},
}
_ZOO = {"resnet": "resnet20", "mbnet": "mbnet"}


class NASSpace:
    def __init__(self, families: dict[str, dict[str, list]]):
        if not families:
            raise NetslimError(f"The architecture search space is empty; families: {', '.join(DEFAULT_FAMILIES)}.")
        for fam, knobs in families.items():
            if fam not in _ZOO:
                raise NetslimError(f"Unknown family {fam!r}; allowed values: {', '.join(_ZOO)}.")
            for k, vals in knobs.items():
                if not vals:
                    raise NetslimError(f"The search range of {fam}.{k} is empty: give at least one value.")
        self.families = {f: {k: list(v) for k, v in knobs.items()} for f, knobs in families.items()}
        self.names = sorted(self.families)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        fam = self.names[int(rng.integers(len(self.names)))]
        return {"family": fam, **{k: v[int(rng.integers(len(v)))] for k, v in self.families[fam].items()}}

    def mutate(self, geno: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if len(self.names) > 1 and rng.random() < 0.15:
            return self.sample(rng)
        knobs = self.families[geno["family"]]
        key = sorted(knobs)[int(rng.integers(len(knobs)))]
        vals = knobs[key]
        i = vals.index(geno[key])
        j = min(len(vals) - 1, max(0, i + (1 if rng.random() < 0.5 else -1)))
        return {**geno, key: vals[j]}

    @staticmethod
    def build(geno: dict[str, Any]) -> nn.Module:
        kwargs = {k: v for k, v in geno.items() if k != "family"}
        return build_model(_ZOO[geno["family"]], **kwargs)


def describe(model: nn.Module, example) -> dict[str, int]:
    return {"macs": int(sum(macs_per_layer(model, example).values())), "params": count_params(model)}


def proxy_trial(shared: dict, params: dict, seed: int) -> dict:
    """Train the architecture from scratch on the proxy budget; score on the validation subset."""
    import torch

    torch.manual_seed(seed)
    model = NASSpace.build(params)
    short_finetune(
        model, shared["train"], steps=shared["steps"], lr=shared["lr"], batch_size=shared["batch_size"], seed=seed
    )
    return {"accuracy": accuracy(model, shared["val"]), **describe(model, shared["val"].x[:1])}


def evolve(
    space: NASSpace,
    runner,
    *,
    population: int = 8,
    generations: int = 3,
    seed: int = 0,
    cost: str = "macs",
    latency_fn=None,
) -> list[dict[str, Any]]:
    """All evaluated candidates (genotype, accuracy, macs, params[, latency_ms]) in trial order."""
    if population < 2 or generations < 1:
        raise NetslimError(f"NAS needs population >= 2 and generations >= 1; got {population}, {generations}.")
    rng = np.random.default_rng(seed)
    seen: dict[str, dict] = {}
    key = lambda g: repr(sorted(g.items()))  # noqa: E731
    points: list[dict[str, Any]] = []

    def evaluate(genos: list[dict], gen: int) -> None:
        results = runner.run(genos)
        for g, r in zip(genos, results):
            p = {"genotype": g, **r, "generation": gen}
            if latency_fn is not None:
                p["latency_ms"] = latency_fn(g)
            seen[key(g)] = p
            points.append(p)

    init: list[dict] = []
    for _ in range(population * 20):
        if len(init) >= population:
            break
        g = space.sample(rng)
        if key(g) not in {key(x) for x in init}:
            init.append(g)
    evaluate(init, 0)
    for gen in range(1, generations):
        ranked = _rank(points, cost)
        parents = ranked[: max(1, population // 2)]
        children: list[dict] = []
        for _ in range(population * 20):
            if len(children) >= population - len(parents):
                break
            g = space.mutate(parents[int(rng.integers(len(parents)))]["genotype"], rng)
            if key(g) not in seen and key(g) not in {key(c) for c in children}:
                children.append(g)
        if not children:
            break  # the space is exhausted
        evaluate(children, gen)
    return points


def _rank(points: list[dict], cost: str) -> list[dict]:
    """Non-dominated sorting (accuracy up, cost down), then accuracy; deterministic."""
    rest, out = list(points), []
    while rest:
        front = pareto(rest, cost, "accuracy")
        ids = {id(p) for p in front}
        out += sorted(front, key=lambda p: (-p["accuracy"], p[cost]))
        rest = [p for p in rest if id(p) not in ids]
    return out


class NASConfig(MethodConfig):
    """Evolutionary architecture search (proxy-trained candidates); the model becomes the chosen architecture."""

    method = "nas"
    families: dict[str, dict[str, list]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_FAMILIES.items()}
    )
    cost: Literal["macs", "params", "latency"] = "macs"
    max_cost: float | None = Field(None, gt=0, description="choose the most accurate Pareto point under this cost")
    population: int = Field(8, ge=2)
    generations: int = Field(3, ge=1)
    train_samples: int = Field(5000, ge=10)
    train_steps: int = Field(200, ge=1, description="proxy: SGD steps from scratch per candidate")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    val_samples: int = Field(1000, ge=10)
    trials: TrialOptions = TrialOptions()
    train: TrainConfig | None = Field(None, description="full training of the chosen architecture")

    @field_validator("families")
    @classmethod
    def _space(cls, v):
        NASSpace(v)  # empty families / ranges and unknown names are errors here
        return v

    @classmethod
    def example(cls) -> NASConfig:
        return cls(
            families={"resnet": {"depth": [8], "width": [4, 8]}},
            population=2,
            generations=1,
            train_samples=32,
            train_steps=1,
            val_samples=16,
            trials=TrialOptions(log=None),
        )


def nas_search(task, cfg: NASConfig, *, seed: int, out_dir=None) -> dict[str, Any]:
    from .api import make_runner

    t0 = time.perf_counter()
    space = NASSpace(cfg.families)
    shared = {
        "train": Subset.from_task(task, "train", cfg.train_samples, seed=seed),
        "val": Subset.from_task(task, "val", cfg.val_samples, seed=seed + 1),
        "steps": cfg.train_steps,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
    }
    fp = {"search": "nas", **cfg.model_dump(mode="json", exclude={"trials", "train"}), "seed": seed}
    runner = make_runner(proxy_trial, shared, cfg.trials, seed=seed, out_dir=out_dir, fingerprint=fp)
    latency_fn = _latency_fn(task) if cfg.cost == "latency" else None
    key = "latency_ms" if cfg.cost == "latency" else cfg.cost
    points = evolve(
        space,
        runner,
        population=cfg.population,
        generations=cfg.generations,
        seed=seed,
        cost=key,
        latency_fn=latency_fn,
    )
    front = pareto(points, key, "accuracy")
    eligible = [p for p in front if cfg.max_cost is None or p[key] <= cfg.max_cost]
    if not eligible:
        lowest = min(p[key] for p in points)
        raise NetslimError(
            f"No searched architecture meets max_cost={cfg.max_cost:,.6g} ({key}); the cheapest "
            f"evaluated costs {lowest:,.6g}. Raise max_cost or widen the ranges toward smaller nets."
        )
    best = max(eligible, key=lambda p: (p["accuracy"], -p[key]))
    return {
        "points": points,
        "pareto": front,
        "best": best,
        "cost_key": key,
        "trials": runner.next_index,
        "resumed_trials": runner.resumed,
        "retried_trials": runner.retried,
        "seconds": time.perf_counter() - t0,
    }


def _latency_fn(task):
    from netslim.measure.latency import measure_latency

    cache: dict[str, float] = {}
    x = task.example_inputs(1)

    def fn(geno: dict) -> float:
        k = repr(sorted(geno.items()))
        if k not in cache:
            cache[k] = measure_latency(NASSpace.build(geno), x, repeats=30, threads=1).median_ms
        return cache[k]

    return fn


@register(NASConfig)
def run_nas(model, cfg: NASConfig, ctx):
    import torch

    from netslim.core.serialize import save

    from .report import pareto_markdown, pareto_plot, write_recipe
    from .steps import search_dir, write_json

    out = search_dir(ctx)
    res = nas_search(ctx.task, cfg, seed=ctx.seed, out_dir=out)
    key = res["cost_key"]
    pts = [{"label": f"{p['genotype']}", **p} for p in res["points"]]
    (out / "pareto.md").write_text(pareto_markdown(pts, key, "accuracy") + "\n")
    pareto_plot({"searched (proxy)": pts}, out / "pareto.png", cost=key, title=f"NAS: proxy accuracy vs {key}")
    torch.manual_seed(ctx.seed)
    chosen = NASSpace.build(res["best"]["genotype"])
    arch_path = save(
        chosen,
        out / "best_arch.safetensors",
        {"model": _ZOO[res["best"]["genotype"]["family"]], "dataset": ctx.info.get("dataset")},
    )
    steps = [cfg.train.to_dict()] if cfg.train is not None else [{"method": "train"}]
    write_recipe(
        out / "best_recipe.yaml",
        {
            "name": "nas-best",
            "description": f"architecture {res['best']['genotype']} chosen by the nas step, trained from scratch",
            "model": str(arch_path),
            "dataset": ctx.info.get("dataset"),
            "steps": steps,
        },
    )
    write_json(out / "nas.json", {k: v for k, v in res.items()})
    if cfg.train is not None:
        summary = fit(chosen.to(ctx.device), ctx.task, cfg.train)
        res["train"] = {k: v for k, v in summary.items() if k != "history"}
    ctx.notes[cfg.method] = {k: v for k, v in res.items() if k != "points"}
    return chosen


architecture_search = method_function(
    NASConfig, "architecture_search"
)  # architecture_search(model, data, max_cost=2e6)
