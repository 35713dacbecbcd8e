"""Issue 9 benchmarks: searched per-group channel policies vs uniform / global ranking, Ray
serial-vs-parallel, NetAdapt / CEM on MobileNetV2 latency, mixed precision from sensitivity.

Every part appends to benchmarks/results/search.json (entry per part, with command, load
average, date) and is short enough for one queued job (<= 10 min on 2 cores):

    python benchmarks/search.py prep            # ResNet-20: sensitivity, knapsack + CEM policies at 2x MACs
    python benchmarks/search.py finetune --seed 0   # (and 1, 2) the same fine-tuning for every policy
    python benchmarks/search.py cem-fill        # prep's CEM search again, with the fill-back step
    python benchmarks/search.py finetune --seed 0 --policies cem_fill
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

    with open(
        Path(tempfile.gettempdir()) / "netslim_search_results.lock", "w"
    ) as lock:  # parts run as concurrent jobs: read-modify-write locked
        fcntl.flock(lock, fcntl.LOCK_EX)
        _save_part_locked(key, data, atomic_write)


def _save_part_locked(key: str, data: dict, atomic_write) -> None:
    res = load_results()
    data = {
        **data,
        "command": "python benchmarks/search.py " + " ".join(sys.argv[1:]),
        "load_avg": os.getloadavg(),
        "date": datetime.datetime.utcnow().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
        f"torch {torch.__version__}",
    }
    res[key] = data
    text = json.dumps(res, indent=1, default=float)
    atomic_write(RESULTS, lambda tmp: Path(tmp).write_text(text))


def resnet20_setup(seed: int = 0):
    from netslim.models.sources import open_model
    from netslim.search.api import make_space
    from netslim.search.options import ChannelSpaceOptions
    from netslim.train.tasks import get_task

    model = open_model("resnet20").model
    task = get_task("fashion-mnist", seed=seed)
    space = make_space(model, task, ChannelSpaceOptions(), "macs")
    return model, task, space


def structured_policy_model(model, task, scope: str, target: float):
    """Uniform or global-ranking pruning at a MAC target, by the structured engine itself."""
    from netslim.prune.structured import shrink_channels

    m, rep = shrink_channels(
        copy.deepcopy(model), task.example_inputs(1), target_macs=target, criterion="l2", scope=scope
    )
    return m, {"ratio": rep.get("ratio"), "groups": rep["groups"]}


def cmd_prep(args) -> None:
    from netslim.prune.structured import total_macs
    from netslim.search.api import allocate_from_sensitivity, channel_policy, sensitivity_for
    from netslim.search.evaluate import Subset
    from netslim.search.options import TrialOptions
    from netslim.search.steps import SearchChannelsConfig

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
    cfg = SearchChannelsConfig(
        budget=args.budget,
        strategy="cem",
        fill_back="none",
        val_samples=args.val,
        population=args.population,
        generations=args.generations,
        trials=TrialOptions(threads=THREADS, log="cem_trials.jsonl"),
    )  # as recorded: no fill-back
    cem, info = channel_policy(space, task, cfg, seed=0, out_dir=OUT)
    policies = {"knapsack": knap, "cem": cem}
    rows = {}
    for name, pol in policies.items():
        m = space.apply(pol)
        rows[name] = {
            "policy": pol,
            "macs": total_macs(m, x),
            "macs_share": total_macs(m, x) / dense,
            "test_acc_no_ft": task.evaluate(m)["accuracy"],
        }
    for scope in ("uniform", "global"):
        m, rep = structured_policy_model(model, task, scope, args.budget)
        rows[scope] = {
            **rep,
            "macs": total_macs(m, x),
            "macs_share": total_macs(m, x) / dense,
            "test_acc_no_ft": task.evaluate(m)["accuracy"],
        }
    save_part(
        "resnet20_prep",
        {
            "budget_share": args.budget,
            "dense_macs": dense,
            "val_samples": args.val,
            "sensitivity_seconds": t_sens,
            "knapsack_seconds": t_knap,
            "cem": {k: v for k, v in info.items() if k != "history"},
            "cem_history": [{k: h[k] for k in ("generation", "best", "mean")} for h in info["history"]],
            "sensitivity": table.to_dict(),
            "policies": rows,
        },
    )
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "policy"} for k, v in rows.items()}, indent=1))


def cmd_cem_fill(args) -> None:
    """The CEM (AMC-style) search of ``prep`` again, with the fill-back step: every projected
    policy gets its slack back, most sensitive groups first (same budget, population,
    generations, validation images and seed; the sensitivity curves come from prep's cache)."""
    from netslim.prune.structured import total_macs
    from netslim.search.api import channel_policy
    from netslim.search.options import TrialOptions
    from netslim.search.steps import SearchChannelsConfig

    torch.set_num_threads(THREADS)
    prep = load_results()["resnet20_prep"]
    model, task, space = resnet20_setup()
    x = task.example_inputs(1)
    dense = space.dense_cost()
    out = OUT / "resnet20_cem_fill"
    out.mkdir(parents=True, exist_ok=True)
    cfg = SearchChannelsConfig(
        budget=prep["budget_share"],
        strategy="cem",
        fill_back="sensitivity",
        val_samples=prep["val_samples"],
        population=args.population,
        generations=args.generations,
        trials=TrialOptions(threads=THREADS, log="trials.jsonl"),
    )
    pol, info = channel_policy(space, task, cfg, seed=0, out_dir=out)
    m = space.apply(pol)
    row = {
        "policy": pol,
        "macs": total_macs(m, x),
        "macs_share": total_macs(m, x) / dense,
        "test_acc_no_ft": task.evaluate(m)["accuracy"],
    }
    costs = [c / dense for h in info["history"] for c in h["costs"]]
    save_part(
        "resnet20_cem_fill",
        {
            "budget_share": prep["budget_share"],
            "dense_macs": dense,
            "val_samples": prep["val_samples"],
            "cem": {k: v for k, v in info.items() if k != "history"},
            "cem_history": [{k: h[k] for k in ("generation", "best", "mean")} for h in info["history"]],
            "sampled_macs_share": {"min": min(costs), "mean": sum(costs) / len(costs), "max": max(costs)},
            "policies": {"cem_fill": row},
        },
    )
    print(json.dumps({k: v for k, v in row.items() if k != "policy"}, indent=1), costs[:5])


def _policy(results: dict, name: str) -> dict:
    for key in ("resnet20_prep", "resnet20_cem_fill"):
        if name in results.get(key, {}).get("policies", {}):
            return results[key]["policies"][name]["policy"]
    raise SystemExit(f"no policy {name!r} in resnet20_prep / resnet20_cem_fill: run 'prep' / 'cem-fill' first")


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
            m = space.apply(_policy(load_results(), name))
        t0 = time.perf_counter()
        summary = fit(m, task, ft)
        out[name] = {
            "test_acc": task.evaluate(m)["accuracy"],
            "macs": total_macs(m, x),
            "best_val": summary.get("best_accuracy"),
            "finetune_seconds": time.perf_counter() - t0,
        }
        print(name, out[name], flush=True)
        save_part(key, {"finetune": ft.to_dict(), "threads": THREADS, "results": out})


def cmd_ray(args) -> None:
    from netslim.search.api import channel_policy
    from netslim.search.options import TrialOptions
    from netslim.search.steps import SearchChannelsConfig

    model, task, space = resnet20_setup()
    out = {}
    for backend in ("serial", "ray"):
        cfg = SearchChannelsConfig(
            budget=0.5,
            strategy="cem",
            fill_back="none",
            val_samples=args.val,
            population=args.population,
            generations=args.generations,
            trials=TrialOptions(backend=backend, workers=2, threads=1, log=None),
        )
        t0 = time.perf_counter()
        policy, info = channel_policy(space, task, cfg, seed=args.seed, out_dir=None)
        out[backend] = {
            "wall_seconds": time.perf_counter() - t0,
            "best_policy": policy,
            "reward": info["reward"],
            "trials": info["trials"],
            "rewards": [r for h in info["history"] for r in h["rewards"]],
        }
        print(backend, out[backend]["wall_seconds"], info["reward"], flush=True)
    out["same_best_policy"] = out["serial"]["best_policy"] == out["ray"]["best_policy"]
    out["same_rewards"] = out["serial"]["rewards"] == out["ray"]["rewards"]
    save_part(
        "ray_serial_vs_2workers",
        {
            "population": args.population,
            "generations": args.generations,
            "val_samples": args.val,
            "seed": args.seed,
            **out,
        },
    )


def cmd_mixed(args) -> None:
    """Per-layer weight bits from the KL sensitivity curves (exact knapsack) vs uniform bits, equal size."""
    from netslim.core.selectors import select
    from netslim.models.sources import open_model
    from netslim.quantize.ptq import quantize_weight_rows
    from netslim.search.allocate import knapsack
    from netslim.search.sensitivity import bits_sensitivity, default_cache_dir
    from netslim.train.tasks import get_task

    torch.set_num_threads(THREADS)
    model = open_model("resnet20").model
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
            "uniform": {
                "avg_bits": float(uni),
                "test_acc": task.evaluate(quantized({n: uni for n in names}))["accuracy"],
            },
        }
        print(
            avg,
            {k: {kk: vv for kk, vv in v.items() if kk != "bits"} for k, v in rows[f"avg{avg:g}"].items()},
            flush=True,
        )
    save_part(
        "resnet20_mixed_bits",
        {
            "choices": choices,
            "sensitivity": "KL of outputs, 256 calibration images",
            "sensitivity_seconds": t_sens,
            "dense_test_acc": task.evaluate(model)["accuracy"],
            "protocol": "weights quantized per output channel (symmetric) to the chosen "
            "widths and evaluated in fp32 (simulated weight-only quantization); "
            "size = sum(bits x params) of conv/linear weights",
            "results": rows,
        },
    )


