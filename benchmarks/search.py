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
# Torch threads of every part: the job lane's (``/tmp/cpu1`` sets NETSLIM_THREADS=1), else 2.
THREADS = int(os.environ.get("NETSLIM_THREADS", "2"))


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def save_part(key: str, data: dict) -> None:
    import fcntl

    from netslim.core.serialize import atomic_write

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    with open(Path(tempfile.gettempdir()) / "netslim_search_results.lock", "w") as lock:  # parts run as concurrent jobs: read-modify-write locked
        fcntl.flock(lock, fcntl.LOCK_EX)
        _save_part_locked(key, data, atomic_write)


def _save_part_locked(key: str, data: dict, atomic_write) -> None:
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

    torch.set_num_threads(THREADS)
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
                               generations=args.generations, trials=TrialOptions(threads=THREADS, log="cem_trials.jsonl"))
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

    torch.set_num_threads(THREADS)
    prep = load_results()["resnet20_prep"]
    model, _, space = resnet20_setup()
    task = get_task("fashion-mnist", seed=args.seed)
    x = task.example_inputs(1)
    ft = FinetuneConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, max_steps=args.max_steps)
    key = f"resnet20_ft_seed{args.seed}"
    out = load_results().get(key, {}).get("results", {})  # resumable: one policy at a time is saved
    for name in args.policies.split(","):
        if name in out and not args.redo:
            continue
        if name in ("uniform", "global"):
            m, _ = structured_policy_model(model, task, name, prep["budget_share"])
        else:
            m = space.apply(prep["policies"][name]["policy"])
        t0 = time.perf_counter()
        summary = fit(m, task, ft)
        out[name] = {"test_acc": task.evaluate(m)["accuracy"], "macs": total_macs(m, x),
                     "best_val": summary.get("best_accuracy"), "finetune_seconds": time.perf_counter() - t0}
        print(name, out[name], flush=True)
        save_part(key, {"finetune": ft.to_dict(), "threads": THREADS, "results": out})


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


def cmd_mixed(args) -> None:
    """Per-layer weight bits from the KL sensitivity curves (exact knapsack) vs uniform bits, equal size."""
    from netslim.core.selectors import select
    from netslim.quantize.ptq import quantize_weight_rows
    from netslim.recipe.runner import open_model
    from netslim.search.allocate import knapsack
    from netslim.search.sensitivity import bits_sensitivity, default_cache_dir
    from netslim.train.tasks import get_task

    torch.set_num_threads(THREADS)
    model, _ = open_model("resnet20")
    task = get_task("fashion-mnist")
    names = select(model, None, None, types=(torch.nn.Conv2d, torch.nn.Linear))
    sizes = {n: model.get_submodule(n).weight.numel() for n in names}
    choices = [2, 3, 4, 6, 8]
    t0 = time.perf_counter()
    table = bits_sensitivity(model, task.calibration_inputs(256, seed=0), names, choices, cache_dir=default_cache_dir())
    t_sens = time.perf_counter() - t0
    OUT.mkdir(parents=True, exist_ok=True)
    table.plot(OUT / "bits_sensitivity.png")

    def quantized(bits: dict[str, int]):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for n, b in bits.items():
                w = m.get_submodule(n).weight
                q, sc = quantize_weight_rows(w.detach(), b)  # per output channel, symmetric
                w.copy_(q.float() * sc.reshape((-1,) + (1,) * (w.dim() - 1)))
        return m

    rows = {}
    for avg in args.avg_bits:
        budget = avg * sum(sizes.values())
        opts = {n: [(b * sizes[n], table.losses(n)[i]) for i, b in enumerate(choices)] for n in names}
        pick = knapsack(opts, budget)
        bits = {n: choices[k] for n, k in pick.items()}
        used = sum(bits[n] * sizes[n] for n in names) / sum(sizes.values())
        uni = int(avg)
        rows[f"avg{avg:g}"] = {
            "mixed": {"avg_bits": used, "test_acc": task.evaluate(quantized(bits))["accuracy"], "bits": bits},
            "uniform": {"avg_bits": float(uni), "test_acc": task.evaluate(quantized({n: uni for n in names}))["accuracy"]},
        }
        print(avg, {k: {kk: vv for kk, vv in v.items() if kk != "bits"} for k, v in rows[f"avg{avg:g}"].items()},
              flush=True)
    save_part("resnet20_mixed_bits", {"choices": choices, "sensitivity": "KL of outputs, 256 calibration images",
                                      "sensitivity_seconds": t_sens, "dense_test_acc": task.evaluate(model)["accuracy"],
                                      "protocol": "weights quantized per output channel (symmetric) to the chosen "
                                                  "widths and evaluated in fp32 (simulated weight-only quantization); "
                                                  "size = sum(bits x params) of conv/linear weights",
                                      "results": rows})


