"""Issue 7 benchmarks: SVD (plain vs data-aware), distillation, prune + distill.

Sections (``--only`` picks some; results merge into benchmarks/results/lowrank_distill.json):

* ``svd_lenet300``: accuracy before fine-tuning over uniform ranks and over global budgets,
  plain vs data-aware SVD; then the 2x budget (data-aware) fine-tuned briefly, per seed.
* ``prune_distill``: LeNet-300-100 at 95 % magnitude sparsity, then ``finetune`` vs ``distill``
  (teacher = the unpruned model), same epochs / lr / batches, per seed.
* ``svd_minilm``: MiniLM FFN layers at 70 % of their params, plain vs data-aware SVD,
  fidelity before any training, interleaved latency.
* ``kd_resnet20``: half-width ResNet-20 trained from scratch with vs without KD from the
  trained ResNet-20 (needs its checkpoint), per seed.
* ``prune_distill_resnet20``: ResNet-20 channel-pruned to half its MACs, then fine-tuning vs
  distillation from the unpruned model, same epochs / lr / batches, per seed.

    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/lowrank_distill.py --only svd_lenet300
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import record
import torch

import netslim
from netslim.core.cache import checkpoint_path
from netslim.distill import DistillConfig, distill_from
from netslim.lowrank import SVDConfig, svd_compress, svd_layers
from netslim.measure import count_params, interleaved_latency
from netslim.train.loop import FinetuneConfig, TrainConfig, fit
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "lowrank_distill.json"


def _acc(model, task) -> float:
    return round(task.evaluate(model, "test")["accuracy"] * 100, 2)


def _train_task(seed: int, augment: bool = False):
    """Training data order (and val split) by seed; fit's own seed does not shuffle batches."""
    return get_task("fashion-mnist", seed=seed, augment=augment)


def _spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "values": values,
    }


def svd_lenet300(args) -> dict:
    task = get_task("fashion-mnist")
    base = netslim.load(checkpoint_path("lenet300"))
    calib = task.calibration_inputs(512, seed=0)
    example = task.example_inputs(1)
    out = {"baseline_acc": _acc(base, task), "baseline_params": count_params(base), "ranks": [], "budgets": []}
    for r in (8, 16, 32, 64):
        row = {"rank": r}
        for aware in (False, True):
            m = copy.deepcopy(base)
            svd_layers(
                m,
                SVDConfig(select="rank", rank=r, exclude=("fc3",), data_aware=aware),
                example=example,
                calibration=calib,
            )
            row["data_aware" if aware else "plain"] = _acc(m, task)
            row["params"] = count_params(m)
        out["ranks"].append(row)
    for target in (0.2, 0.3, 0.5):
        row = {"target": target}
        for aware in (False, True):
            m = copy.deepcopy(base)
            svd_layers(
                m, SVDConfig(select="budget", target=target, data_aware=aware), example=example, calibration=calib
            )
            row["data_aware" if aware else "plain"] = _acc(m, task)
            row["params"] = count_params(m)
            row["ranks_" + ("data_aware" if aware else "plain")] = {
                n: getattr(mod, "rank", "dense") for n, mod in m.named_children() if n.startswith("fc")
            }
        out["budgets"].append(row)
    finetuned = []
    for seed in range(args.seeds):
        m = copy.deepcopy(base)
        svd_layers(m, SVDConfig(select="budget", target=0.5, data_aware=True), example=example, calibration=calib)
        fit(m, _train_task(seed), FinetuneConfig(epochs=args.ft_epochs, lr=0.01, seed=seed))
        finetuned.append(_acc(m, task))
    out["finetuned_2x"] = {
        "target": 0.5,
        "data_aware": True,
        "epochs": args.ft_epochs,
        "lr": 0.01,
        "params": count_params(m),
        **_spread(finetuned),
    }
    return out


