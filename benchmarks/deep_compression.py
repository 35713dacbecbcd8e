"""Issue 8 - Deep Compression end to end: prune -> share -> Huffman-coded .nsz.

For each model: run the shipped recipe ``recipes/deep_compression_<model>.yaml`` (through
the recipe runner, from the trained checkpoint), then measure from its artifacts:

* compression ratio = dense fp32 parameter bytes / whole .nsz file bytes;
* test accuracy of the baseline, after pruning, after sharing, and of the model
  ``netslim.load`` rebuilds from the .nsz (must equal the one before export);
* the per-stage table (the paper's Table 1) and the per-layer bits of ``nsz_breakdown``;
* Huffman payload bits versus the Shannon entropy of the coded symbols;
* the paper's fixed-width 5/8-bit relative index (with filler entries) versus netslim's
  Huffman-coded escape scheme, per layer, in bits;
* ``netslim.load`` time: warm (median of calls in this process) and cold (a fresh
  interpreter, imports included).

``--tradeoff`` adds LeNet-300-100 accuracy-versus-ratio points for pruning alone,
weight sharing alone and both (one-shot magnitude pruning + short fine-tuning, sharing +
centroid fine-tuning) and the plot ``benchmarks/results/deep_compression_tradeoff.png``.

    NETSLIM_CACHE=$PWD/.cache/netslim OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deep_compression.py \\
        --models lenet300,lenet5 --tradeoff
    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/deep_compression.py --models resnet20
    .venv/bin/python benchmarks/deep_compression.py --models lenet300 --smoke --out /tmp/dc.json  # minutes
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import netslim
from netslim.codec import (dense_param_bytes, encode_model, finetune_centroids, nsz_breakdown, round_codebooks,
                           share_weights)
from netslim.codec.sharing import CentroidFinetune
from netslim.core.serialize import atomic_write
from netslim.prune import magnitude_prune
from netslim.recipe import parse_recipe, run_recipe
from netslim.train.loop import FinetuneConfig, fit
from netslim.train.pretrain import checkpoint_path
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RECIPES = ROOT.parent / "recipes"
TARGETS = {"lenet300": (40.0, 0.005), "lenet5": (39.0, 0.005), "resnet20": (None, 0.01)}


def _smoke(data: dict) -> dict:
    """The same recipe with a few steps per training run (a plumbing check, not a result)."""
    steps = []
    for s in data["steps"]:
        s = dict(s)
        if s["method"] in ("gradual", "imp"):
            s.update(epochs=1, max_steps=8, frequency=2, end_step=6) if s["method"] == "gradual" else \
                s.update(epochs=1, max_steps=4)
        if s["method"] == "share":
            s["finetune"] = {**s.get("finetune", {}), "epochs": 1, "max_steps": 4}
        steps.append(s)
    return {**data, "steps": steps}


def run_pipeline(name: str, work: Path, smoke: bool, limit: int | None) -> dict:
    data = yaml.safe_load((RECIPES / f"deep_compression_{name}.yaml").read_text())
    recipe = parse_recipe(_smoke(data) if smoke else data, f"deep_compression_{name}")
    t0 = time.perf_counter()
    report = run_recipe(recipe, work / name, model_ref=name, data_options={"limit": limit} if limit else None)
    seconds = time.perf_counter() - t0
    share = next(s for s in report["steps"] if s["method"] == "share")["notes"]["share"]
    prune_step = report["steps"][0]
    nsz = Path(report["artifact"])
    dense = share["stages"][0]["bytes"]
    task = get_task("fashion-mnist", **({"limit": limit} if limit else {}))
    loaded = netslim.load(nsz)
    before_export = share["stages"][-1]["accuracy"]
    base_acc = report["baseline"]["accuracy"]
    return {
        "recipe": recipe.to_dict(), "seconds": round(seconds, 1), "artifact": str(nsz),
        "dense_bytes": dense, "nsz_bytes": nsz.stat().st_size, "ratio": round(dense / nsz.stat().st_size, 2),
        "baseline_accuracy": base_acc, "pruned_accuracy": prune_step["metrics"]["accuracy"],
        "final_accuracy": before_export, "loaded_accuracy": task.evaluate(loaded, "test")["accuracy"],
        "accuracy_drop_pt": round(100 * (base_acc - before_export), 2), "nsz_bit_exact": share["nsz_bit_exact"],
        "stages": share["stages"], "entropy": share["entropy"], "layers": share["layers"],
        "breakdown": nsz_breakdown(nsz), "index_coding": index_comparison(nsz), "load_time": load_timing(nsz),
    }


def index_comparison(nsz: Path) -> list[dict]:
    """Per layer: position bits of the paper's scheme vs netslim's (both for the same mask)."""
    rows = []
    for r in nsz_breakdown(nsz):
        if r["kind"] not in ("shared", "sparse") or r["nonzero"] == r["numel"]:
            continue
        bits = max(1, (r["clusters"] - 1).bit_length()) if r["clusters"] else 32
        value_bits = r["weight_bits"] + r["weight_table_bits"] + r["index_bits"] + r["index_table_bits"]
        paper_total = r["fixed_bits"] - 8 * r["codebook_bytes"]
        rows.append({"name": r["name"], "nonzero": r["nonzero"], "value_bits_fixed": bits,
                     "netslim_index_bits": r["index_bits"] + r["index_table_bits"],
                     "index_entropy_bits": round(r["index_entropy_bits"], 1),
                     "paper_total_bits": paper_total, "netslim_total_bits": value_bits})
    return rows


def load_timing(path: Path, repeats: int = 7) -> dict:
    netslim.load(path)  # warm caches (imports, families)
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        netslim.load(path)
        warm.append(time.perf_counter() - t0)
    code = ("import time; t0 = time.perf_counter(); import netslim; t1 = time.perf_counter(); "
            f"netslim.load({str(path)!r}); t2 = time.perf_counter(); print(t1 - t0, t2 - t1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"warm_median_s": round(statistics.median(warm), 4), "cold_import_s": round(float(out[0]), 3),
            "cold_load_s": round(float(out[1]), 3)}


# ------------------------------------------------------------------- trade-off plot
def _finetune(model, task, epochs: float, lr: float, smoke: bool) -> None:
    steps = 4 if smoke else None
    fit(model, task, FinetuneConfig(epochs=max(1, int(epochs)), lr=lr, max_steps=steps, weight_decay=1e-4))


def tradeoff(name: str, smoke: bool, limit: int | None) -> list[dict]:
    """Accuracy vs ratio for pruning alone, sharing alone and both (LeNet-300-100)."""
    task = get_task("fashion-mnist", **({"limit": limit} if limit else {}))
    base = netslim.load(checkpoint_path(name))
    dense = dense_param_bytes(base)
    points = [{"kind": "dense", "ratio": dense / len(encode_model(base)[0]),
               "accuracy": task.evaluate(base, "test")["accuracy"]}]
    ft = CentroidFinetune(epochs=1, max_steps=4 if smoke else None, lr=1e-4)
    for bits in (2, 3, 4, 5, 6, 8):                               # sharing alone
        m = netslim.load(checkpoint_path(name))
        share_weights(m, bits=bits, algorithm="lloyd")             # dense layers: Lloyd (DP too slow at 235k)
        finetune_centroids(m, task, cfg=ft)
        round_codebooks(m)
        points.append({"kind": "quantization only", "bits": bits, **_point(m, task, dense)})
    for sparsity in (0.5, 0.7, 0.8, 0.9, 0.92, 0.95, 0.97):       # pruning alone, then both
        m = netslim.load(checkpoint_path(name))
        magnitude_prune(m, sparsity=sparsity)
        _finetune(m, task, 3, 0.01, smoke)
        points.append({"kind": "pruning only", "sparsity": sparsity, **_point(m, task, dense)})
        for bits in (3, 4, 5):
            s = netslim.load(_tmp_save(m))
            share_weights(s, bits=bits)
            finetune_centroids(s, task, cfg=ft)
            round_codebooks(s)
            points.append({"kind": "pruning + quantization", "sparsity": sparsity, "bits": bits,
                           **_point(s, task, dense)})
        print(f"  tradeoff sparsity {sparsity}: {points[-4:]}", flush=True)
    return points


def _tmp_save(model) -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "netslim_dc_tradeoff.safetensors"
    return netslim.save(model, path)


def _point(model, task, dense: int) -> dict:
    data, _ = encode_model(model)
    return {"ratio": round(dense / len(data), 2), "bytes": len(data), "accuracy": task.evaluate(model, "test")["accuracy"]}


def plot(points: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = next(p for p in points if p["kind"] == "dense")
    styles = {"pruning only": ("#3b6ea5", "o"), "quantization only": ("#c0504d", "s"),
              "pruning + quantization": ("#2e8b57", "^")}
    for kind, (color, marker) in styles.items():
        pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["ratio"])
        if kind == "pruning + quantization":   # the Pareto front of the combinations
            front, best = [], -1.0
            for p in sorted(pts, key=lambda p: -p["ratio"]):
                if p["accuracy"] > best:
                    front.append(p)
                    best = p["accuracy"]
            ax.scatter([p["ratio"] for p in pts], [100 * p["accuracy"] for p in pts], color=color, marker=marker,
                       alpha=0.35, s=18)
            pts = sorted(front, key=lambda p: p["ratio"])
        ax.plot([p["ratio"] for p in pts], [100 * p["accuracy"] for p in pts], color=color, marker=marker, label=kind)
    ax.axhline(100 * base["accuracy"], color="gray", ls="--", lw=1, label="dense baseline")
    ax.axhline(100 * base["accuracy"] - 0.5, color="gray", ls=":", lw=1, label="baseline - 0.5 pt")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (dense fp32 bytes / .nsz bytes)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(100 * base["accuracy"] - 6, 100 * base["accuracy"] + 1)
    ax.set_title("LeNet-300-100 on Fashion-MNIST: accuracy vs compression")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--tradeoff", action="store_true", help="LeNet-300-100 accuracy-vs-ratio points and plot")
    ap.add_argument("--smoke", action="store_true", help="a few steps per training run (plumbing check)")
    ap.add_argument("--limit", type=int, default=None, help="data subset (smoke runs)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("NETSLIM_CACHE", ".cache/netslim")) / "runs")
    ap.add_argument("--out", type=Path, default=RESULTS / "deep_compression.json")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update({"machine": "2-core AMD EPYC (AMX), shared, torch 2.13.0 CPU", "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "date": dt.date.today().isoformat()})
    results.setdefault("models", {})
    for name in [m for m in args.models.split(",") if m]:
        print(f"== {name}", flush=True)
        res = run_pipeline(name, args.work, args.smoke, args.limit)
        target_ratio, max_drop = TARGETS.get(name, (None, None))
        res["target"] = {"ratio": target_ratio, "max_drop_pt": 100 * max_drop if max_drop else None}
        results["models"][name] = res
        _write(args.out, results)
        print(json.dumps({k: res[k] for k in ("ratio", "nsz_bytes", "baseline_accuracy", "final_accuracy",
                                              "loaded_accuracy", "accuracy_drop_pt", "load_time")}), flush=True)
    if args.tradeoff:
        points = tradeoff("lenet300", args.smoke, args.limit)
        results["tradeoff_lenet300"] = points
        png = args.out.parent / "deep_compression_tradeoff.png"
        results["tradeoff_plot"] = str(plot(points, png).relative_to(ROOT.parent)) if png.is_relative_to(ROOT.parent) \
            else str(plot(points, png))
        _write(args.out, results)


def _write(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default)))


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


if __name__ == "__main__":
    main()