def cmd_mbv2(args) -> None:
    """MobileNetV2 at a measured-latency budget (batch 1): uniform vs NetAdapt vs CEM (AMC-style).

    ``--phase search`` (a timing job: the lookup table, its calibration and the final A/B latency
    are timed): uniform / CEM / NetAdapt policies under the predicted budget, trials logged under
    OUT/mbv2_* so a job killed at its time limit resumes; then the four shapes timed interleaved.
    ``--phase finetune`` (accuracy only): the same short fine-tuning of every pruned model.
    """
    import netslim
    from netslim.core.errors import NetslimError
    from netslim.measure.latency import interleaved_latency
    from netslim.models.sources import open_model
    from netslim.search.api import channel_policy, make_space, netadapt_policy
    from netslim.search.channels import ChannelSpace
    from netslim.search.evaluate import Subset, short_finetune
    from netslim.search.options import ChannelSpaceOptions, TrialOptions
    from netslim.search.steps import NetAdaptConfig, SearchChannelsConfig
    from netslim.train.tasks import get_task

    torch.set_num_threads(THREADS)
    model = open_model("mobilenetv2").model
    task = get_task("fashion-mnist")
    x = task.example_inputs(1)
    t = args.tag
    from netslim.search.sensitivity import default_cache_dir

    na_path = default_cache_dir() / f"bench_mbv2{t}_netadapt.safetensors"  # a model: kept out of results/
    if args.phase == "finetune":
        prior = load_results()[f"mobilenetv2_latency{t}"]
        space = ChannelSpace(model, x, options=ChannelSpaceOptions().ratios, metric="macs")  # plans only
        train = Subset.from_task(task, "train", 5000, seed=0)
        models = {n: space.apply(p) for n, p in prior["policies"].items() if n != "netadapt"}
        if prior.get("netadapt_error") is None:
            models["netadapt"] = netslim.load(na_path)
        key = f"mobilenetv2_finetune{t}" + (f"_s{args.ft_seed}" if args.ft_seed != 1 else "")
        rows = load_results().get(key, {}).get("results", {})  # resumable, one model a time
        if "dense" not in rows:
            rows["dense"] = {"test_acc": task.evaluate(model)["accuracy"]}
        for name, m in models.items():
            if name in rows and not args.redo:
                continue
            t0 = time.perf_counter()
            short_finetune(m, train, steps=args.ft_steps, lr=0.01, seed=args.ft_seed)
            rows[name] = {"test_acc_ft": task.evaluate(m)["accuracy"], "seconds": time.perf_counter() - t0}
            print(name, rows[name], flush=True)
            save_part(
                key,
                {
                    "protocol": f"{args.ft_steps} SGD steps (batch 64, cosine lr 0.01, 5000-image train subset, "
                    f"seed {args.ft_seed}) "
                    "for every pruned model, then the 10k test set; NetAdapt's model also had its "
                    "per-iteration short fine-tunes during the search",
                    "results": rows,
                },
            )
        return
    trials = TrialOptions(threads=THREADS, log="trials.jsonl")
    t0 = time.perf_counter()
    space = make_space(model, task, ChannelSpaceOptions(), "latency", 1)
    t_cal = time.perf_counter() - t0
    dense = space.dense_cost()
    budget = args.budget * dense
    lo, hi = 0.0, 0.9
    for _ in range(20):  # uniform: the smallest common ratio that meets the predicted budget
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if space.cost({n: mid for n in space.names}) <= budget else (mid, hi)
    policies = {"uniform": {n: hi for n in space.names}}
    info: dict = {}
    cfg = SearchChannelsConfig(
        target="latency",
        budget=args.budget,
        strategy="cem",
        val_samples=args.val,
        population=args.population,
        generations=args.generations,
        trials=trials,
        fill_back=args.fill_back,
    )
    (OUT / f"mbv2{t}_cem").mkdir(parents=True, exist_ok=True)
    policies["cem"], cem = channel_policy(space, task, cfg, seed=0, out_dir=OUT / f"mbv2{t}_cem")
    info["cem"] = {k: cem[k] for k in ("reward", "trials", "resumed_trials", "seconds")}
    na_cfg = NetAdaptConfig(
        target="latency",
        budget=args.budget,
        step=args.step,
        candidate_steps=args.na_steps,
        train_samples=5000,
        val_samples=args.val,
        trials=trials,
    )
    (OUT / f"mbv2{t}_netadapt").mkdir(parents=True, exist_ok=True)
    models = {"dense": model, "uniform": space.apply(policies["uniform"]), "cem": space.apply(policies["cem"])}
    try:
        policies["netadapt"], na, models["netadapt"] = netadapt_policy(
            space, task, na_cfg, seed=0, out_dir=OUT / f"mbv2{t}_netadapt"
        )
        info["netadapt"] = {k: na[k] for k in ("iterations", "trials", "resumed_trials", "seconds")}
        info["netadapt"]["accuracy_per_iteration"] = [h["accuracy"] for h in na["history"]]
        netslim.save(models["netadapt"], na_path, {"model": "mobilenetv2", "dataset": "fashion-mnist"})
        na_error = None
    except NetslimError as e:
        na_error = str(e)
    space.latency.save()
    val = Subset.from_task(task, "val", args.val, seed=0)
    from netslim.search.evaluate import accuracy

    lat = interleaved_latency(models, x, rounds=args.rounds, repeats=20, threads=1)
    rows = {
        name: {
            "predicted_ms": space.cost(policies[name]) if name in policies else dense,
            "measured_ms_b1": lat[name],
            "measured_share": lat[name] / lat["dense"],
            "val_acc_no_ft": accuracy(m, val),
        }
        for name, m in models.items()
    }
    save_part(
        f"mobilenetv2_latency{t}",
        {
            "budget_share": args.budget,
            "predicted_dense_ms": dense,
            "calibration": space.calibration,
            "calibration_seconds": t_cal,
            "search": info,
            "netadapt_error": na_error,
            "policies": policies,
            "protocol": "batch 1, 1 thread; predicted = lookup table calibrated on the dense model and uniform "
            f"prunings; measured = interleaved A/B, {args.rounds} rounds x 20, median; CEM reward = "
            f"val accuracy ({args.val} images) without fine-tuning, fill-back {args.fill_back}; NetAdapt: {args.na_steps} SGD steps per "
            f"candidate, step {args.step} of the dense latency per iteration",
            "results": rows,
        },
    )
    print(json.dumps(rows, indent=1))