def prune_distill(args) -> dict:
    """95 %-sparse LeNet-300: plain fine-tuning vs distillation from the unpruned model, same
    epochs / lr / batches. T and α are chosen on the validation split (seed 0); the test
    accuracy is then reported over seeds for the chosen and for the default (T=4, α=0.9)."""
    from netslim.prune.unstructured import magnitude_prune

    task = get_task("fashion-mnist")
    base = netslim.load(checkpoint_path("lenet300"))
    res: dict = {"baseline_acc": _acc(base, task), "sparsity": 0.95, "epochs": args.ft_epochs, "lr": 0.01}
    pruned = magnitude_prune(copy.deepcopy(base), sparsity=0.95)
    res["pruned_acc"] = _acc(pruned, task)

    def run_kd(seed, t, a, split="test"):
        train = _train_task(seed)
        m = copy.deepcopy(pruned)
        distill_from(
            m,
            base,
            DistillConfig(
                finetune={"epochs": args.ft_epochs, "lr": 0.01, "seed": seed}, distill_temperature=t, distill=a
            ),
            task=train,
        )
        return _acc(m, task) if split == "test" else round(train.evaluate(m, "val")["accuracy"] * 100, 2)

    grid = [(4.0, 0.9), (4.0, 0.5), (2.0, 0.5), (1.0, 0.5)]
    res["val_seed0"] = [{"temperature": t, "alpha": a, "val": run_kd(0, t, a, "val")} for t, a in grid]
    best = max(res["val_seed0"], key=lambda r: r["val"])
    chosen = (best["temperature"], best["alpha"])
    res["chosen"] = {"temperature": chosen[0], "alpha": chosen[1]}
    ft, kd, kd_default = [], [], []
    for seed in _seeds(args):
        m = copy.deepcopy(pruned)
        fit(m, _train_task(seed), FinetuneConfig(epochs=args.ft_epochs, lr=0.01, seed=seed))
        ft.append(_acc(m, task))
        kd.append(run_kd(seed, *chosen))
        kd_default.append(kd[-1] if chosen == (4.0, 0.9) else run_kd(seed, 4.0, 0.9))
    res["finetune"], res["distill"], res["distill_T4_a0.9"] = _spread(ft), _spread(kd), _spread(kd_default)
    return res


MINILM_VARIANTS = {  # name -> svd options on top of the FFN budget
    "plain": {"data_aware": False},
    "data_aware": {"data_aware": True},
    "sequential": {"data_aware": True, "sequential": True},
    "output_alloc": {"data_aware": True, "allocation": "output"},
    "output_alloc_sequential": {"data_aware": True, "allocation": "output", "sequential": True},
    "output_aware": {"data_aware": True, "output_aware": True},
    "output_aware_sequential": {"data_aware": True, "output_aware": True, "sequential": True},
}


def svd_minilm(args) -> dict:
    """MiniLM FFN Linears at ``--minilm-target`` of their params: fidelity before any training per
    variant (plain / data-aware / + sequential refit / + output-sensitivity allocation), then
    interleaved latency of the original against the last variant."""
    task = get_task("pydocs-sentences")
    base = netslim.build_model("minilm").eval()
    calib = task.calibration_inputs(args.minilm_calib, seed=0)
    example = task.example_inputs(1)
    ffn = r"re:encoder\.layer\.\d+\.(intermediate|output)\.dense"

    def ffn_params(m):
        return sum(
            p.numel()
            for n, p in m.named_parameters()
            if (".intermediate.dense" in n or (".output.dense" in n and "attention" not in n)) and n.endswith("weight")
        )

    res = {
        "ffn_params_before": ffn_params(base),
        "params_before": count_params(base),
        "target": args.minilm_target,
        "calibration_sentences": args.minilm_calib,
        "damping": args.minilm_damping,
        "variants": {},
    }
    models = {"original": base}
    for key in args.minilm_variants:
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        svd_layers(
            m,
            SVDConfig(
                select="budget",
                target=args.minilm_target,
                target_scope="selected",
                include=(ffn,),
                damping=args.minilm_damping,
                **MINILM_VARIANTS[key],
            ),
            example=example,
            calibration=calib,
        )
        res["variants"][key] = {
            "fidelity": round(task.evaluate(m, "test")["fidelity"], 4),
            "ffn_params": ffn_params(m),
            "params": count_params(m),
            "compress_s": round(time.perf_counter() - t0, 1),
            "ranks": {n: mod.rank for n, mod in m.named_modules() if type(mod).__name__ == "LowRankLinear"},
        }
        print(key, res["variants"][key], flush=True)
        models = {"original": base, key: m}
    if args.minilm_latency and len(models) > 1:
        lat_inputs = task.example_inputs(8)
        res["latency_ms_b8"] = {
            k: round(v, 2) for k, v in interleaved_latency(models, lat_inputs, rounds=5, repeats=5).items()
        }
    return res