def cmd_mbv2(args) -> None:
    """MobileNetV2 at a measured-latency budget (batch 1): uniform vs NetAdapt vs CEM (AMC-style)."""
    from netslim.measure.latency import interleaved_latency
    from netslim.recipe.runner import open_model
    from netslim.search.api import make_runner
    from netslim.search.cem import cem_search, policy_accuracy
    from netslim.search.channels import ChannelSpace
    from netslim.search.evaluate import Subset, short_finetune
    from netslim.search.latency import LatencyTable
    from netslim.search.netadapt import candidate_trial, netadapt
    from netslim.search.options import TrialOptions
    from netslim.search.sensitivity import default_cache_dir
    from netslim.train.tasks import get_task

    torch.set_num_threads(THREADS)
    model, _ = open_model("mobilenetv2")
    task = get_task("fashion-mnist")
    x = task.example_inputs(1)
    lut = LatencyTable(default_cache_dir() / "latency_table.json", batch_size=1, threads=1, repeats=30)
    t0 = time.perf_counter()
    space = ChannelSpace(model, x, options=(0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75), metric="latency",
                         latency=lut)
    t_cal = time.perf_counter() - t0
    dense = space.dense_cost()
    budget = args.budget * dense
    val = Subset.from_task(task, "val", args.val, seed=0)
    train = Subset.from_task(task, "train", 5000, seed=0)
    trials = TrialOptions(threads=THREADS, log=None)
    lo, hi = 0.0, 0.9
    for _ in range(20):  # uniform: the smallest common ratio that meets the predicted budget
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if space.cost({n: mid for n in space.names}) <= budget else (mid, hi)
    policies = {"uniform": {n: hi for n in space.names}}
    t0 = time.perf_counter()
    runner = make_runner(policy_accuracy, {"space": space, "val": val}, trials, seed=0, out_dir=None, fingerprint=None)
    res = cem_search(space, runner, budget, generations=args.generations, population=args.population, seed=0)
    policies["cem"] = res.best
    t_cem = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner = make_runner(candidate_trial, None, trials, seed=0, out_dir=None, fingerprint=None)
    na = netadapt(space, runner, budget, step=args.step, train=train, val=val, finetune_steps=args.na_steps, lr=0.01)
    t_na = time.perf_counter() - t0
    models = {"dense": model, "uniform": space.apply(policies["uniform"]), "cem": space.apply(policies["cem"]),
              "netadapt": na.model}
    rows = {}
    for name, m in models.items():
        rows[name] = {"test_acc_no_ft": task.evaluate(m)["accuracy"], "predicted_ms": space.cost(
            policies[name]) if name in policies else (na.cost if name == "netadapt" else dense)}
        if name != "dense":
            short_finetune(m, train, steps=args.ft_steps, lr=0.01, seed=1)
            rows[name]["test_acc_ft"] = task.evaluate(m)["accuracy"]
    lat = interleaved_latency(models, x, rounds=7, repeats=20, threads=1)
    for name in models:
        rows[name]["measured_ms_b1"] = lat[name]
        rows[name]["measured_share"] = lat[name] / lat["dense"]
    lut.save()
    save_part("mobilenetv2_latency", {
        "budget_share": args.budget, "predicted_dense_ms": dense, "calibration": space.calibration,
        "calibration_seconds": t_cal, "cem_seconds": t_cem, "netadapt_seconds": t_na,
        "netadapt_iterations": len(na.history), "policies": {**policies, "netadapt": na.policy},
        "protocol": "batch 1, 1 thread; predicted = calibrated LUT; measured = interleaved A/B, 7 rounds x 20, median; "
                    f"fine-tune: {args.ft_steps} SGD steps (batch 64, 5000-image train subset) for every pruned "
                    f"model (NetAdapt's also had {args.na_steps} steps per iteration during the search)",
        "results": rows})
    print(json.dumps(rows, indent=1))