def cmd_nas(args) -> None:
    """Evolutionary NAS (proxy-trained candidates, resumable trial log), then the chosen architecture
    trained from scratch for ``--final-steps``; Pareto plot against the compressed ResNet-20 points."""

    from netslim.measure.counts import macs_per_layer
    from netslim.models.sources import open_model
    from netslim.search.evaluate import Subset, short_finetune
    from netslim.search.nas import NASConfig, NASSpace, nas_search
    from netslim.search.options import TrialOptions
    from netslim.search.report import pareto_markdown, pareto_plot
    from netslim.train.tasks import get_task

    torch.set_num_threads(THREADS)
    task = get_task("fashion-mnist")
    x = task.example_inputs(1)
    big = open_model("resnet20").model
    big_macs = sum(macs_per_layer(big, x).values())
    cfg = NASConfig(
        population=args.population,
        generations=args.generations,
        train_samples=args.train,
        train_steps=args.steps,
        val_samples=args.val,
        max_cost=args.max_cost * big_macs,
        trials=TrialOptions(backend=args.backend, workers=2, threads=THREADS, log="nas_trials.jsonl"),
    )
    OUT.mkdir(parents=True, exist_ok=True)
    res = nas_search(task, cfg, seed=0, out_dir=OUT)
    pts = [{"label": str(p["genotype"]), **p} for p in res["points"]]
    prior = load_results()
    comp_pts = compressed_points(prior)
    comp_pts.append({"label": "resnet20 dense", "macs": big_macs, "accuracy": task.evaluate(big)["accuracy"]})
    trained = []
    if args.final_steps:
        torch.manual_seed(0)
        chosen = NASSpace.build(res["best"]["genotype"])
        t0 = time.perf_counter()
        short_finetune(
            chosen,
            Subset.from_task(task, "train", 10**9, seed=0),
            steps=args.final_steps,
            lr=0.05,
            batch_size=64,
            seed=0,
        )
        trained.append(
            {
                "label": f"NAS best {res['best']['genotype']}",
                "macs": res["best"]["macs"],
                "params": res["best"]["params"],
                "accuracy": task.evaluate(chosen)["accuracy"],
                "train_steps": args.final_steps,
                "train_seconds": time.perf_counter() - t0,
            }
        )
    pareto_plot(
        {
            "NAS candidates (proxy: val acc after a short training)": pts,
            f"NAS best trained ({args.final_steps} steps, test)": trained,
            "ResNet-20 dense / compressed 2x (test, fine-tuned)": comp_pts,
        },
        OUT / "nas_pareto.png",
        cost="macs",
        title="accuracy vs MACs: searched vs compressed big model",
    )
    (OUT / "nas_pareto.md").write_text(pareto_markdown(pts, "macs", "accuracy") + "\n")
    save_part(
        "nas",
        {
            "config": cfg.model_dump(mode="json"),
            "seconds": res["seconds"],
            "trials": res["trials"],
            "resumed_trials": res["resumed_trials"],
            "pareto": res["pareto"],
            "best": res["best"],
            "points": res["points"],
            "trained": trained,
            "compressed": comp_pts,
            "note": "proxy: trained from scratch for train_steps SGD steps on a train subset, accuracy on "
            "a validation subset; 'trained': the chosen architecture from scratch, test accuracy",
        },
    )
    print(json.dumps({"pareto": res["pareto"], "trained": trained, "compressed": comp_pts}, indent=1, default=str))