def _seeds(args) -> range:
    return range(args.seed_start, args.seed_start + args.seeds)


def _channels_last(m: torch.nn.Module) -> torch.nn.Module:
    """oneDNN's NHWC convs are faster per step on CPU (as in netslim.train.pretrain)."""
    return m.to(memory_format=torch.channels_last)


def _resnet20_teacher():
    path = checkpoint_path("resnet20")
    return netslim.load(path) if path.is_file() else None


def kd_resnet20(args) -> dict:
    teacher = _resnet20_teacher()
    if teacher is None:
        return {"skipped": "no ResNet-20 checkpoint"}
    task = get_task("fashion-mnist")
    res: dict = {
        "teacher_acc": _acc(teacher, task),
        "teacher_params": count_params(teacher),
        "epochs": args.kd_epochs,
        "lr": 0.05,
        "temperature": 4.0,
        "alpha": 0.9,
        "student": "resnet20 width=8",
        "seeds": list(_seeds(args)),
    }
    _channels_last(teacher)
    plain, kd = [], []
    for seed in _seeds(args):
        cfg = dict(epochs=args.kd_epochs, lr=0.05, seed=seed, amp="bf16")
        train = _train_task(seed, augment=True)
        torch.manual_seed(seed)
        s = netslim.build_model("resnet20", width=8)
        init = copy.deepcopy(s.state_dict())
        fit(_channels_last(s), train, TrainConfig(**cfg))
        plain.append(_acc(s, task))
        s.load_state_dict(init)
        distill_from(
            _channels_last(s), teacher, DistillConfig(distill_temperature=4.0, distill=0.9, finetune=cfg), task=train
        )
        kd.append(_acc(s, task))
    res["student_params"] = count_params(s)
    res["no_kd"], res["kd"] = _spread(plain), _spread(kd)
    return res


def _pd_variant(spec: str) -> dict:
    """``T:alpha[:hint_weight]`` -> distill overrides; a hint weight > 0 adds FitNets hints on the
    three stage outputs (1×1 adapters, least-squares initialised: pruning shrank the widths)."""
    parts = [float(v) for v in spec.split(":")]
    if len(parts) not in (2, 3):
        raise SystemExit(f"--pd-variants: expected 'T:alpha' or 'T:alpha:hint_weight', got {spec!r}")
    kw = {"distill_temperature": parts[0], "distill": parts[1]}
    if len(parts) == 3 and parts[2] > 0:
        kw.update(hints={s: s for s in ("layer1", "layer2", "layer3")}, hint_weight=parts[2])
    return kw


