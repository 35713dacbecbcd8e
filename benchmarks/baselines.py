"""Baselines of the CNN zoo on Fashion-MNIST: train (or reuse), save, measure.

For each model: ``train_baseline`` with the defaults of ``netslim.train.pretrain`` (or,
with ``--reuse``, the checkpoint already at ``checkpoint_path(name)``), ``netslim.save``
to that path, then the library's own measurements: test accuracy, params, MACs for one
1x1x28x28 image, bytes of the saved safetensors, CPU latency (median) at batch 1 and 64.

Results go to ``benchmarks/results/baselines.json`` (merged per model, written
atomically) and a markdown table is printed.

    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/baselines.py
    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/baselines.py --reuse   # re-measure only
    .venv/bin/python benchmarks/baselines.py --models lenet5 --epochs-scale 0.1 --limit 2000 \\
        --out /tmp/smoke.json                                                             # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

import netslim
from netslim.core.cache import checkpoint_path
from netslim.core.serialize import atomic_write, read_description
from netslim.measure import count_nonzero, count_params, macs_per_layer, measure_latency, size_on_disk
from netslim.models import model_entry
from netslim.train.pretrain import AUGMENT, DEFAULT_TRAINING, baseline_config, train_baseline
from netslim.train.tasks import get_task

MODELS = ("lenet300", "lenet5", "resnet20", "mobilenetv2", "vgg11bn")
TITLES = {
    "lenet300": "LeNet-300-100",
    "lenet5": "LeNet-5",
    "resnet20": "ResNet-20",
    "mobilenetv2": "MobileNetV2",
    "vgg11bn": "VGG11-BN",
}
TARGETS = {"lenet300": 0.89, "lenet5": 0.90, "resnet20": 0.92}  # the issue sets none for mobilenetv2 / vgg11bn
ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "baselines.json"
BATCH_N = 64


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def train_or_reuse(name: str, args) -> tuple[torch.nn.Module, dict, Path, object]:
    entry = model_entry(name)
    path = checkpoint_path(name)
    limit = {"limit": args.limit} if args.limit else {}
    task = get_task(entry.dataset, augment=AUGMENT.get(name, False), seed=args.seed, **limit)
    if args.reuse and path.is_file():
        model = netslim.load(path)
        info = read_description(path).get("info", {})
        if "training" not in info:
            print(f"[{name}] warning: {path} carries no training record; time/epochs unknown", flush=True)
        print(f"[{name}] reused {path}", flush=True)
        return model, info.get("training", {}), path, task
    overrides = {}
    if args.epochs_scale != 1.0:
        overrides["epochs"] = max(1, round(DEFAULT_TRAINING[name]["epochs"] * args.epochs_scale))
    cfg = baseline_config(name, seed=args.seed, **overrides)
    print(
        f"[{name}] training: {cfg.model_dump(exclude={'method'}) if hasattr(cfg, 'model_dump') else cfg}, "
        f"augment={AUGMENT.get(name, False)}",
        flush=True,
    )
    torch.set_num_threads(args.train_threads or args.threads)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    model, summary = train_baseline(name, task=task, seed=args.seed, **overrides)
    wall = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    training = {
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "seconds": round(summary["seconds"], 1),
        "wall_seconds": round(wall, 1),
        "best_val_accuracy": summary.get("best_accuracy"),
        "config": {k: v for k, v in DEFAULT_TRAINING[name].items()} | overrides,
        "augment": AUGMENT.get(name, False),
        "seed": args.seed,
        "limit": args.limit,
        "torch_threads": threads,
        "load_avg_start_end": [load0, os.getloadavg()[0]],
        "history": summary["history"],
        "date": dt.date.today().isoformat(),
    }
    netslim.save(model, path, {"model": name, "dataset": entry.dataset, "training": training})
    print(
        f"[{name}] trained {training['epochs']} epochs in {training['seconds']:.0f} s "
        f"(best val acc {training['best_val_accuracy']:.4f}); saved {path}",
        flush=True,
    )
    return model, training, path, task


def measure(name: str, model: torch.nn.Module, task, path: Path, args) -> dict:
    model.eval()
    test = task.evaluate(model, "test")
    x1, xn = task.example_inputs(1), task.example_inputs(BATCH_N)
    lat1 = measure_latency(model, x1, warmup=args.warmup, repeats=args.repeats_b1, threads=args.threads)
    latn = measure_latency(model, xn, warmup=args.warmup, repeats=args.repeats_bn, threads=args.threads)
    return {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "params": count_params(model),
        "nonzero": count_nonzero(model),
        "macs": int(sum(macs_per_layer(model, x1).values())),
        "size_bytes": size_on_disk(model, path),
        "latency_b1": lat1.as_dict(),
        f"latency_b{BATCH_N}": latn.as_dict(),
        "load_avg_at_measure": os.getloadavg()[0],
    }


def fmt_time(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def markdown_table(results: dict) -> str:
    rows = [
        "| model | test acc | target | epochs | train time | params | MACs | size on disk | latency b1 | latency b64 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        r = results.get(name)
        if r is None:
            continue
        m, t = r["metrics"], r["training"]
        acc = m["test_accuracy"]
        tgt = TARGETS.get(name)
        mark = "" if tgt is None or acc >= tgt else " (miss)"
        rows.append(
            f"| {TITLES[name]} | {100 * acc:.2f} %{mark} | {'—' if tgt is None else f'{100 * tgt:.0f} %'} | {t.get('epochs', '?')} | "
            f"{fmt_time(t.get('seconds'))} | {fmt_count(m['params'])} | {fmt_count(m['macs'])} | "
            f"{m['size_bytes'] / 1024:.0f} KiB | {m['latency_b1']['median_ms']:.2f} ms | "
            f"{m[f'latency_b{BATCH_N}']['median_ms']:.1f} ms |"
        )
    return "\n".join(rows)


TABLE_BEGIN, TABLE_END = "<!-- baselines:table -->", "<!-- /baselines:table -->"


def refresh_markdown(path: Path, table: str) -> bool:
    """Replace the table between the baselines markers of ``path``; False if no markers."""
    if not path.is_file():
        return False
    text = path.read_text()
    i, j = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if i < 0 or j < i:
        return False
    new = text[: i + len(TABLE_BEGIN)] + "\n" + table + "\n" + text[j:]
    atomic_write(path, lambda tmp: Path(tmp).write_text(new))
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--reuse", action="store_true", help="reuse the cached checkpoint when it exists")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply each model's default epochs")
    p.add_argument("--limit", type=int, default=None, help="train/test on a data subset (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for the latency measurements")
    p.add_argument(
        "--train-threads",
        type=int,
        default=None,
        help="torch threads for training (default: --threads); 1 is far faster on an oversubscribed machine",
    )
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats-b1", type=int, default=200)
    p.add_argument("--repeats-bn", type=int, default=50)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--markdown",
        type=Path,
        default=ROOT.parent / "BENCHMARKS.md",
        help="refresh the table between the baselines markers of this file (if it has them)",
    )
    p.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in MODELS]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("netslim.train.loop").setLevel(logging.INFO)  # one line per epoch

    results: dict = {}
    if args.out.is_file():
        results = json.loads(args.out.read_text()).get("models", {})
    for name in names:
        model, training, path, task = train_or_reuse(name, args)
        metrics = measure(name, model, task, path, args)
        results[name] = {
            "checkpoint": str(path),
            "training": training,
            "metrics": metrics,
            "measured": dt.datetime.now().isoformat(timespec="seconds"),
        }
        print(
            f"[{name}] test acc {metrics['test_accuracy']:.4f}, params {metrics['params']}, "
            f"MACs {metrics['macs']}, size {metrics['size_bytes']} B, "
            f"latency b1 {metrics['latency_b1']['median_ms']:.3f} ms, "
            f"b{BATCH_N} {metrics[f'latency_b{BATCH_N}']['median_ms']:.2f} ms",
            flush=True,
        )
        doc = {
            "description": "Fashion-MNIST baselines of the netslim CNN zoo (benchmarks/baselines.py)",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "cpu": cpu_name(),
                "cpu_count": os.cpu_count(),
                "threads": args.threads,
            },
            "latency_protocol": {
                "threads": args.threads,
                "warmup": args.warmup,
                "repeats_b1": args.repeats_b1,
                f"repeats_b{BATCH_N}": args.repeats_bn,
                "statistic": "median",
                "inputs": "first test images, fp32, eval mode, torch.inference_mode",
            },
            "models": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, lambda tmp, doc=doc: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"))
    table = markdown_table(results)
    print()
    print(table)
    print(f"\nwrote {args.out}")
    if not args.no_markdown and args.out == DEFAULT_OUT and refresh_markdown(args.markdown, table):
        print(f"refreshed the baselines table in {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
