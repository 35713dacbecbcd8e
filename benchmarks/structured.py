"""Issue 4 benchmarks: structured pruning that physically shrinks models.

Parts (one per call, each < 10 min on 2 shared cores; results merge into
benchmarks/results/structured.json):

* ``cnn``: a trained zoo CNN (``--model resnet20`` | ``mobilenetv2``) pruned to ``--macs``
  of its MACs (global L2 or ``--criterion``), fine-tuned ``--epochs``; accuracy before /
  after pruning / after fine-tuning, params, MACs, file size. Saves the artifact.
* ``latency``: the saved artifact vs the baseline, interleaved medians at batch 64 and 1,
  plus the share of batch-1 time that does not scale with the batch (per-call overhead).
* ``minilm``: 50 % FFN neurons + 1/3 of heads; embedding fidelity (mean cosine to the
  unpruned encoder on pydocs test sentences) and latency.
* ``smollm2``: 25 % FFN neurons, and separately 4 of 30 blocks dropped; perplexity on the
  pydocs test split (``--blocks`` blocks of 512 tokens), from_pretrained reload check.

    /tmp/cpu env NETSLIM_CACHE=$PWD/.cache/netslim .venv/bin/python benchmarks/structured.py cnn --model resnet20
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import netslim
from netslim.core.serialize import atomic_write
from netslim.measure import count_params, interleaved_latency
from netslim.prune.structured import drop_layers, prune_channels, prune_ffn, prune_heads, total_macs
from netslim.train.loop import FinetuneConfig, fit
from netslim.train.pretrain import cache_dir, checkpoint_path
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "structured.json"


def _merge(key: str, value: dict) -> None:
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    data[key] = {**value, "date": dt.date.today().isoformat(), "torch": torch.__version__,
                 "load_avg": os.getloadavg()[0], "machine": platform.processor() or platform.machine()}
    atomic_write(OUT, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))


def _artifact(name: str) -> Path:
    return cache_dir() / "bench" / f"structured_{name}.safetensors"


def _size(model) -> int:
    with tempfile.TemporaryDirectory() as d:
        return netslim.save(model, Path(d) / "m.safetensors").stat().st_size


def cnn(args) -> dict:
    task = get_task("fashion-mnist", augment=True)
    base = netslim.load(checkpoint_path(args.model))
    acc = lambda m: round(task.evaluate(m, "test")["accuracy"] * 100, 2)  # noqa: E731
    x1 = task.example_inputs(1)
    before = {"accuracy": acc(base), "params": count_params(base), "macs": total_macs(base, x1), "bytes": _size(base)}
    kwargs = {}
    if args.criterion == "taylor":
        import itertools
        kwargs = {"batches": list(itertools.islice(task.train_batches(0, 64), 16)), "loss_fn": task.loss}
    t0 = time.perf_counter()
    model, report = prune_channels(copy.deepcopy(base), x1, target_macs=args.macs, criterion=args.criterion,
                                   scope=args.scope, round_to=args.round_to, **kwargs)
    prune_s = time.perf_counter() - t0
    pruned_acc = acc(model)
    ft = FinetuneConfig(epochs=args.epochs, lr=args.lr, amp="bf16", batch_size=128, weight_decay=5e-4)
    summary = fit(model.to(memory_format=torch.channels_last), task, ft)
    model = model.to(memory_format=torch.contiguous_format)
    path = netslim.save(model, _artifact(f"{args.model}_{args.tag}"), info={"prune_plans": [report["plan"]]})
    back = netslim.load(path)
    after = {"accuracy_pruned_no_ft": pruned_acc, "accuracy": acc(back), "params": count_params(back),
             "macs": total_macs(back, x1), "bytes": path.stat().st_size}
    return {"model": args.model, "criterion": args.criterion, "scope": args.scope, "target_macs": args.macs,
            "round_to": args.round_to, "finetune": ft.model_dump(mode="json"), "finetune_seconds": summary["seconds"],
            "prune_seconds": round(prune_s, 2), "before": before, "after": after,
            "groups": report["groups"], "artifact": str(path),
            "ratios": {k: round(after[k] / before[k], 4) for k in ("params", "macs", "bytes")},
            "accuracy_drop": round(before["accuracy"] - after["accuracy"], 2)}


def latency(args) -> dict:
    torch.set_num_threads(args.threads)
    base = netslim.load(checkpoint_path(args.model))
    pruned = netslim.load(_artifact(f"{args.model}_{args.tag}"))
    task = get_task("fashion-mnist")
    out = {"model": args.model, "tag": args.tag, "threads": args.threads}
    for b in (64, 1):
        x = task.example_inputs(b)
        t = interleaved_latency({"base": base, "pruned": pruned}, x, rounds=args.rounds,
                                repeats=20 if b == 1 else 10, threads=args.threads)
        out[f"b{b}"] = {k: round(v, 4) for k, v in t.items()} | {"speedup": round(t["base"] / t["pruned"], 3)}
    # per-call overhead at batch 1: the part of its time that does not scale with the batch,
    # 1 - (t64 / 64) / t1 (Python, dispatch, small-kernel launch costs)
    for k in ("base", "pruned"):
        out["b1"][f"overhead_share_{k}"] = round(1 - out["b64"][k] / 64 / out["b1"][k], 3)
    out["macs_ratio"] = round(total_macs(base, task.example_inputs(1)) / total_macs(pruned, task.example_inputs(1)), 3)
    return out


def minilm(args) -> dict:
    from netslim.models import build_model

    task = get_task("pydocs-sentences", limit=args.sentences)
    base = build_model("minilm")
    ref_fid = task.evaluate(base, "test")["fidelity"]
    calib = task.calibration_inputs(64, seed=0)  # dict of (64, max_length) tensors
    batches = [{k: v[i:i + 16] for k, v in calib.items()} for i in range(0, 64, 16)]
    kw = {"criterion": args.criterion, "batches": batches} if args.criterion == "activation" else {
        "criterion": args.criterion}
    model, r1 = prune_ffn(copy.deepcopy(base), 0.5, **kw)
    fid_ffn = task.evaluate(model, "test")["fidelity"]
    model, r2 = prune_heads(model, 1 / 3, **kw)
    fid = task.evaluate(model, "test")["fidelity"]
    path = netslim.save(model, _artifact("minilm"))
    back = netslim.load(path)
    fid_back = task.evaluate(back, "test")["fidelity"]
    x = task.example_inputs(32)
    torch.set_num_threads(args.threads)
    t = interleaved_latency({"base": base, "pruned": back}, x, rounds=args.rounds, repeats=5, threads=args.threads)
    return {"criterion": args.criterion, "fidelity_base": ref_fid, "fidelity_ffn50": fid_ffn,
            "fidelity_ffn50_heads33": fid,
            "fidelity_reloaded": fid_back, "params": [count_params(base), count_params(back)],
            "bytes": [_size(base), path.stat().st_size], "latency_ms_b32": t,
            "speedup_b32": round(t["base"] / t["pruned"], 3), "heads_kept": r2["groups"][:1],
            "ffn_kept": r1["groups"][:1], "sentences": args.sentences}


def smollm2(args) -> dict:
    from netslim.models import build_model
    from transformers import LlamaForCausalLM

    task = get_task("pydocs", limit=args.blocks)
    base = build_model("smollm2")
    t0 = time.perf_counter()
    ppl_base = task.evaluate(base, "test")["perplexity"]
    eval_s = time.perf_counter() - t0
    out = {"blocks_512": args.blocks, "ppl_base": ppl_base, "eval_seconds": round(eval_s, 1),
           "params_base": count_params(base)}
    n = min(8, args.blocks)
    calib = task.calibration_inputs(n, seed=0)  # (n, 512) token blocks of the calibration split
    batches = [calib[i:i + 2] for i in range(0, n, 2)]
    model, _ = prune_ffn(copy.deepcopy(base), 0.25, criterion="l2")
    out["ffn25_l2"] = {"ppl": task.evaluate(model, "test")["perplexity"]}
    model, r = prune_ffn(copy.deepcopy(base), 0.25, criterion="activation", batches=batches)
    out["ffn25"] = {"criterion": "activation", "ppl": task.evaluate(model, "test")["perplexity"],
                    "params": count_params(model), "config": r["config"]}
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        back = LlamaForCausalLM.from_pretrained(d, local_files_only=True).eval()
        ids = task.example_inputs(1)["input_ids"][:, :64]
        with torch.no_grad():
            out["ffn25"]["from_pretrained_max_abs_diff"] = float((back(ids).logits - model(ids).logits).abs().max())
    del model, back
    model, r = drop_layers(copy.deepcopy(base), 4, batches)
    out["drop4"] = {"ppl": task.evaluate(model, "test")["perplexity"], "params": count_params(model),
                    "dropped": r["dropped"], "num_hidden_layers": model.config.num_hidden_layers}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=["cnn", "latency", "minilm", "smollm2"])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--macs", type=float, default=0.5)
    p.add_argument("--criterion", default="l2", help="cnn: l2 etc.; minilm: activation (default there) or l2")
    p.add_argument("--scope", default="global")
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--tag", default="2x")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument("--blocks", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = {"cnn": cnn, "latency": latency, "minilm": minilm, "smollm2": smollm2}[args.part](args)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    key = args.part if args.part in ("minilm", "smollm2") else f"{args.part}_{args.model}_{args.tag}"
    _merge(key, {"command": "benchmarks/structured.py " + " ".join(os.sys.argv[1:]), **result})
    print(json.dumps(result, indent=1)[:3000])


if __name__ == "__main__":
    main()