def prune_distill_resnet20(args) -> dict:
    """ResNet-20 channel-pruned to ``--pd-macs`` of its MACs (global L2, shrunk), then plain
    fine-tuning vs distillation from the unpruned model (each ``--pd-variants`` entry): same
    epochs, lr, batches, augmentation and data order per seed. Test accuracy of the epoch best
    on validation, and that validation accuracy (for choosing a variant without the test set)."""
    from netslim.prune.structured.channels import shrink_channels

    teacher = _resnet20_teacher()
    if teacher is None:
        return {"skipped": "no ResNet-20 checkpoint"}
    task = get_task("fashion-mnist")
    pruned, report = shrink_channels(
        copy.deepcopy(teacher), task.example_inputs(1), target_macs=args.pd_macs, criterion="l2", scope="global"
    )
    variants = args.pd_variants or [f"4:{args.pd_alpha}"]
    res: dict = {
        "baseline_acc": _acc(teacher, task),
        "params_before": report["params_before"],
        "params_after": report["params_after"],
        "macs_kept": round(report["macs_after"] / report["macs_before"], 4),
        "pruned_acc": _acc(pruned, task),
        "epochs": args.kd_epochs,
        "lr": args.pd_lr,
        "variants": variants,
        "teacher_split": args.pd_teacher_split,
    }
    _channels_last(teacher)
    test: dict[str, list] = {}
    val: dict[str, list] = {}
    for seed in _seeds(args):
        cfg = dict(epochs=args.kd_epochs, lr=args.pd_lr, seed=seed, amp="bf16")
        row = {"seed": seed}
        arms = ([("finetune", None)] if "finetune" in args.pd_arms else []) + (
            [(f"distill_{v}", v) for v in variants] if "distill" in args.pd_arms else []
        )
        for name, spec in arms:
            m = _channels_last(copy.deepcopy(pruned))
            train = _train_task(0 if args.pd_teacher_split else seed, augment=True)
            # --pd-teacher-split: train/val split of the teacher's training (seed 0), batch order and
            # augmentation by ``seed`` (ImageClassification draws them from ``.seed``). Otherwise the
            # val split of seed S != 0 is ~90 % images the teacher was trained on.
            train.seed = seed
            if spec is None:
                summary = fit(m, train, FinetuneConfig(**cfg))
            else:
                summary = distill_from(m, teacher, DistillConfig(**_pd_variant(spec), finetune=cfg), task=train)
            test.setdefault(name, []).append(_acc(m, task))
            val.setdefault(name, []).append(round(summary["best_accuracy"] * 100, 2))
            row[name] = (test[name][-1], val[name][-1])
        print(row, flush=True)
    for name in test:
        res[name] = _spread(test[name])
        res[name + "_val"] = _spread(val[name])
    return res


def svd_resnet20(args) -> dict:
    """Before fine-tuning: plain vs data-aware channel SVD over global budgets, Tucker-2 by energy;
    then the 2x budget (data-aware) fine-tuned briefly, per seed."""
    base = _resnet20_teacher()
    if base is None:
        return {"skipped": "no ResNet-20 checkpoint"}
    task = get_task("fashion-mnist")
    calib = task.calibration_inputs(512, seed=0)
    example = task.example_inputs(1)
    res: dict = {"baseline_acc": _acc(base, task), "baseline_params": count_params(base)}

    def convs(m):
        return {
            n: getattr(mod, "rank", getattr(mod, "ranks", "dense"))
            for n, mod in m.named_modules()
            if type(mod).__name__ in ("LowRankConv2d", "TuckerConv2d", "LowRankLinear")
        }

    if args.table:
        res["budgets"], res["tucker"] = [], []
        for target in (0.35, 0.5, 0.7):
            row = {"target": target}
            for aware in (False, True):
                m = copy.deepcopy(base)
                svd_layers(
                    m, SVDConfig(select="budget", target=target, data_aware=aware), example=example, calibration=calib
                )
                key = "data_aware" if aware else "plain"
                row[key], row["params_" + key], row["ranks_" + key] = _acc(m, task), count_params(m), convs(m)
            res["budgets"].append(row)
        for energy in (0.8, 0.9):
            m = copy.deepcopy(base)
            svd_compress(m, example, select="energy", energy=energy, conv_scheme="tucker")
            res["tucker"].append({"energy": energy, "acc": _acc(m, task), "params": count_params(m)})
    finetuned = []
    for seed in _seeds(args):
        m = copy.deepcopy(base)
        svd_layers(m, SVDConfig(select="budget", target=0.5, data_aware=True), example=example, calibration=calib)
        res["before_ft_2x"] = _acc(m, task)
        fit(
            _channels_last(m),
            _train_task(seed, augment=True),
            FinetuneConfig(epochs=args.ft_epochs, lr=args.ft_lr, seed=seed, amp="bf16"),
        )
        finetuned.append(_acc(m.to(memory_format=torch.contiguous_format), task))
    if finetuned:
        res["finetuned_2x"] = {
            "target": 0.5,
            "data_aware": True,
            "epochs": args.ft_epochs,
            "lr": args.ft_lr,
            "seeds": list(_seeds(args)),
            "params": count_params(m),
            **_spread(finetuned),
        }
    return res


