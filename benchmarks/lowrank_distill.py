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

    NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/lowrank_distill.py --only svd_lenet300
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import torch

import netslim
from netslim.core.serialize import atomic_write
from netslim.distill import distill
from netslim.lowrank import svd_compress
from netslim.measure import count_params, interleaved_latency
from netslim.train.loop import FinetuneConfig, TrainConfig, fit
from netslim.train.pretrain import checkpoint_path
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "lowrank_distill.json"


def _acc(model, task) -> float:
    return round(task.evaluate(model, "test")["accuracy"] * 100, 2)


def _train_task(seed: int, augment: bool = False):
    """Training data order (and val split) by seed; fit's own seed does not shuffle batches."""
    return get_task("fashion-mnist", seed=seed, augment=augment)


def _spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0, "values": values}


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
            svd_compress(m, select="rank", rank=r, exclude=("fc3",), data_aware=aware, example=example,
                         calibration=calib)
            row["data_aware" if aware else "plain"] = _acc(m, task)
            row["params"] = count_params(m)
        out["ranks"].append(row)
    for target in (0.2, 0.3, 0.5):
        row = {"target": target}
        for aware in (False, True):
            m = copy.deepcopy(base)
            svd_compress(m, select="budget", target=target, data_aware=aware, example=example, calibration=calib)
            row["data_aware" if aware else "plain"] = _acc(m, task)
            row["params"] = count_params(m)
            row["ranks_" + ("data_aware" if aware else "plain")] = {
                n: getattr(mod, "rank", "dense") for n, mod in m.named_children() if n.startswith("fc")}
        out["budgets"].append(row)
    finetuned = []
    for seed in range(args.seeds):
        m = copy.deepcopy(base)
        svd_compress(m, select="budget", target=0.5, data_aware=True, example=example, calibration=calib)
        fit(m, _train_task(seed), FinetuneConfig(epochs=args.ft_epochs, lr=0.01, seed=seed))
        finetuned.append(_acc(m, task))
    out["finetuned_2x"] = {"target": 0.5, "data_aware": True, "epochs": args.ft_epochs, "lr": 0.01,
                           "params": count_params(m), **_spread(finetuned)}
    return out


def prune_distill(args) -> dict:
    from netslim.prune.unstructured import magnitude_prune

    task = get_task("fashion-mnist")
    base = netslim.load(checkpoint_path("lenet300"))
    res: dict = {"baseline_acc": _acc(base, task), "sparsity": 0.95, "epochs": args.ft_epochs, "lr": 0.01}
    pruned = magnitude_prune(copy.deepcopy(base), sparsity=0.95)
    res["pruned_acc"] = _acc(pruned, task)
    ft, kd = [], []
    for seed in range(args.seeds):
        train = _train_task(seed)
        m = copy.deepcopy(pruned)
        fit(m, train, FinetuneConfig(epochs=args.ft_epochs, lr=0.01, seed=seed))
        ft.append(_acc(m, task))
        m = copy.deepcopy(pruned)
        distill(m, base, task=train, epochs=args.ft_epochs, lr=0.01, seed=seed, temperature=4.0, alpha=0.9)
        kd.append(_acc(m, task))
    res["finetune"], res["distill"] = _spread(ft), _spread(kd)
    return res


def svd_minilm(args) -> dict:
    task = get_task("pydocs-sentences")
    base = netslim.build_model("minilm").eval()
    calib = task.calibration_inputs(args.minilm_calib, seed=0)
    example = task.example_inputs(1)
    ffn = r"re:encoder\.layer\.\d+\.(intermediate|output)\.dense"

    def ffn_params(m):
        return sum(p.numel() for n, p in m.named_parameters()
                   if (".intermediate.dense" in n or (".output.dense" in n and "attention" not in n))
                   and n.endswith("weight"))

    res = {"ffn_params_before": ffn_params(base), "params_before": count_params(base), "target": 0.7}
    models = {"original": base}
    for aware in (False, True):
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        svd_compress(m, select="budget", target=0.7, target_scope="selected", include=(ffn,), data_aware=aware,
                     example=example, calibration=calib)
        key = "data_aware" if aware else "plain"
        res[key] = {"fidelity": round(task.evaluate(m, "test")["fidelity"], 4), "ffn_params": ffn_params(m),
                    "params": count_params(m), "compress_s": round(time.perf_counter() - t0, 1)}
        models[key] = m
    lat_inputs = task.example_inputs(8)
    res["latency_ms_b8"] = {k: round(v, 2) for k, v in interleaved_latency(
        {"original": base, "data_aware": models["data_aware"]}, lat_inputs, rounds=5, repeats=5).items()}
    return res


def kd_resnet20(args) -> dict:
    path = checkpoint_path("resnet20")
    if not path.is_file():
        return {"skipped": f"no ResNet-20 checkpoint at {path}"}
    task = get_task("fashion-mnist")
    teacher = netslim.load(path)
    res: dict = {"teacher_acc": _acc(teacher, task), "epochs": args.kd_epochs, "student": "resnet20 width=8"}
    plain, kd = [], []
    for seed in range(args.seeds):
        cfg = dict(epochs=args.kd_epochs, lr=0.05, seed=seed, amp="bf16")
        train = _train_task(seed, augment=True)
        torch.manual_seed(seed)
        s = netslim.build_model("resnet20", width=8)
        init = copy.deepcopy(s.state_dict())
        fit(s, train, TrainConfig(**cfg))
        plain.append(_acc(s, task))
        s.load_state_dict(init)
        distill(s, teacher, task=train, temperature=4.0, alpha=0.9, **cfg)
        kd.append(_acc(s, task))
    res["student_params"] = count_params(s)
    res["no_kd"], res["kd"] = _spread(plain), _spread(kd)
    return res


SECTIONS = {"svd_lenet300": svd_lenet300, "prune_distill": prune_distill, "svd_minilm": svd_minilm,
            "kd_resnet20": kd_resnet20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--kd-epochs", type=int, default=5)
    ap.add_argument("--minilm-calib", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.only:
        t0 = time.perf_counter()
        res = SECTIONS[name](args)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["date"] = dt.date.today().isoformat()
        res["command"] = f"benchmarks/lowrank_distill.py --only {name} --seeds {args.seeds}"
        results[name] = res
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
        print(json.dumps({name: res}, indent=2), flush=True)


if __name__ == "__main__":
    main()
