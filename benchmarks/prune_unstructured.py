"""Issue 3 (first half): unstructured / N:M pruning -- accuracy, file size, sparse kernel speed.

Sections (``--only``; default: all, in this order):

* ``speed``    -- SparseLinear (compiled CSR kernel, 16-bit column indices) and torch's CSR
                  vs dense F.linear (nn.Linear) for 4096x4096 and 300x784 at 50/80/90/95 %
                  random unstructured sparsity, batch 1 and 64; interleaved rounds, medians,
                  all in the same run.
* ``lenet300`` -- ``recipes/prune_lenet300_95.yaml`` run by the recipe runner (gradual cubic
                  pruning to 95 % global, fine-tune, sparsify, sparse export); then the file
                  size of the sparse export vs the dense safetensors of the same model, and
                  what other index codings would have cost.
* ``lenet5``   -- LeNet-5 to 93 % global sparsity (gradual + fine-tune), Python API.
* ``resnet20`` -- ResNet-20 to 80 % global sparsity (gradual + fine-tune, bf16 autocast).
* ``compare``  -- one-shot, IMP, cubic gradual and lottery ticket rows on LeNet-300-100 at
                  90 % and 95 %, with their epoch budgets, for the issue's comparison table
                  (written to results/prune_compare_3a.json; benchmarks/prune_compare.py merges).

    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/prune_unstructured.py
    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/prune_unstructured.py --only speed
    .venv/bin/netslim compress recipes/prune_lenet300_95.yaml --out /tmp/run95      # the documented run,
    .venv/bin/python benchmarks/prune_unstructured.py --only lenet300 --from-run /tmp/run95   # then its size
    .venv/bin/python benchmarks/prune_unstructured.py --only compare --model resnet20 --sparsity 0.8 --epochs 2
    .venv/bin/python benchmarks/prune_unstructured.py --only compare --limit 2000 --max-steps 20 \\
        --out /tmp/p.json --compare-out /tmp/c.json                                   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import netslim
from netslim.core.cache import checkpoint_path
from netslim.core.serialize import atomic_write
from netslim.measure.latency import interleaved_latency
from netslim.prune import (
    GradualConfig,
    IMPConfig,
    LotteryConfig,
    SparseLinear,
    magnitude_prune,
    prunable_layers,
    save_sparse,
    sparsity_report,
)
from netslim.prune.kernels import _torch_csr_matmul, kernel_available
from netslim.train.loop import FinetuneConfig, fit
from netslim.train.pretrain import AUGMENT, DEFAULT_TRAINING
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "prune_unstructured_3a.json"
COMPARE_OUT = ROOT / "results" / "prune_compare_3a.json"
MACHINE = "2-core AMD EPYC (AVX-512 VNNI/BF16, no AMX), shared, torch " + torch.__version__.split("+")[0] + " CPU"
SECTIONS = ("speed", "lenet300", "lenet5", "resnet20", "compare")


def save_result(path: Path, key: str, value: Any, description: str) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update({"description": description, "machine": MACHINE, "date": dt.date.today().isoformat()})
    data.setdefault("rows" if path.name.startswith("prune_compare") else "results", {})[key] = value
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, default=str)))


def task_for(name: str, args):
    limit = {"limit": args.limit} if args.limit else {}
    return get_task("fashion-mnist", augment=AUGMENT.get(name, False), seed=0, **limit)


def global_sparsity(model) -> float:
    return sparsity_report(model)["global"]["sparsity"]


# ------------------------------------------------------------------------------ speed
class TorchCSR(nn.Module):
    """torch.sparse CSR matmul, the reference the issue measured (slower than dense at b1)."""

    def __init__(self, sp: SparseLinear):
        super().__init__()
        self.sp = sp

    def forward(self, x):
        s = self.sp
        return _torch_csr_matmul(x, s.crow, s.col_idx, s.weight_values, (s.rows, s.cols), s.bias)


def random_sparse_linear(out_f: int, in_f: int, sparsity: float, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        keep = torch.randperm(lin.weight.numel())[: round((1 - sparsity) * lin.weight.numel())]
        mask = torch.zeros(lin.weight.numel(), dtype=torch.bool)
        mask[keep] = True
        lin.weight.mul_(mask.view_as(lin.weight))
    return lin.eval()


def run_speed(args) -> None:
    rows = []
    for out_f, in_f in ((4096, 4096), (300, 784)):
        for s in (0.5, 0.8, 0.9, 0.95):
            lin = random_sparse_linear(out_f, in_f, s)
            sp = SparseLinear.from_dense(lin).eval()
            for b in (1, 64):
                x = torch.randn(b, in_f)
                big = out_f * in_f * b > 1e8  # 4096^2 at b64: ~100 ms a call on this machine
                ms = interleaved_latency(
                    {"dense": lin, "sparse": sp, "torch_csr": TorchCSR(sp)},
                    x,
                    rounds=args.rounds,
                    repeats=5 if big else 20,
                    threads=args.threads,
                )
                row = {
                    "shape": f"{out_f}x{in_f}",
                    "sparsity": s,
                    "batch": b,
                    **{f"{k}_ms": v for k, v in ms.items()},
                    "speedup": ms["dense"] / ms["sparse"],
                    "torch_csr_speedup": ms["dense"] / ms["torch_csr"],
                }
                rows.append(row)
                print(
                    f"{row['shape']:>9} s={s:.2f} b={b:<3} dense {ms['dense']:.4f} ms  sparse {ms['sparse']:.4f} ms "
                    f"({row['speedup']:.2f}x)  torch CSR {ms['torch_csr']:.4f} ms ({row['torch_csr_speedup']:.2f}x)",
                    flush=True,
                )
    save_result(
        args.out,
        "speed",
        {
            "kernel": "compiled" if kernel_available() else "fallback",
            "threads": args.threads,
            "rounds": args.rounds,
            "rows": rows,
        },
        DESCRIPTION,
    )


# ---------------------------------------------------------------------- index codings
def index_coding_bytes(w: torch.Tensor) -> dict[str, int]:
    """Bytes of the index part alone under three codings, for one 2-D weight."""
    nz = w.reshape(w.shape[0], -1) != 0
    rows, cols = nz.shape
    flat = nz.flatten().nonzero().flatten()
    gaps = torch.diff(flat, prepend=torch.tensor([-1])) - 1
    escapes = int((gaps // 255).sum())  # uint8 relative index: a filler entry per 255 skipped
    return {
        "bitmap_1bit": (rows * cols + 7) // 8,
        "delta_uint8": int(flat.numel()) + escapes * 5,
        "csr_uint16": 2 * int(flat.numel()) + 4 * (rows + 1),
    }


def run_size(model: nn.Module, args) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        sparse_path = save_sparse(model, Path(d) / "m.sparse.safetensors")
        dense_path = netslim.save(_baked(model), Path(d) / "m.safetensors")
        sizes = {"sparse_bytes": sparse_path.stat().st_size, "dense_bytes": dense_path.stat().st_size}
    sizes["ratio"] = sizes["sparse_bytes"] / sizes["dense_bytes"]
    codings: dict[str, int] = {}
    for _, m in prunable_layers(model):
        for k, v in index_coding_bytes(m.weight.detach()).items():
            codings[k] = codings.get(k, 0) + v
    sizes["index_bytes_by_coding"] = codings
    sizes["value_bytes"] = 4 * sum(int(torch.count_nonzero(m.weight)) for _, m in prunable_layers(model))
    return sizes


def _baked(model: nn.Module) -> nn.Module:
    """A dense copy with masks baked in (rebuilt from a state dict: never deepcopy a parametrized model)."""
    from netslim.models import build_model

    out = build_model("lenet300") if type(model).__name__ == "LeNet300" else None
    if out is None:
        raise ValueError("size comparison implemented for LeNet-300-100")
    state = {n: m.weight.detach() for n, m in prunable_layers(model)}
    with torch.no_grad():
        for n, m in prunable_layers(out):
            m.weight.copy_(state[n])
            m.bias.copy_(model.get_submodule(n).bias)
    return out


# ----------------------------------------------------------------------------- recipes
def run_lenet300(args) -> None:
    from netslim.recipe.runner import run_recipe
    from netslim.recipe.spec import load_recipe

    if args.from_run:  # the output folder of `netslim compress recipes/prune_lenet300_95.yaml --out DIR`
        out_dir = args.from_run
        report = json.loads((out_dir / "report.json").read_text())
        seconds = sum(s["seconds"] for s in report["steps"])
    else:
        recipe = load_recipe(ROOT.parent / "recipes" / "prune_lenet300_95.yaml")
        out_dir = Path(tempfile.mkdtemp(prefix="prune_lenet300_95_"))
        t0 = time.perf_counter()
        report = run_recipe(recipe, out_dir, data_options={"limit": args.limit} if args.limit else None)
        seconds = time.perf_counter() - t0
    result = {
        "recipe": "recipes/prune_lenet300_95.yaml",
        "out_dir": str(out_dir),
        "seconds": round(seconds, 1),
        "dense_accuracy": report["baseline"]["accuracy"],
        "test_accuracy": report["final"]["accuracy"],
        "drop_pt": round(100 * (report["baseline"]["accuracy"] - report["final"]["accuracy"]), 2),
        "sparsity": report["steps"][0]["notes"]["gradual"]["global"]["sparsity"],
        "layers": report["steps"][0]["notes"]["gradual"]["layers"],
        "baseline": report["baseline"],
        "final": report["final"],
        "skipped": report["skipped"],
        "budget_epochs": sum(_step_epochs(s["params"]) for s in report["steps"]),
    }
    pruned = _gradual_model_from_report(out_dir)
    result["size"] = run_size(pruned, args)
    result["round_trip"] = round_trip(out_dir, report, args)
    print(json.dumps({k: v for k, v in result.items() if k not in ("baseline", "final", "layers")}, indent=1))
    save_result(args.out, "lenet300_95", result, DESCRIPTION)


def _step_epochs(params: dict[str, Any]) -> int:
    """Training epochs of one report step: a ``finetune`` step's own, or its nested ``finetune:`` block's."""
    return params.get("epochs", (params.get("finetune") or {}).get("epochs", 0))


def round_trip(out_dir: Path, report: dict[str, Any], args) -> dict[str, Any]:
    """The sparse file, loaded, re-saved and loaded again: same tensors bit for bit, and the
    accuracy the report measured on the in-memory model."""
    path = next(out_dir.glob("*.sparse.safetensors"))
    first = netslim.load(path)
    with tempfile.TemporaryDirectory() as d:
        second = netslim.load(save_sparse(first, Path(d) / "again.sparse.safetensors"))
    a, b = first.state_dict(), second.state_dict()
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = task_for("lenet300", args).splits["test"][0][:1000]
    with torch.no_grad():
        same_out = torch.equal(first.eval()(x), second.eval()(x))
    acc = task_for("lenet300", args).evaluate(first, "test")["accuracy"]
    return {
        "tensors_bit_exact": same,
        "outputs_bit_exact": same_out,
        "accuracy_loaded": acc,
        "accuracy_in_report": report["final"]["accuracy"],
    }


def _gradual_model_from_report(out_dir: Path) -> nn.Module:
    """The final model of the run, loaded from its sparse artifact, as a masked LeNet-300."""
    from netslim.models import build_model

    loaded = netslim.load(next(out_dir.glob("*.sparse.safetensors")))
    model = build_model("lenet300")
    with torch.no_grad():
        for n, m in prunable_layers(model):
            src = loaded.get_submodule(n)
            m.weight.copy_(src.weight)
            m.bias.copy_(src.bias)
    return model


def prune_and_finetune(name: str, sparsity: float, args, *, epochs: int, ft_epochs: int) -> dict[str, Any]:
    """Gradual cubic pruning to ``sparsity`` for ``epochs`` then ``ft_epochs`` of fine-tuning."""
    base = DEFAULT_TRAINING[name]
    task = task_for(name, args)
    model = netslim.load(checkpoint_path(name)).to(args.device)
    dense = task.evaluate(model, "test")["accuracy"]
    fields = {
        "lr": args.lr,
        "batch_size": base["batch_size"],
        "weight_decay": base["weight_decay"],
        "amp": base.get("amp", "none"),
        "max_steps": args.max_steps,
    }
    cfg = GradualConfig(sparsity=sparsity, frequency=args.frequency, finetune={**fields, "epochs": epochs})
    t0 = time.perf_counter()
    netslim.apply(model, cfg, data=task)  # on the model's device
    after_gradual = task.evaluate(model, "test")["accuracy"]
    ft = FinetuneConfig(epochs=ft_epochs, **{**fields, "lr": args.lr / 4})
    if ft_epochs:
        fit(model, task, ft)
    acc = task.evaluate(model, "test")["accuracy"]
    row = {
        "model": name,
        "dense_accuracy": dense,
        "test_accuracy": acc,
        "drop_pt": round(100 * (dense - acc), 2),
        "accuracy_after_gradual": after_gradual,
        "sparsity": global_sparsity(model),
        "layers": sparsity_report(model)["layers"],
        "gradual": cfg.to_dict(),
        "finetune": ft.to_dict(),
        "budget_epochs": epochs + ft_epochs,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": str(args.device),
    }
    print(
        f"[{name}] {100 * sparsity:g} %: acc {acc:.4f} (dense {dense:.4f}, drop {row['drop_pt']} pt) "
        f"sparsity {row['sparsity']:.4f} {row['seconds']} s",
        flush=True,
    )
    return row


# ----------------------------------------------------------------------------- compare
def compare_rows(args) -> None:
    name = args.model
    task = task_for(name, args)
    base_model = netslim.load(checkpoint_path(name)).to(args.device)
    dense = task.evaluate(base_model, "test")["accuracy"]
    base = DEFAULT_TRAINING[name]
    fields = {
        "lr": args.lr,
        "batch_size": base["batch_size"],
        "weight_decay": base["weight_decay"],
        "amp": base.get("amp", "none"),
        "max_steps": args.max_steps,
    }
    e = args.epochs
    for s in args.sparsity:
        runs = {
            "one-shot": lambda m, s=s: _one_shot(m, task, s, fields, e),
            "imp": lambda m, s=s: _step(
                m,
                task,
                IMPConfig(sparsity=s, rounds=e, finetune={**fields, "epochs": 1}),
                f"{e} fine-tune ({e} rounds x 1) (+baseline)",
                e,
            ),
            "gradual": lambda m, s=s: _step(
                m,
                task,
                GradualConfig(sparsity=s, frequency=args.frequency, finetune={**fields, "epochs": e}),
                f"{e} fine-tune (+baseline)",
                e,
            ),
            "lottery": lambda m, s=s: _step(
                m,
                task,
                LotteryConfig(
                    sparsity=s,
                    rounds=args.lottery_rounds,
                    init="reset",
                    rewind_step=0,
                    finetune={
                        **fields,
                        "epochs": args.lottery_epochs,
                        "lr": base["lr"],
                        "warmup_epochs": base.get("warmup_epochs", 0.0),
                    },
                ),
                f"{(args.lottery_rounds + 1) * args.lottery_epochs} from scratch "
                f"({args.lottery_rounds + 1} x {args.lottery_epochs})",
                (args.lottery_rounds + 1) * args.lottery_epochs,
            ),
        }
        for method in args.methods:
            torch.manual_seed(0)
            model = netslim.load(checkpoint_path(name)).to(args.device)
            t0 = time.perf_counter()
            extra = runs[method](model)
            acc = task.evaluate(model, "test")["accuracy"]
            row = {
                "model": name,
                "sparsity": s,
                "method": method,
                "test_accuracy": acc,
                "dense_accuracy": dense,
                "drop_pt": round(100 * (dense - acc), 2),
                "achieved_sparsity": global_sparsity(model),
                "seconds": round(time.perf_counter() - t0, 1),
                "threads": args.threads,
                "limit": args.limit,
                "device": str(args.device),
                **extra,
            }
            save_result(
                args.compare_out,
                f"{name}/{s}/{method}",
                row,
                "Issue 3 method comparison, rows of benchmarks/prune_unstructured.py (3a)",
            )
            print(
                f"[{name}/{s}/{method}] acc {acc:.4f} (dense {dense:.4f}, drop {row['drop_pt']} pt) sparsity "
                f"{row['achieved_sparsity']:.4f} budget {row['budget']} {row['seconds']} s",
                flush=True,
            )


def _one_shot(model, task, s, fields, e) -> dict[str, Any]:
    magnitude_prune(model, sparsity=s)
    before = task.evaluate(model, "test")["accuracy"]
    ft = FinetuneConfig(epochs=e, **fields)
    fit(model, task, ft)
    return {
        "config": {"method": "magnitude", "sparsity": s, "scope": "global", "finetune": ft.to_dict()},
        "budget_epochs": e,
        "budget": f"{e} fine-tune (+baseline)",
        "test_accuracy_before_finetune": before,
    }


def _step(model, task, cfg, budget: str, epochs: int) -> dict[str, Any]:
    netslim.apply(model, cfg, data=task)  # on the model's device
    return {"config": cfg.to_dict(), "budget_epochs": epochs, "budget": budget}


DESCRIPTION = "Issue 3 (3a): unstructured / N:M pruning (benchmarks/prune_unstructured.py)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (speed)")
    p.add_argument("--lr", type=float, default=0.01, help="(fine-)tuning learning rate of pruning runs")
    p.add_argument("--frequency", type=int, default=100, help="dt of the cubic schedule")
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs of one-shot / IMP / gradual rows")
    p.add_argument("--lottery-epochs", type=int, default=10)
    p.add_argument("--lottery-rounds", type=int, default=1)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--methods", nargs="+", default=["one-shot", "imp", "gradual", "lottery"])
    p.add_argument("--limit", type=int, default=None, help="data subset (smoke runs)")
    p.add_argument("--max-steps", type=int, default=None, help="cap per training run (smoke runs)")
    p.add_argument(
        "--from-run",
        type=Path,
        default=None,
        help="lenet300 section: read the output folder of `netslim compress` instead of running",
    )
    p.add_argument("--model", default="lenet300", help="model of the compare section")
    p.add_argument(
        "--lenet5-epochs",
        type=int,
        nargs=2,
        default=[8, 2],
        metavar=("PRUNE", "FINETUNE"),
        help="LeNet-5 section: epochs of gradual pruning, then of fine-tuning",
    )
    p.add_argument(
        "--resnet-epochs",
        type=int,
        nargs=2,
        default=[4, 1],
        metavar=("PRUNE", "FINETUNE"),
        help="ResNet-20 section: epochs of gradual pruning, then of fine-tuning",
    )
    p.add_argument("--device", default="cpu", help="where to train (cuda: accuracy sections only, never speed)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--compare-out", type=Path, default=COMPARE_OUT)
    args = p.parse_args()
    args.device = torch.device(args.device)
    if args.device.type == "cuda":
        global MACHINE
        MACHINE = f"{torch.cuda.get_device_name(args.device)} (accuracy runs on GPU), torch {torch.__version__}"
    torch.set_num_threads(args.threads)
    for section in args.only:
        if section == "speed":
            run_speed(args)
        elif section == "lenet300":
            run_lenet300(args)
        elif section == "lenet5":
            save_result(
                args.out,
                "lenet5_93",
                prune_and_finetune("lenet5", 0.93, args, epochs=args.lenet5_epochs[0], ft_epochs=args.lenet5_epochs[1]),
                DESCRIPTION,
            )
        elif section == "resnet20":
            save_result(
                args.out,
                "resnet20_80",
                prune_and_finetune(
                    "resnet20", 0.8, args, epochs=args.resnet_epochs[0], ft_epochs=args.resnet_epochs[1]
                ),
                DESCRIPTION,
            )
        elif section == "compare":
            compare_rows(args)


if __name__ == "__main__":
    main()