def compressed_points(prior: dict) -> list[dict]:
    """The fine-tuned ResNet-20 2x policies of the ``finetune`` parts, averaged over seeds, as Pareto points."""
    import statistics

    compressed: dict[str, list] = {}
    for key, part in prior.items():
        if key.startswith("resnet20_ft_seed"):
            for name, r in part.get("results", {}).items():
                compressed.setdefault(name, []).append(r)
    return [
        {
            "label": f"resnet20 {name} 2x",
            "macs": rs[0]["macs"],
            "seeds": len(rs),
            "accuracy": statistics.mean(r["test_acc"] for r in rs),
        }
        for name, rs in compressed.items()
    ]


NAS_RESNET20 = {"family": "resnet", "depth": 20, "width": 16}  # the ResNet-20 architecture, in the NAS space


def _nas_arch(name: str) -> dict:
    if name == "resnet20":
        return dict(NAS_RESNET20)
    if name == "best":
        nas = load_results().get("nas")
        if nas is None:
            raise SystemExit("no finished NAS search in the results: run 'nas' first")
        return dict(nas["best"]["genotype"])
    raise SystemExit(f"--arch must be best or resnet20; got {name!r}")


def cmd_nas_train(args) -> None:
    """The NAS-chosen architecture or the ResNet-20 architecture, trained from scratch with the same
    budget (``--steps`` SGD steps, batch 64, cosine lr 0.05, full train set, seed 0), test accuracy.
    Like for like: same training for both, unlike the pretrained + fine-tuned compressed ResNet-20."""
    from netslim.search.evaluate import Subset, short_finetune
    from netslim.search.nas import NASSpace, describe
    from netslim.train.tasks import get_task

    torch.set_num_threads(THREADS)
    task = get_task("fashion-mnist")
    rows = load_results().get("nas_trained", {}).get("results", {})
    train = Subset.from_task(task, "train", 10**9, seed=0)
    for name in args.arch.split(","):
        geno = _nas_arch(name)
        label = f"{name}:{args.steps}" + (f":s{args.seed}" if args.seed else "")
        if label in rows and not args.redo:
            continue
        torch.manual_seed(args.seed)
        model = NASSpace.build(geno)
        t0 = time.perf_counter()
        short_finetune(model, train, steps=args.steps, lr=args.lr, batch_size=64, seed=args.seed)
        rows[label] = {
            "genotype": geno,
            "steps": args.steps,
            "lr": args.lr,
            "seed": args.seed,
            "test_acc": task.evaluate(model)["accuracy"],
            "train_seconds": time.perf_counter() - t0,
            **describe(model, task.example_inputs(1)),
        }
        print(label, rows[label], flush=True)
        save_part(
            "nas_trained",
            {
                "protocol": "from scratch: steps x batch 64 SGD (momentum 0.9, wd 5e-4, cosine lr) "
                "on the full train set, seed; 10k test set",
                "results": rows,
            },
        )


