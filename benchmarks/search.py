"""Issue 9 benchmarks: searched per-group channel policies vs uniform / global ranking, Ray
serial-vs-parallel, NetAdapt / CEM on MobileNetV2 latency, mixed precision from sensitivity.

Every part appends to benchmarks/results/search.json (entry per part, with command, load
average, date) and is short enough for one queued job (<= 10 min on 2 cores):

    python benchmarks/search.py prep            # ResNet-20: sensitivity, knapsack + CEM policies at 2x MACs
    python benchmarks/search.py finetune --seed 0   # (and 1, 2) the same fine-tuning for every policy
    python benchmarks/search.py ray             # CEM search serially and on 2 Ray workers
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("SEARCH_RESULTS", ROOT / "benchmarks" / "results" / "search.json"))
OUT = Path(os.environ.get("SEARCH_OUT", ROOT / "benchmarks" / "results" / "search"))


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def save_part(key: str, data: dict) -> None:
    from netslim.core.serialize import atomic_write

    res = load_results()
    data = {**data, "command": "python benchmarks/search.py " + " ".join(sys.argv[1:]),
            "load_avg": os.getloadavg(), "date": datetime.datetime.utcnow().isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
                       f"torch {torch.__version__}"}
    res[key] = data
    text = json.dumps(res, indent=1, default=float)
    atomic_write(RESULTS, lambda tmp: Path(tmp).write_text(text))


def resnet20_setup(seed: int = 0):
    from netslim.recipe.runner import open_model
    from netslim.search.api import make_space
    from netslim.search.options import ChannelSpaceOptions
    from netslim.train.tasks import get_task

    model, _ = open_model("resnet20")
    task = get_task("fashion-mnist", seed=seed)
    space = make_space(model, task, ChannelSpaceOptions(), "macs")
    return model, task, space


def structured_policy_model(model, task, scope: str, target: float):
    """Uniform or global-ranking pruning at a MAC target, by the structured engine itself."""
    from netslim.prune.structured import prune_channels

    m, rep = prune_channels(copy.deepcopy(model), task.example_inputs(1), target_macs=target, criterion="l2",
                            scope=scope)
    return m, {"ratio": rep.get("ratio"), "groups": rep["groups"]}


def cmd_prep(args) -> None:
    from netslim.search.api import allocate_from_sensitivity, channel_policy, sensitivity_for
    from netslim.search.evaluate import Subset
    from netslim.search.steps import SearchChannelsConfig
    from netslim.search.options import TrialOptions
    from netslim.prune.structured import total_macs

    torch.set_num_threads(2)
    model, task, space = resnet20_setup()
    OUT.mkdir(parents=True, exist_ok=True)
    x = task.example_inputs(1)
    dense = space.dense_cost()
    t0 = time.perf_counter()
    val = Subset.from_task(task, "val", args.val, seed=0)
    table = sensitivity_for(space, val, seed=0, out_dir=OUT)
    t_sens = time.perf_counter() - t0
    budget = args.budget * dense
    t0 = time.perf_counter()
    knap = space.policy(allocate_from_sensitivity(space, table, budget, "knapsack"))
    t_knap = time.perf_counter() - t0
    cfg = SearchChannelsConfig(budget=args.budget, strategy="cem", val_samples=args.val, population=args.population,
                               generations=args.generations, trials=TrialOptions(threads=2, log="cem_trials.jsonl"))
    cem, info = channel_policy(space, task, cfg, seed=0, out_dir=OUT)
    policies = {"knapsack": knap, "cem": cem}
    rows = {}
    for name, pol in policies.items():
        m = space.apply(pol)
        rows[name] = {"policy": pol, "macs": total_macs(m, x), "macs_share": total_macs(m, x) / dense,
                      "test_acc_no_ft": task.evaluate(m)["accuracy"]}
    for scope in ("uniform", "global"):
        m, rep = structured_policy_model(model, task, scope, args.budget)
        rows[scope] = {**rep, "macs": total_macs(m, x), "macs_share": total_macs(m, x) / dense,
                       "test_acc_no_ft": task.evaluate(m)["accuracy"]}
    save_part("resnet20_prep", {"budget_share": args.budget, "dense_macs": dense, "val_samples": args.val,
                                "sensitivity_seconds": t_sens, "knapsack_seconds": t_knap,
                                "cem": {k: v for k, v in info.items() if k != "history"},
                                "cem_history": [{k: h[k] for k in ("generation", "best", "mean")}
                                                for h in info["history"]],
                                "sensitivity": table.to_dict(), "policies": rows})
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "policy"} for k, v in rows.items()}, indent=1))


def cmd_finetune(args) -> None:
    from netslim.prune.structured import total_macs
    from netslim.train.loop import FinetuneConfig, fit
    from netslim.train.tasks import get_task

    torch.set_num_threads(2)
    prep = load_results()["resnet20_prep"]
    model, _, space = resnet20_setup()
    task = get_task("fashion-mnist", seed=args.seed)
    x = task.example_inputs(1)
    ft = FinetuneConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, max_steps=args.max_steps)
    out = {}
    for name in args.policies.split(","):
        if name in ("uniform", "global"):
            m, _ = structured_policy_model(model, task, name, prep["budget_share"])
        else:
            m = space.apply(prep["policies"][name]["policy"])
        t0 = time.perf_counter()
        summary = fit(m, task, ft)
        out[name] = {"test_acc": task.evaluate(m)["accuracy"], "macs": total_macs(m, x),
                     "best_val": summary.get("best_accuracy"), "finetune_seconds": time.perf_counter() - t0}
        print(name, out[name], flush=True)
    save_part(f"resnet20_ft_seed{args.seed}", {"finetune": ft.to_dict(), "results": out})


def cmd_ray(args) -> None:
    from netslim.search.api import channel_policy
    from netslim.search.options import TrialOptions
    from netslim.search.steps import SearchChannelsConfig

    model, task, space = resnet20_setup()
    out = {}
    for backend in ("serial", "ray"):
        cfg = SearchChannelsConfig(budget=0.5, strategy="cem", val_samples=args.val, population=args.population,
                                   generations=args.generations,
                                   trials=TrialOptions(backend=backend, workers=2, threads=1, log=None))
        t0 = time.perf_counter()
        policy, info = channel_policy(space, task, cfg, seed=args.seed, out_dir=None)
        out[backend] = {"wall_seconds": time.perf_counter() - t0, "best_policy": policy, "reward": info["reward"],
                        "trials": info["trials"],
                        "rewards": [r for h in info["history"] for r in h["rewards"]]}
        print(backend, out[backend]["wall_seconds"], info["reward"], flush=True)
    out["same_best_policy"] = out["serial"]["best_policy"] == out["ray"]["best_policy"]
    out["same_rewards"] = out["serial"]["rewards"] == out["ray"]["rewards"]
    save_part("ray_serial_vs_2workers", {"population": args.population, "generations": args.generations,
                                         "val_samples": args.val, "seed": args.seed, **out})


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prep")
    a.add_argument("--budget", type=float, default=0.5)
    a.add_argument("--val", type=int, default=1000)
    a.add_argument("--population", type=int, default=16)
    a.add_argument("--generations", type=int, default=5)
    a = sub.add_parser("finetune")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--epochs", type=int, default=1)
    a.add_argument("--max-steps", type=int, default=None)
    a.add_argument("--lr", type=float, default=0.01)
    a.add_argument("--policies", default="knapsack,cem,uniform,global")
    a = sub.add_parser("ray")
    a.add_argument("--val", type=int, default=500)
    a.add_argument("--population", type=int, default=8)
    a.add_argument("--generations", type=int, default=3)
    a.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    {"prep": cmd_prep, "finetune": cmd_finetune, "ray": cmd_ray}[args.cmd](args)


if __name__ == "__main__":
    main()
