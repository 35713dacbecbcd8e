"""Issue 19 part 3: data-parallel fine-tuning under torchrun vs one process.

ResNet-20 (the trained zoo checkpoint) channel-pruned to half its MACs (``channels``,
``target_macs: 0.5``, global L2; under torchrun this step runs on rank 0 alone and the other
rank loads its checkpoint), then fine-tuned (``finetune``: ``--epochs``, global batch
``--batch-size``, SGD, seed 0; data-parallel under torchrun), then evaluated on the test set:

* ``one``: one process with ``--threads`` intra-op threads (``python -m netslim compress``);
* ``two``: ``torchrun --nproc-per-node 2 -m netslim compress``: two gloo processes with
  ``--threads`` / 2 threads each (the same cores), the same global batch, seed and data order;
* ``one_seed1``: one process, data seed 1 (another train / val split and batch order): the
  seed-to-seed noise the accuracy difference of ``one`` and ``two`` is compared with.

Reported (``benchmarks/results/issue19_ddp.json``, ``issue19_ddp_tiny.json`` with ``--tiny``):
test accuracy of each run; ``|acc(two) - acc(one)|`` beside ``|acc(one) - acc(one_seed1)|``;
whether the channel decisions are identical (the prune plans stored in both artifacts, and
every tensor shape); whether the two ranks ended each data-parallel step with identical
weights and masks (the runner checks it bit for bit and records ``torchrun.identical`` in the
report); wall time of the fine-tune step (the report's step seconds) and of each command, and
the ratio one / two. BatchNorm: each rank normalises its half of the batch with that half's
statistics (running statistics are rank 0's), so ``two`` is not the same computation as ``one``
- hence the comparison against seed noise rather than a tolerance.

Needs the trained checkpoint (``netslim train resnet20``) and torchrun (torch). Several nodes:
the same command with ``torchrun --nnodes M --node-rank R --rdzv-endpoint HOST:PORT`` on each.

    .venv/bin/python benchmarks/ddp.py [--epochs 2] [--batch-size 128] [--threads 16]
    .venv/bin/python benchmarks/ddp.py --tiny     # seconds: random ResNet-8, 256 images; checks the script
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
TORCHRUN = str(ROOT / ".venv" / "bin" / "torchrun")
RESULTS = ROOT / "benchmarks" / "results"


def write_recipe(path: Path, args: argparse.Namespace, seed: int) -> Path:
    import yaml

    recipe = {
        "name": "ddp_resnet20",
        "dataset": "fashion-mnist",
        "data": {"seed": seed},
        "measure": {"batch_size": 64, "repeats": 5, "paired": False},
        "steps": [
            {"method": "channels", "target_macs": 0.5, "criterion": "l2", "scope": "global"},
            {"method": "finetune", "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": 0},
            {"method": "evaluate"},
        ],
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def model_ref(args: argparse.Namespace, work: Path) -> str:
    if not args.tiny:
        from netslim.core.cache import checkpoint_path

        if not checkpoint_path("resnet20").is_file():
            sys.exit(f"no trained ResNet-20 at {checkpoint_path('resnet20')}: run `netslim train resnet20` first")
        return "resnet20"
    import torch

    import netslim
    from netslim.models import build_model

    torch.manual_seed(0)
    path = work / "resnet8.safetensors"
    netslim.save(build_model("resnet20", depth=8, width=4), path)
    return str(path)


def run(name: str, procs: int, recipe: Path, model: str, args: argparse.Namespace, work: Path) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    threads = max(1, args.threads // procs)
    env = {**os.environ, "NETSLIM_PROGRESS": "0", "OMP_NUM_THREADS": str(threads), "COLUMNS": "160"}
    launcher = [TORCHRUN, "--nproc-per-node", str(procs), "-m"] if procs > 1 else [PY, "-m"]
    cmd = [*launcher, "netslim", "compress", str(recipe), "--model", model, "--out", str(out)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads((out / "report.json").read_text())
    steps = {s["method"]: s for s in report["steps"]}
    return {
        "processes": procs,
        "threads_per_process": threads,
        "command": " ".join(cmd),
        "command_seconds": round(wall, 2),
        "finetune_seconds": round(steps["finetune"]["seconds"], 2),
        "channels_seconds": round(steps["channels"]["seconds"], 2),
        "accuracy": report["final"].get("accuracy"),
        "torchrun": {m: s.get("torchrun") for m, s in steps.items()},
        "artifact": report["artifact"],
    }


def same_decisions(a: str, b: str) -> dict:
    """The channels kept (prune plans stored in the artifacts) and every tensor shape, compared."""
    from safetensors import safe_open

    from netslim.core.serialize import read_description

    plans = [read_description(p).get("plans") for p in (a, b)]
    shapes = []
    for p in (a, b):
        with safe_open(p, "pt") as f:
            shapes.append({k: list(f.get_slice(k).get_shape()) for k in f.keys()})
    return {"plans_identical": plans[0] == plans[1] and bool(plans[0]), "shapes_identical": shapes[0] == shapes[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128, help="global batch (both runs)")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="cores for each run, shared by its ranks")
    ap.add_argument("--limit", type=int, default=None, help="images per split (default: all)")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "ddp")
    ap.add_argument("--tiny", action="store_true", help="random ResNet-8, 256 images, 1 epoch: checks the script")
    args = ap.parse_args()
    if args.tiny:
        args.epochs, args.limit, args.batch_size, args.threads = 1, args.limit or 256, 32, min(args.threads, 2)
    args.work.mkdir(parents=True, exist_ok=True)
    model = model_ref(args, args.work)
    runs = {
        "one": run("one", 1, write_recipe(args.work / "seed0.yaml", args, 0), model, args, args.work),
        "two": run("two", 2, args.work / "seed0.yaml", model, args, args.work),
        "one_seed1": run("one_seed1", 1, write_recipe(args.work / "seed1.yaml", args, 1), model, args, args.work),
    }
    acc = {k: r["accuracy"] for k, r in runs.items()}
    result = {
        "what": "ResNet-20 channels (target_macs 0.5) + finetune: 2 gloo processes vs 1, same global batch and seed",
        "tiny": args.tiny,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {
            "epochs": args.epochs,
            "global_batch": args.batch_size,
            "lr": args.lr,
            "threads": args.threads,
            "limit": args.limit,
        },
        "runs": runs,
        "accuracy": {
            "one": acc["one"],
            "two": acc["two"],
            "one_seed1": acc["one_seed1"],
            "two_minus_one": round(acc["two"] - acc["one"], 5),
            "seed_noise": round(abs(acc["one"] - acc["one_seed1"]), 5),
        },
        "channel_decisions": same_decisions(runs["one"]["artifact"], runs["two"]["artifact"]),
        "ranks_identical": all(s and s.get("identical") for m, s in runs["two"]["torchrun"].items() if m == "finetune"),
        "wall_ratio_one_over_two": {
            k: round(runs["one"][f"{k}_seconds"] / runs["two"][f"{k}_seconds"], 3) for k in ("finetune", "command")
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("issue19_ddp_tiny.json" if args.tiny else "issue19_ddp.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("accuracy", "channel_decisions", "ranks_identical", "wall_ratio_one_over_two")},
            indent=2,
        )
    )
    print(f"-> {path}")


if __name__ == "__main__":
    main()