def cmd_nas_latency(args) -> None:
    """Batch-1 latency (1 thread) of the NAS-chosen architecture vs ResNet-20 dense and its searched 2x
    channel pruning, interleaved A/B in one run (a timing job: exclusive lane)."""
    from netslim.measure.latency import interleaved_latency
    from netslim.search.nas import NASSpace, describe
    from netslim.train.tasks import get_task

    torch.set_num_threads(1)
    task = get_task("fashion-mnist")
    x = task.example_inputs(1)
    model, _, space = resnet20_setup()
    models = {
        "resnet20 dense": model,
        "resnet20 knapsack 2x": space.apply(_policy(load_results(), "knapsack")),
        "NAS best": NASSpace.build(_nas_arch("best")).eval(),
    }
    lat = interleaved_latency(models, x, rounds=args.rounds, repeats=20, threads=1)
    rows = {
        k: {"measured_ms_b1": v, "share_of_resnet20": v / lat["resnet20 dense"], **describe(models[k], x)}
        for k, v in lat.items()
    }
    save_part(
        "nas_latency",
        {
            "genotype": _nas_arch("best"),
            "results": rows,
            "protocol": f"batch 1, 1 thread, interleaved A/B, {args.rounds} rounds x 20, median",
        },
    )
    print(json.dumps(rows, indent=1))