def cmd_nas(args) -> None:
    from netslim.search.nas import NASConfig, nas_search
    from netslim.search.options import TrialOptions
    from netslim.search.report import pareto_markdown, pareto_plot
    from netslim.train.tasks import get_task

    task = get_task("fashion-mnist")
    cfg = NASConfig(population=args.population, generations=args.generations, train_samples=args.train,
                    train_steps=args.steps, val_samples=args.val,
                    trials=TrialOptions(backend=args.backend, workers=2, threads=1 if args.backend == "ray" else 2,
                                        log="nas_trials.jsonl"))
    OUT.mkdir(parents=True, exist_ok=True)
    res = nas_search(task, cfg, seed=0, out_dir=OUT)
    pts = [{"label": str(p["genotype"]), **p} for p in res["points"]]
    compressed = []
    prior = load_results()
    for key in ("resnet20_ft_seed0",):
        for name, r in prior.get(key, {}).get("results", {}).items():
            compressed.append({"label": f"resnet20 {name} 2x", "macs": r["macs"], "accuracy": r["test_acc"]})
    pareto_plot({"NAS candidates (proxy accuracy, val)": pts, "ResNet-20 compressed 2x (test, fine-tuned)": compressed},
                OUT / "nas_pareto.png", cost="macs", title="accuracy vs MACs: searched vs compressed")
    (OUT / "nas_pareto.md").write_text(pareto_markdown(pts, "macs", "accuracy") + "\n")
    save_part("nas", {"config": cfg.model_dump(mode="json"), "seconds": res["seconds"], "trials": res["trials"],
                      "pareto": res["pareto"], "best": res["best"], "points": res["points"],
                      "note": "proxy: trained from scratch for train_steps SGD steps on a train subset, "
                              "accuracy on a validation subset"})
    print(json.dumps(res["pareto"], indent=1, default=str))


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
    a.add_argument("--redo", action="store_true", help="re-run policies already in the results")
    a = sub.add_parser("ray")
    a.add_argument("--val", type=int, default=500)
    a.add_argument("--population", type=int, default=8)
    a.add_argument("--generations", type=int, default=3)
    a.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("mixed")
    a.add_argument("--avg-bits", type=float, nargs="+", default=[3.0, 4.0])
    a = sub.add_parser("mbv2")
    a.add_argument("--budget", type=float, default=0.6)
    a.add_argument("--val", type=int, default=500)
    a.add_argument("--population", type=int, default=12)
    a.add_argument("--generations", type=int, default=4)
    a.add_argument("--step", type=float, default=0.1)
    a.add_argument("--na-steps", type=int, default=20)
    a.add_argument("--ft-steps", type=int, default=200)
    a = sub.add_parser("nas")
    a.add_argument("--population", type=int, default=6)
    a.add_argument("--generations", type=int, default=3)
    a.add_argument("--train", type=int, default=5000)
    a.add_argument("--steps", type=int, default=100)
    a.add_argument("--val", type=int, default=500)
    a.add_argument("--backend", default="ray")
    args = p.parse_args()
    {"prep": cmd_prep, "finetune": cmd_finetune, "ray": cmd_ray, "mixed": cmd_mixed, "mbv2": cmd_mbv2,
     "nas": cmd_nas}[args.cmd](args)


if __name__ == "__main__":
    main()
