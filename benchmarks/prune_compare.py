"""Issue 3 comparison: every unstructured pruning method at the same final sparsity.

Rows of this script (the other worker's rows -- one-shot, IMP, gradual, lottery -- come
from ``benchmarks/results/prune_compare_3a.json``; ``--table`` merges both):

* ``rigl`` / ``set``   -- sparse from scratch (ERK, frequency 100, alpha 0.3), or, with
  ``--dst-from dense``, starting from the trained model's per-layer magnitude mask;
* ``movement``         -- hard movement pruning (cubic schedule) while fine-tuning;
* ``l0``               -- hard-concrete gates while fine-tuning, exact final sparsity;
* ``obd``              -- one-shot OBD (diagonal Fisher, 1024 samples) + fine-tuning.

Every fine-tuning row gets the same number of epochs (``--epochs``), on top of the dense
baseline's own training; from-scratch rows train ``--scratch-epochs``. Accuracy is on
the Fashion-MNIST test set; the dense baseline is the cached checkpoint.

    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/prune_compare.py \\
        --model lenet300 --sparsity 0.9 0.95 --epochs 4 --scratch-epochs 20
    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/prune_compare.py \\
        --model resnet20 --sparsity 0.8 --epochs 3 --dst-from dense
    .venv/bin/python benchmarks/prune_compare.py --table        # merged markdown table
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import netslim
from netslim.core.cache import checkpoint_path
from netslim.core.serialize import atomic_write
from netslim.models import model_entry
from netslim.prune.criteria import prunable_layers, sparsity_report
from netslim.prune.l0 import L0Config
from netslim.prune.movement import MovementConfig
from netslim.prune.obd import obd_prune
from netslim.prune.sparse_training import RigLConfig, SETConfig, dynamic_sparse_train
from netslim.train.loop import FinetuneConfig, fit
from netslim.train.pretrain import AUGMENT, DEFAULT_TRAINING
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "prune_compare.json"
OUT_3A = ROOT / "results" / "prune_compare_3a.json"
METHODS = ("rigl", "set", "movement", "l0", "obd")
TITLES = {"lenet300": "LeNet-300-100", "resnet20": "ResNet-20", "lenet5": "LeNet-5"}


def train_fields(name: str, args) -> dict[str, Any]:
    """Fine-tuning hyper-parameters shared by every fine-tuning row of a model."""
    base = DEFAULT_TRAINING[name]
    return {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": base["batch_size"],
        "weight_decay": base["weight_decay"],
        "amp": base.get("amp", "none"),
        "max_steps": args.max_steps,
    }


def frequency(task, fields: dict[str, Any], default: int) -> int:
    """The paper's update interval, shrunk for short (smoke) runs so the schedule fits."""
    steps = task.steps_per_epoch(fields["batch_size"]) * fields["epochs"]
    if fields.get("max_steps"):
        steps = min(steps, fields["max_steps"])
    return max(1, min(default, steps // 20))


def run_dst(cls, model, task, s: float, name: str, args) -> dict[str, Any]:
    scratch = args.dst_from == "scratch"
    fields = train_fields(name, args)
    if scratch:  # the dense baseline's own recipe, for as many epochs as asked
        base = DEFAULT_TRAINING[name]
        fields |= {"epochs": args.scratch_epochs, "lr": base["lr"], "warmup_epochs": base.get("warmup_epochs", 0.0)}
    cfg = cls(
        sparsity=s,
        distribution="erk",
        frequency=frequency(task, fields, 100),
        alpha=0.3,
        from_scratch=scratch,
        finetune=fields,
    )
    summary = dynamic_sparse_train(model, task, cfg=cfg)
    return {
        "config": cfg.to_dict(),
        "budget_epochs": fields["epochs"],
        "budget": f"{fields['epochs']} from scratch" if scratch else f"{fields['epochs']} from dense (+baseline)",
        "mask_updates": len(summary["mask_updates"]),
    }


def run_movement_row(model, task, s: float, name: str, args) -> dict[str, Any]:
    fields = train_fields(name, args)
    cfg = MovementConfig(sparsity=s, scope=args.movement_scope, frequency=frequency(task, fields, 50), finetune=fields)
    netslim.apply(model, cfg, data=task)  # on the model's device
    return {"config": cfg.to_dict(), "budget_epochs": args.epochs, "budget": f"{args.epochs} fine-tune (+baseline)"}


def run_l0_row(model, task, s: float, name: str, args) -> dict[str, Any]:
    l0_opts = {k: v for k, v in (("gate_lr", args.gate_lr), ("lambda_lr", args.lambda_lr)) if v}
    cfg = L0Config(sparsity=s, exact=True, **l0_opts, finetune=train_fields(name, args))
    notes = netslim.report_of(netslim.apply(model, cfg, data=task)).notes  # on the model's device
    return {
        "config": cfg.to_dict(),
        "budget_epochs": args.epochs,
        "budget": f"{args.epochs} fine-tune (+baseline)",
        **{k: notes[k] for k in ("expected_density_end", "gate_sparsity", "lambda_end")},
    }


def run_obd_row(model, task, s: float, name: str, args) -> dict[str, Any]:
    t0 = time.perf_counter()
    n = min(1024, len(task.splits["train"][0])) if hasattr(task, "splits") else 1024
    obd_prune(model, task, sparsity=s, scope="global", num_samples=n)
    fisher_s = time.perf_counter() - t0
    one_shot = task.evaluate(model, "test")["accuracy"]
    fields = train_fields(name, args)
    ft = FinetuneConfig(**fields)
    fit(model, task, ft)
    return {
        "config": {
            "method": "obd",
            "sparsity": s,
            "scope": "global",
            "num_samples": n,
            "finetune": ft.model_dump(mode="json"),
        },
        "budget_epochs": args.epochs,
        "budget": f"{args.epochs} fine-tune (+baseline)",
        "obd_seconds": round(fisher_s, 1),
        "test_accuracy_before_finetune": one_shot,
    }


RUNNERS: dict[str, Callable] = {
    "rigl": lambda *a: run_dst(RigLConfig, *a),
    "set": lambda *a: run_dst(SETConfig, *a),
    "movement": run_movement_row,
    "l0": run_l0_row,
    "obd": run_obd_row,
}


def achieved_sparsity(model) -> float:
    layers = {n for n, _ in prunable_layers(model)}
    rep = sparsity_report(model)["layers"]
    zeros = sum(rep[n]["zeros"] for n in layers)
    return zeros / sum(rep[n]["params"] for n in layers)


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_row(path: Path, key: str, row: dict[str, Any], header: dict[str, Any]) -> None:
    data = load_results(path) or header
    data.setdefault("rows", {})[key] = row
    data.update({k: v for k, v in header.items() if k != "rows"})
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, default=str)))