def _mlp(h1: int, h2: int) -> torch.nn.Module:
    """A LeNet-300-100-shaped MLP with hidden widths h1, h2 (the small dense baseline)."""
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(784, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 10))


def _mlp_width_for(params: int) -> tuple[int, int]:
    """Largest h1 (h2 = h1 // 3, LeNet-300-100's ratio) whose MLP has <= ``params`` params."""
    h1 = 3
    while count_params(_mlp(h1 + 1, (h1 + 1) // 3)) <= params:
        h1 += 1
    return h1, h1 // 3


def train_big(args) -> dict:
    """Train LeNet-300-100 briefly, SVD it to a share of its params, fine-tune; vs a small dense MLP
    with the same final params trained (a) the same epochs, (b) the same training MACs."""
    task = get_task("fashion-mnist")
    calib = task.calibration_inputs(512, seed=0)
    example = task.example_inputs(1)
    big_epochs, ft_epochs, lr = args.big_epochs, 1, 0.05
    res: dict = {"big_epochs": big_epochs, "ft_epochs": ft_epochs, "lr": lr, "rows": []}
    for target in (0.25, 0.1):
        big_acc, comp_acc, same_ep, same_mac = [], [], [], []
        for seed in range(args.seeds):
            train = _train_task(seed)
            torch.manual_seed(seed)
            big = netslim.build_model("lenet300")
            big_params = count_params(big)
            fit(big, train, TrainConfig(epochs=big_epochs, lr=lr, seed=seed))
            big_acc.append(_acc(big, task))
            svd_layers(
                big, SVDConfig(select="budget", target=target, data_aware=True), example=example, calibration=calib
            )
            final = count_params(big)
            fit(big, train, FinetuneConfig(epochs=ft_epochs, lr=0.01, seed=seed))
            comp_acc.append(_acc(big, task))
            h1, h2 = _mlp_width_for(final)
            # Training MACs of an MLP ∝ its params: big_epochs × big + ft × final.
            mac_epochs = round((big_epochs * big_params + ft_epochs * final) / count_params(_mlp(h1, h2)))
            for epochs, acc in ((big_epochs + ft_epochs, same_ep), (mac_epochs, same_mac)):
                torch.manual_seed(seed)
                small = _mlp(h1, h2)
                fit(small, train, TrainConfig(epochs=epochs, lr=lr, seed=seed))
                acc.append(_acc(small, task))
        res["rows"].append(
            {
                "target": target,
                "big_params": big_params,
                "compressed_params": final,
                "small_widths": [h1, h2],
                "small_params": count_params(_mlp(h1, h2)),
                "small_epochs_same_macs": mac_epochs,
                "big_before_svd": _spread(big_acc),
                "big_svd_finetuned": _spread(comp_acc),
                "small_same_epochs": _spread(same_ep),
                "small_same_macs": _spread(same_mac),
            }
        )
    return res


def activation_rank_lenet300(args) -> dict:
    """Rank pruning measured after the ReLU vs before it (identity), same tolerance, no training."""
    from netslim.lowrank import ActivationRankConfig, prune_ranks

    task = get_task("fashion-mnist")
    base = netslim.load(checkpoint_path("lenet300"))
    calib = task.calibration_inputs(512, seed=0)
    res: dict = {"baseline_acc": _acc(base, task), "baseline_params": count_params(base), "rows": []}
    for tol in (0.02, 0.05, 0.1, 0.2):
        row = {"tolerance": tol}
        for act in ("relu", "identity"):
            m = copy.deepcopy(base)
            prune_ranks(m, ActivationRankConfig(tolerance=tol, activation=act, exclude=("fc3",)), calib)
            row[act] = {
                "acc": _acc(m, task),
                "params": count_params(m),
                "ranks": {n: getattr(m, n).rank if hasattr(getattr(m, n), "rank") else "dense" for n in ("fc1", "fc2")},
            }
        res["rows"].append(row)
    return res


def svd_minilm_calib(args) -> dict:
    """Data-aware MiniLM FFN SVD: fidelity vs calibration size, damping and FFN budget."""
    task = get_task("pydocs-sentences")
    base = netslim.build_model("minilm").eval()
    example = task.example_inputs(1)
    ffn = r"re:encoder\.layer\.\d+\.(intermediate|output)\.dense"
    rows = []
    for n, damping, target in ((2000, 0.01, 0.7), (2000, 0.01, 0.8)):
        m = copy.deepcopy(base)
        svd_layers(
            m,
            SVDConfig(
                select="budget",
                target=target,
                target_scope="selected",
                include=(ffn,),
                data_aware=True,
                damping=damping,
            ),
            example=example,
            calibration=task.calibration_inputs(n, seed=0),
        )
        rows.append(
            {
                "calibration_sentences": n,
                "damping": damping,
                "target": target,
                "fidelity": round(task.evaluate(m, "test")["fidelity"], 4),
            }
        )
        print(rows[-1], flush=True)
    return {"rows": rows}


SECTIONS = {
    "svd_lenet300": svd_lenet300,
    "prune_distill": prune_distill,
    "svd_minilm": svd_minilm,
    "kd_resnet20": kd_resnet20,
    "train_big": train_big,
    "svd_resnet20": svd_resnet20,
    "activation_rank": activation_rank_lenet300,
    "svd_minilm_calib": svd_minilm_calib,
    "prune_distill_resnet20": prune_distill_resnet20,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--kd-epochs", type=int, default=5)
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument(
        "--table",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="svd_resnet20: the before-fine-tuning table",
    )
    ap.add_argument("--ft-lr", type=float, default=0.01)
    ap.add_argument("--pd-macs", type=float, default=0.5, help="prune_distill_resnet20: share of MACs kept")
    ap.add_argument("--pd-lr", type=float, default=0.02, help="prune_distill_resnet20: recovery lr (both arms)")
    ap.add_argument("--pd-alpha", type=float, default=0.9, help="prune_distill_resnet20: soft-loss weight")
    ap.add_argument(
        "--pd-variants",
        nargs="*",
        default=None,
        help="prune_distill_resnet20: distill settings 'T:alpha[:hint_weight]' (default 4:<pd-alpha>)",
    )
    ap.add_argument(
        "--pd-teacher-split",
        action="store_true",
        help="prune_distill_resnet20: keep the teacher's train/val split, vary only the order",
    )
    ap.add_argument("--pd-arms", nargs="+", default=["finetune", "distill"], choices=["finetune", "distill"])
    ap.add_argument("--tag", default="", help="suffix of the result key (split runs by seed)")
    ap.add_argument("--big-epochs", type=int, default=3)
    ap.add_argument("--minilm-calib", type=int, default=256)
    ap.add_argument("--minilm-target", type=float, default=0.7)
    ap.add_argument("--minilm-damping", type=float, default=0.01)
    ap.add_argument("--minilm-variants", nargs="+", default=list(MINILM_VARIANTS), choices=list(MINILM_VARIANTS))
    ap.add_argument("--minilm-latency", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only:  # one record per section, under its key (+ --tag) of the shared file
        rec = record.start(name + args.tag)
        res = SECTIONS[name](args)
        res["seeds_run"] = list(_seeds(args))
        record.update(args.out, name + args.tag, record.finish(rec, res))
        print(json.dumps({name: res}, indent=2), flush=True)


if __name__ == "__main__":
    main()