def cmd_nas_plot(args) -> None:
    """Pareto plot / table from the NAS trial log as it stands (no training): the proxy-trained
    candidates so far against the compressed ResNet-20 points and the ``nas-train`` results."""

    from netslim.search.report import pareto, pareto_markdown, pareto_plot

    lines = (OUT / "nas_trials.jsonl").read_text().splitlines()[1:]
    pts = []
    for line in lines:
        rec = json.loads(line)
        g = rec["params"]
        pts.append({"label": ",".join(f"{k}={v}" for k, v in sorted(g.items())), "genotype": g, **rec["result"]})
    prior = load_results()
    comp_pts = compressed_points(prior)
    comp_pts.append(
        {
            "label": "resnet20 dense",
            "macs": prior["resnet20_prep"]["dense_macs"],
            "accuracy": prior["resnet20_mixed_bits"]["dense_test_acc"],
        }
    )
    series = {
        f"NAS candidates ({len(pts)} trials; proxy: val acc after 100 steps from scratch)": pts,
        "ResNet-20 dense / compressed 2x (test, trained + fine-tuned)": comp_pts,
    }
    trained = [
        {"label": k, "macs": r["macs"], "accuracy": r["test_acc"]}
        for k, r in prior.get("nas_trained", {}).get("results", {}).items()
    ]
    if trained:
        series["from scratch, same steps (test): NAS best / ResNet-20 arch"] = trained
    name = args.name
    pareto_plot(series, OUT / f"{name}.png", cost="macs", title="accuracy vs MACs (NAS vs compressed ResNet-20)")
    (OUT / f"{name}.md").write_text(pareto_markdown(pts, "macs", "accuracy") + "\n")
    save_part(
        {"nas_pareto_partial": "nas_partial"}.get(name, name),
        {
            "trials": len(pts),
            "pareto": pareto(pts, "macs", "accuracy"),
            "points": pts,
            "compressed": comp_pts,
            "trained": trained,
            "note": f"from the trial log ({len(pts)} trials); candidate accuracy is the proxy "
            "(100 SGD steps from scratch, 500 val images), not comparable in level with "
            "the compressed points (fully trained, fine-tuned, test set); 'trained': "
            "nas-train (same from-scratch budget for NAS best and the ResNet-20 arch)",
        },
    )
    print(pareto_markdown(pts, "macs", "accuracy"))


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
    a = sub.add_parser("cem-fill")
    a.add_argument("--population", type=int, default=16)
    a.add_argument("--generations", type=int, default=5)
    a = sub.add_parser("ray")
    a.add_argument("--val", type=int, default=500)
    a.add_argument("--population", type=int, default=8)
    a.add_argument("--generations", type=int, default=3)
    a.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("mixed")
    a.add_argument("--avg-bits", type=float, nargs="+", default=[3.0, 4.0])
    a = sub.add_parser("mbv2")
    a.add_argument("--phase", choices=("search", "finetune"), default="search")
    a.add_argument("--tag", default="", help="suffix of the result keys and output folders")
    a.add_argument("--budget", type=float, default=0.6)
    a.add_argument("--val", type=int, default=300)
    a.add_argument("--population", type=int, default=12)
    a.add_argument("--generations", type=int, default=4)
    a.add_argument("--step", type=float, default=0.05)
    a.add_argument(
        "--fill-back",
        choices=("sensitivity", "none"),
        default="sensitivity",
        help="CEM: give the projection's slack back (the first, untagged run had none)",
    )
    a.add_argument("--na-steps", type=int, default=10)
    a.add_argument("--rounds", type=int, default=7)
    a.add_argument("--ft-steps", type=int, default=100)
    a.add_argument("--ft-seed", type=int, default=1, help="finetune phase: data-order seed (results key _sN unless 1)")
    a.add_argument("--redo", action="store_true")
    a = sub.add_parser("nas")
    a.add_argument("--population", type=int, default=6)
    a.add_argument("--generations", type=int, default=3)
    a.add_argument("--train", type=int, default=5000)
    a.add_argument("--steps", type=int, default=100)
    a.add_argument("--val", type=int, default=500)
    a.add_argument("--max-cost", type=float, default=0.5, help="share of ResNet-20's MACs for the chosen arch")
    a.add_argument("--final-steps", type=int, default=0, help="train the chosen architecture this many steps")
    a.add_argument("--backend", default="serial")
    a = sub.add_parser("nas-plot")
    a.add_argument("--name", default="nas_pareto_partial", help="file stem under OUT (and result key)")
    a = sub.add_parser("nas-train")
    a.add_argument("--arch", default="best", help="comma-separated: best (the NAS choice), resnet20")
    a.add_argument("--steps", type=int, default=1000)
    a.add_argument("--lr", type=float, default=0.05)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--redo", action="store_true")
    a = sub.add_parser("nas-latency")
    a.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    {
        "prep": cmd_prep,
        "cem-fill": cmd_cem_fill,
        "finetune": cmd_finetune,
        "ray": cmd_ray,
        "mixed": cmd_mixed,
        "mbv2": cmd_mbv2,
        "nas": cmd_nas,
        "nas-plot": cmd_nas_plot,
        "nas-train": cmd_nas_train,
        "nas-latency": cmd_nas_latency,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