def machine(device: torch.device) -> str:
    version = torch.__version__.split("+")[0]
    if device.type == "cuda":  # accuracy runs only; every timing in these tables is the CPU's
        return f"{torch.cuda.get_device_name(device)} (accuracy runs on GPU), torch {version}"
    return f"2-core AMD EPYC (AVX-512 VNNI/BF16, no AMX), shared, torch {version} CPU"


def run(args) -> None:
    torch.set_num_threads(args.threads)
    name = args.model
    args.device = torch.device(args.device)
    base = netslim.load(checkpoint_path(name)).to(args.device)
    limit = {"limit": args.limit} if args.limit else {}
    task = get_task(model_entry(name).dataset, augment=AUGMENT.get(name, False), seed=0, **limit)
    dense_acc = task.evaluate(base, "test")["accuracy"]
    header = {
        "description": "Issue 3 method comparison (benchmarks/prune_compare.py)",
        "machine": machine(args.device),
        "date": dt.date.today().isoformat(),
        "rows": {},
    }
    print(f"[{name}] dense test accuracy {dense_acc:.4f}", flush=True)
    for s in args.sparsity:
        for method in args.methods:
            torch.manual_seed(0)
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            extra = RUNNERS[method](model, task, s, name, args)
            seconds = time.perf_counter() - t0
            acc = task.evaluate(model, "test")["accuracy"]
            row = {
                "model": name,
                "sparsity": s,
                "method": method,
                "test_accuracy": acc,
                "dense_accuracy": dense_acc,
                "drop_pt": round(100 * (dense_acc - acc), 2),
                "achieved_sparsity": achieved_sparsity(model),
                "seconds": round(seconds, 1),
                "threads": args.threads,
                "limit": args.limit,
                "device": str(args.device),
                **extra,
            }
            key = f"{name}/{s}/{method}" + (f"/{args.dst_from}" if method in ("rigl", "set") else "")
            save_row(args.out, key, row, header)
            print(
                f"[{key}] acc {acc:.4f} (dense {dense_acc:.4f}, drop {row['drop_pt']} pt) sparsity "
                f"{row['achieved_sparsity']:.4f} budget {row['budget']} {seconds:.0f}s",
                flush=True,
            )


# ------------------------------------------------------------------------------ table
def _rows_3a() -> list[dict[str, Any]]:
    data = load_results(OUT_3A)
    rows = data.get("rows", data.get("results", []))
    return list(rows.values()) if isinstance(rows, dict) else list(rows)


def table(args) -> str:
    mine = list(load_results(args.out).get("rows", {}).values())
    rows = _rows_3a() + mine
    order = {m: i for i, m in enumerate(("one-shot", "magnitude", "imp", "gradual", "lottery", *METHODS))}
    lines = []
    for model, s in sorted({(r["model"], r["sparsity"]) for r in rows}, key=lambda k: (k[0] != "lenet300", k)):
        group = sorted(
            (r for r in rows if (r["model"], r["sparsity"]) == (model, s)),
            key=lambda r: (order.get(r["method"], 99), r.get("budget", "")),
        )
        dense = group[0]["dense_accuracy"]
        lines += [
            f"\n**{TITLES.get(model, model)} at {100 * s:g} % sparsity** (dense baseline {100 * dense:.2f} %)\n",
            "| method | training budget (epochs) | achieved sparsity | test acc. | Δ vs dense (pt) | wall s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in group:
            lines.append(
                f"| {r['method']} | {r.get('budget', r.get('budget_epochs'))} | "
                f"{100 * r['achieved_sparsity']:.2f} % | {100 * r['test_accuracy']:.2f} % | "
                f"{-r['drop_pt']:+.2f} | {r.get('seconds', '')} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet300")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs of every fine-tuning row")
    p.add_argument("--scratch-epochs", type=int, default=20, help="epochs of RigL/SET from scratch")
    p.add_argument("--dst-from", choices=("scratch", "dense"), default="scratch")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--movement-scope", choices=("layer", "global"), default="global")
    p.add_argument("--max-steps", type=int, default=None, help="cap per training run (smoke runs)")
    p.add_argument("--limit", type=int, default=None, help="data subset (smoke runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where to train (cuda: accuracy rows only, never timings)")
    p.add_argument("--gate-lr", type=float, default=None, help="L0 gate learning rate (default: L0Config's)")
    p.add_argument("--lambda-lr", type=float, default=None, help="L0 multiplier ascent rate (default: L0Config's)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--table", action="store_true", help="print the merged markdown table and exit")
    args = p.parse_args()
    if args.table:
        print(table(args))
        return
    run(args)


if __name__ == "__main__":
    main()
