"""Issue 4 benchmarks: structured pruning that physically shrinks models.

Parts (one per call, each < 10 min on 2 shared cores; results merge into
benchmarks/results/structured.json):

* ``cnn``: a trained zoo CNN (``--model resnet20`` | ``mobilenetv2``) pruned to ``--macs``
  of its MACs (global L2 or ``--criterion``), fine-tuned ``--epochs``; accuracy before /
  after pruning / after fine-tuning, params, MACs, file size. Saves the artifact.
* ``torch_pruning``: the same model, MAC target and fine-tuning through Torch-Pruning
  (``--tag`` must differ from the netslim run's, e.g. ``tp2x``).
* ``tp_scores``: why the two keep different channels: both L2 group importances per group
  (rank correlation, spread) and the channels each artifact kept.
* ``convs``: each ResNet-20 3x3 conv shape alone at batch 64 (why width alone buys little time);
* ``blocks``: which residual blocks ``layers`` picks by itself (influence, influence per ms);
* ``plans``: latency of candidate per-layer plans (``--widths``, with blocks to drop) before any
  training, to choose a plan that is fast as well as small;
* ``latency``: the saved artifacts (``--tag 2x,tp2x``) vs the baseline, interleaved medians at
  batch 64 and 1, plus the share of batch-1 time that does not scale with the batch (per-call
  overhead); keyed by ``--threads``.
* ``sizes``: file bytes of the artifacts with their prune plans as stored now, and without them.
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
from netslim.core.cache import cache_dir, checkpoint_path
from netslim.core.serialize import atomic_write
from netslim.measure import count_params, interleaved_latency
from netslim.prune.structured import (
    drop_residual_blocks,
    drop_transformer_blocks,
    shrink_channels,
    shrink_ffn,
    shrink_heads,
    total_macs,
)
from netslim.train.loop import Callback, FinetuneConfig, fit
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "structured.json"


def _merge(key: str, value: dict) -> None:
    import fcntl

    # parts run as concurrent jobs: the read-modify-write of the shared JSON is serialised
    with open(cache_dir() / "bench" / "structured.json.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(OUT.read_text()) if OUT.is_file() else {}
        data[key] = {
            **value,
            "date": dt.date.today().isoformat(),
            "torch": torch.__version__,
            "load_avg": os.getloadavg()[0],
            "machine": platform.processor() or platform.machine(),
        }
        atomic_write(OUT, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))


def _artifact(name: str) -> Path:
    return cache_dir() / "bench" / f"structured_{name}.safetensors"


def _size(model) -> int:
    with tempfile.TemporaryDirectory() as d:
        return netslim.save(model, Path(d) / "m.safetensors").stat().st_size


class _Resume(Callback):
    """Fine-tuning that survives the 10-minute job limit: the model and optimizer state are
    checkpointed after every epoch, training stops while the next epoch would still end
    inside ``budget`` seconds of the job, and the next run of the same command resumes
    (same step, same LR schedule, same epoch's data)."""

    def __init__(self, path: Path, t0: float, budget: float):
        self.path, self.t0, self.budget, self.stopped, self.seconds = path, t0, budget, False, 0.0

    def on_train_begin(self, state) -> None:
        self.last = time.perf_counter()
        if self.path.is_file():
            ck = torch.load(self.path, weights_only=True)
            state.model.load_state_dict(ck["model"])
            state.optimizer.load_state_dict(ck["optimizer"])
            state.step, state.epoch, state.history = ck["step"], ck["epoch"], list(ck["history"])
            self.seconds = float(ck["seconds"])
            print(f"resumed at epoch {state.epoch}", flush=True)

    def on_epoch_end(self, state) -> None:
        now = time.perf_counter()
        took, self.last = now - self.last, now
        self.seconds += took
        ck = {
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "step": state.step,
            "epoch": state.epoch,
            "history": state.history,
            "seconds": self.seconds,
        }
        atomic_write(self.path, lambda tmp: torch.save(ck, tmp))
        print(f"epoch {state.epoch}: {took:.0f} s, {state.history[-1]}", flush=True)
        if now - self.t0 + 1.2 * took > self.budget and state.step < state.total_steps:
            state.stop, self.stopped = True, True


def _finetune_and_report(args, model, state: dict, t0: float, teacher=None) -> dict | None:
    """Fine-tune ``model`` with the one budget every method gets, save, reload, measure.

    None when the job's time budget ran out first (rerun the same command to resume)."""
    task = get_task("fashion-mnist", augment=True, seed=args.seed)
    acc = lambda m: round(task.evaluate(m, "test")["accuracy"] * 100, 2)  # noqa: E731
    x1 = task.example_inputs(1)
    # select_best off: a resumed run cannot restore a best epoch of an earlier job; the last
    # epoch's weights are what every method reports
    ft = FinetuneConfig(
        epochs=args.epochs, lr=args.lr, amp="bf16", batch_size=128, weight_decay=5e-4, select_best=False, seed=args.seed
    )
    resume = _Resume(_artifact(f"{args.model}_{args.tag}").with_suffix(".ckpt"), t0, args.budget)
    train_task = task
    if args.distill:  # soft targets of the unpruned model (Hinton KD), weight args.distill, T = 4
        from netslim.distill import DistillConfig, DistillTask

        train_task = DistillTask(task, teacher.eval(), DistillConfig(distill=args.distill, distill_temperature=4.0))
    summary = fit(model.to(memory_format=torch.channels_last), train_task, ft, [resume])
    if resume.stopped:
        return None
    model = model.to(memory_format=torch.contiguous_format)
    extra = dict(state["extra"])
    path = netslim.save(model, _artifact(f"{args.model}_{args.tag}"), info=extra.pop("info", None))
    back = netslim.load(path)
    resume.path.unlink(missing_ok=True)  # finished: the next run of this command starts afresh
    before = state["before"]
    after = {
        "accuracy_pruned_no_ft": state["pruned_acc"],
        "accuracy": acc(back),
        "params": count_params(back),
        "macs": total_macs(back, x1),
        "bytes": path.stat().st_size,
        "bytes_without_plan": _size(back),
    }  # the stored prune plan (keep indices) is part of "bytes"
    return {
        "model": args.model,
        "seed": args.seed,
        "target_macs": args.macs,
        "finetune": ft.model_dump(mode="json"),
        "distill_alpha": args.distill,
        "finetune_seconds": round(resume.seconds, 1),
        "history": summary["history"],
        "prune_seconds": state["prune_s"],
        "before": before,
        "after": after,
        "artifact": str(path),
        **extra,
        "ratios": {k: round(after[k] / before[k], 4) for k in ("params", "macs", "bytes")},
        "accuracy_drop": round(before["accuracy"] - after["accuracy"], 2),
    }


def _pruned_run(args, prune) -> dict | None:
    """Baseline metrics, ``prune(base, task, x1) -> (model, extra)``, fine-tune; resumable."""
    t0 = time.perf_counter()
    task = get_task("fashion-mnist", augment=True, seed=args.seed)
    base = netslim.load(checkpoint_path(args.model))
    x1 = task.example_inputs(1)
    meta_path = _artifact(f"{args.model}_{args.tag}").with_suffix(".json")
    ts = time.perf_counter()
    model, extra = prune(base, task, x1)  # deterministic: a resumed run rebuilds the same shapes
    prune_s = round(time.perf_counter() - ts, 2)
    if meta_path.is_file():
        state = json.loads(meta_path.read_text())
    else:
        before = {
            "accuracy": round(task.evaluate(base, "test")["accuracy"] * 100, 2),
            "params": count_params(base),
            "macs": total_macs(base, x1),
            "bytes": _size(base),
        }
        state = {
            "before": before,
            "pruned_acc": round(task.evaluate(model, "test")["accuracy"] * 100, 2),
            "prune_s": prune_s,
            "extra": extra,
        }
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(state)))
    out = _finetune_and_report(args, model, state, t0, teacher=base)
    if out is not None:
        meta_path.unlink(missing_ok=True)
    return out


def _stage_ratios(widths: str) -> dict[str, float]:
    """ResNet-20 per-stage widths "s1,i1,s2,i2,s3,i3" (the residual stream and the blocks' inner
    channels of stages 1-3, out of 16/16/32/32/64/64) as a per-layer plan {selector: share removed}."""
    w = [int(v) for v in widths.split(",")]
    full = (16, 16, 32, 32, 64, 64)
    if len(w) != 6 or not all(0 < k <= f for k, f in zip(w, full)):
        raise SystemExit(f"--widths: six channel counts 's1,i1,s2,i2,s3,i3' up to {full}; got {widths!r}")
    r = [1 - k / f for k, f in zip(w, full)]
    # the stream of stage 1 is the stem's group; those of stages 2 and 3 are named after their first
    # block's conv2 (which, with the shortcut, produces them)
    return {
        "conv1": r[0],
        "layer1.*.conv1": r[1],
        "layer2.0.conv2": r[2],
        "layer2.*.conv1": r[3],
        "layer3.0.conv2": r[4],
        "layer3.*.conv1": r[5],
    }


def _per_layer_plan(args) -> dict[str, float] | None:
    if args.widths:
        if args.model != "resnet20":
            raise SystemExit("--widths names ResNet-20's stages; use --ratios for other models")
        return _stage_ratios(args.widths)
    return json.loads(args.ratios) if args.ratios else None


def convs(args) -> dict:
    """Why width alone buys little time on ResNet-20: each 3x3 conv (+ BN + ReLU) shape of its
    stages alone at batch 64, interleaved, in NCHW and channels_last; ms and MMAC per ms."""
    import itertools
    import statistics

    torch.set_num_threads(args.threads)
    cells = {}
    for hw, chans in ((28, (8, 16)), (14, (8, 16, 32)), (7, (16, 32, 48, 64))):
        for ci, co, cl in itertools.product(chans, chans, (False, True)):
            layer = torch.nn.Sequential(
                torch.nn.Conv2d(ci, co, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(co), torch.nn.ReLU()
            ).eval()
            x = torch.randn(64, ci, hw, hw)
            if cl:
                layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            cells[f"{hw}x{hw} {ci}->{co} {'cl' if cl else 'nchw'}"] = (layer, x, ci * co * 9 * hw * hw * 64)
    times: dict[str, list[float]] = {k: [] for k in cells}
    with torch.inference_mode():
        for layer, x, _ in cells.values():
            layer(x)
        for _ in range(args.rounds):
            for k, (layer, x, _) in cells.items():
                t = time.perf_counter()
                for _ in range(10):
                    layer(x)
                times[k].append((time.perf_counter() - t) / 10 * 1e3)
    out = {}
    for k, (_, _, macs) in cells.items():
        ms = statistics.median(times[k])
        out[k] = {"ms": round(ms, 3), "mmac_per_ms": round(macs / 1e6 / ms, 1)}
    return {"threads": args.threads, "batch": 64, "convs": out}


def blocks(args) -> dict:
    """Which residual blocks ``layers`` with ``count: 2`` removes on its own: block influence on 64
    calibration images, each block's measured ms at batch 64, and the picks by influence and by
    influence per ms (both cores; the costs are timings)."""
    torch.set_num_threads(args.threads)
    base = netslim.load(checkpoint_path(args.model))
    x = get_task("fashion-mnist").calibration_inputs(64, seed=0)
    out = {"model": args.model, "threads": args.threads}
    for by in ("influence", "influence_per_ms"):
        _, rep = drop_residual_blocks(copy.deepcopy(base), x[:1], 2, batches=[x], by=by)
        out[f"dropped_by_{by}"] = rep["dropped"]
        out["influence"] = {k: round(v, 4) for k, v in rep["influence"].items()}
        if rep["costs_ms"]:
            out["costs_ms"] = {k: round(v, 3) for k, v in rep["costs_ms"].items()}
    return out


def plans(args) -> dict:
    """Latency of candidate per-layer plans before any training (time does not depend on the
    weights' values): each ``--widths`` candidate (``;``-separated) shrinks the trained base,
    then base and candidates are timed interleaved at batch 64 in every ``--variants`` preparation."""
    torch.set_num_threads(args.threads)
    base = netslim.load(checkpoint_path(args.model))
    task = get_task("fashion-mnist")
    x1 = task.example_inputs(1)
    models = {"base": base}
    for spec in args.widths.split(";"):  # "widths" or "widths|block,block" (blocks dropped first)
        widths, _, drop = spec.partition("|")
        m = copy.deepcopy(base)
        if drop:
            m = drop_residual_blocks(m, x1, names=drop.split(","))[0]
        if widths:
            m = shrink_channels(m, x1, ratios=_stage_ratios(widths), min_keep_ratio=1e-6)[0]
        models[spec] = m
    macs = {k: total_macs(m, x1) for k, m in models.items()}
    out = {
        "model": args.model,
        "threads": args.threads,
        "widths": list(models)[1:],
        "macs_share": {k: round(macs[k] / macs["base"], 4) for k in models if k != "base"},
    }
    x = task.example_inputs(64)
    for variant in (args.variants or "plain,fold+cl").split(","):
        prepared = {k: _variant(m, variant) for k, m in models.items()}
        xv = x.contiguous(memory_format=torch.channels_last) if "cl" in variant else x
        t = interleaved_latency(prepared, xv, rounds=args.rounds, repeats=10, threads=args.threads)
        out[variant] = {
            "b64_ms": {k: round(v, 3) for k, v in t.items()},
            "speedup": {k: round(t["base"] / t[k], 3) for k in models if k != "base"},
        }
        print(variant, json.dumps(out[variant]["speedup"]), flush=True)
    return out


def cnn(args) -> dict | None:
    def prune(base, task, x1):
        kwargs = {}
        if args.criterion in ("taylor", "activation"):
            import itertools

            kwargs = {"batches": list(itertools.islice(task.train_batches(0, 64), 16)), "loss_fn": task.loss}
        model, plans, extra = copy.deepcopy(base), [], {}
        if args.drop:  # whole residual blocks first, then channels of what is left
            model, rep = drop_residual_blocks(model, x1, names=args.drop.split(","))
            plans.append(rep["plan"])
            extra["dropped_blocks"] = rep["dropped"]
        # --ratios / --widths: a per-layer plan ({selector: share removed}) instead of the global MAC target
        per_layer = _per_layer_plan(args)
        target = (
            {"ratios": per_layer}
            if per_layer
            else {"target_macs": args.macs * total_macs(base, x1) / total_macs(model, x1), "scope": args.scope}
        )
        model, report = shrink_channels(model, x1, criterion=args.criterion, round_to=args.round_to, **target, **kwargs)
        plans.append(report["plan"])
        # keys of their own: "ratios" and "target_macs" of the report say something else
        plan_args = {
            {"ratios": "layer_ratios", "target_macs": "channels_target_macs"}.get(k, k): v for k, v in target.items()
        }
        return model, {
            "method": "netslim",
            "criterion": args.criterion,
            **plan_args,
            **extra,
            **({"widths": args.widths} if args.widths else {}),
            "round_to": args.round_to,
            "pruned_share": report.get("ratio"),
            "groups": report["groups"],
            "info": {"prune_plans": plans},
        }

    return _pruned_run(args, prune)


def torch_pruning(args) -> dict | None:
    """The same model, MAC target and fine-tuning budget through Torch-Pruning (bench extra only).

    Its standard recipe: ``MetaPruner`` with group L2 magnitude (``GroupMagnitudeImportance``,
    mean-normalised, the counterpart of netslim's ``l2``), global ranking, the classifier left
    whole; its ``pruning_ratio`` is bisected until MACs (counted by the same netslim counter)
    reach the target, as netslim bisects its own global ratio.
    """
    import torch_pruning as tp

    def prune(base, task, x1):
        last = [m for m in base.modules() if isinstance(m, torch.nn.Linear)][-1]
        ignored_name = next(n for n, m in base.named_modules() if m is last)
        target = args.macs * total_macs(base, x1)

        def pruned(ratio: float):
            m = copy.deepcopy(base).eval()
            imp = tp.importance.GroupMagnitudeImportance(p=1 if args.criterion == "l1" else 2)
            pr = tp.pruner.MetaPruner(
                m,
                x1,
                importance=imp,
                global_pruning=args.scope == "global",
                pruning_ratio=ratio,
                ignored_layers=[m.get_submodule(ignored_name)],
                round_to=args.round_to if args.round_to > 1 else None,
            )
            pr.step()
            return m

        lo, hi, model = 0.0, 0.95, None
        for _ in range(12):
            mid = (lo + hi) / 2
            cand = pruned(mid)
            if total_macs(cand, x1) <= target:
                hi, model = mid, cand
            else:
                lo = mid
        return model, {
            "method": f"torch-pruning {tp.__version__}",
            "criterion": f"GroupMagnitudeImportance(p={1 if args.criterion == 'l1' else 2})",
            "scope": args.scope,
            "pruning_ratio": round(hi, 4),
            "round_to": args.round_to,
        }

    return _pruned_run(args, prune)


def tp_scores(args) -> dict:
    """Why netslim and Torch-Pruning keep different channels at the same MACs: per group, the
    two L2 group importances (each mean-normalised) on the trained model — their rank
    correlation and spread (std of the normalised scores) — and the channels each saved
    artifact (``--tag netslim_tag,tp_tag``) kept per conv."""
    import torch_pruning as tp

    from netslim.core.graph import trace_graph
    from netslim.prune.structured import group_scores

    model = netslim.load(checkpoint_path(args.model)).eval()
    x1 = get_task("fashion-mnist").example_inputs(1)
    graph = trace_graph(model, x1)
    ours = group_scores(model, graph, "l2")
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x1)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    # the same without BatchNorm scales in the group (netslim's l2 scores weights only)
    imp_w = tp.importance.GroupMagnitudeImportance(p=2, target_types=[torch.nn.modules.conv._ConvNd, torch.nn.Linear])
    rank = lambda t: torch.argsort(torch.argsort(t)).float()  # noqa: E731
    rows = []
    for g in graph.prunable():
        a = ours[g.id] / ours[g.id].mean()
        grp = dg.get_pruning_group(model.get_submodule(g.name), tp.prune_conv_out_channels, idxs=list(range(g.size)))
        b, c = (i(grp).float().cpu() for i in (imp, imp_w))
        rho = lambda u, v: round(float(torch.corrcoef(torch.stack([rank(u), rank(v)]))[0, 1]), 3)  # noqa: E731
        rows.append(
            {
                "group": g.name,
                "size": g.size,
                "spearman": rho(a, b),
                "std_netslim": round(float(a.std()), 3),
                "std_tp": round(float(b.std()), 3),
                "spearman_tp_without_bn": rho(a, c),
                "std_tp_without_bn": round(float(c.std()), 3),
            }
        )
    kept = {}
    for tag in args.tag.split(","):
        m = netslim.load(_artifact(f"{args.model}_{tag}"))
        kept[tag] = {n: c.out_channels for n, c in m.named_modules() if isinstance(c, torch.nn.Conv2d)}
    return {
        "model": args.model,
        "groups": rows,
        "kept_out_channels": kept,
        "base_out_channels": {n: c.out_channels for n, c in model.named_modules() if isinstance(c, torch.nn.Conv2d)},
    }


def criteria(args) -> dict:
    """Which criterion and scope to fine-tune: accuracy right after pruning to ``--macs`` (no
    fine-tuning, validation split) for each, plus the MACs reached and the share of channels kept."""
    import itertools

    task = get_task("fashion-mnist", augment=True)
    base = netslim.load(checkpoint_path(args.model))
    x1 = task.example_inputs(1)
    macs0 = total_macs(base, x1)
    batches = list(itertools.islice(task.train_batches(0, 64), 16))
    out = {
        "model": args.model,
        "target_macs": args.macs,
        "split": "val",
        "base_accuracy": round(task.evaluate(base, "val")["accuracy"] * 100, 2),
        "runs": [],
    }
    for crit in ("l1", "l2", "bn_scale", "taylor", "activation", "random"):
        for scope in ("global", "uniform"):
            kw = {"batches": batches, "loss_fn": task.loss} if crit in ("taylor", "activation") else {}
            model, rep = shrink_channels(
                copy.deepcopy(base), x1, target_macs=args.macs, criterion=crit, scope=scope, **kw
            )
            out["runs"].append(
                {
                    "criterion": crit,
                    "scope": scope,
                    "accuracy": round(task.evaluate(model, "val")["accuracy"] * 100, 2),
                    "macs_ratio": round(total_macs(model, x1) / macs0, 4),
                    "params": count_params(model),
                }
            )
            print(out["runs"][-1], flush=True)
    return out


def _variant(model, variant: str):
    """A copy of ``model`` prepared for timing, the same way for every model compared:
    ``fold``: BatchNorms folded into the convs before them (``torch.fx.experimental.optimization.fuse``,
    eval mode); ``cl``: weights in channels_last (NHWC) memory format (the input too)."""
    from torch.fx.experimental.optimization import fuse

    m = copy.deepcopy(model).eval()
    if "fold" in variant:
        m = fuse(m)
    if "cl" in variant:
        m = m.to(memory_format=torch.channels_last)
    return m


def _timings(models: dict, task, args, variant: str) -> dict:
    """Interleaved medians at batch 64 and 1, speedups over "base", the per-call overhead share."""
    tags = [k for k in models if k != "base"]
    out: dict = {}
    for b in (64, 1):
        x = task.example_inputs(b)
        if "cl" in variant:
            x = x.contiguous(memory_format=torch.channels_last)
        t = interleaved_latency(models, x, rounds=args.rounds, repeats=20 if b == 1 else 10, threads=args.threads)
        out[f"b{b}"] = {k: round(v, 4) for k, v in t.items()} | {
            f"speedup_{k}": round(t["base"] / t[k], 3) for k in tags
        }
    # per-call overhead at batch 1: the part of its time that does not scale with the batch,
    # 1 - (t64 / 64) / t1 (Python, dispatch, small-kernel launch costs)
    for k in models:
        out["b1"][f"overhead_share_{k}"] = round(1 - out["b64"][k] / 64 / out["b1"][k], 3)
    return out


@torch.inference_mode()
def _profile(models: dict, task, variant: str, calls: int = 10) -> dict:
    """Where a batch-64 call spends its time: self CPU ms per call by aten op and input shape (top 8),
    from ``torch.profiler`` (which adds its own overhead: for shares, not for speedups)."""
    from torch.profiler import ProfilerActivity, profile

    x = task.example_inputs(64)
    if "cl" in variant:
        x = x.contiguous(memory_format=torch.channels_last)
    out = {}
    for k, m in models.items():
        m(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(calls):
                m(x)
        ops = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        # keyed by op and first input's shape: which layer a slow op is
        shape = lambda e: e.input_shapes[0] if e.input_shapes else ""  # noqa: E731
        out[k] = {f"{e.key} {shape(e)}": round(e.self_cpu_time_total / 1e3 / calls, 3) for e in ops[:8]} | {
            "total": round(sum(e.self_cpu_time_total for e in ops) / 1e3 / calls, 3)
        }
    return out


def latency(args) -> dict:
    """Baseline vs every saved artifact (``--tag`` may list several, comma-separated), interleaved.

    ``--variants plain,cl,fold,fold+cl`` times every model in each preparation (see
    :func:`_variant`); each variant is its own interleaved comparison, like with like."""
    torch.set_num_threads(args.threads)
    base = netslim.load(checkpoint_path(args.model))
    tags = args.tag.split(",")
    missing = [t for t in tags if not _artifact(f"{args.model}_{t}").is_file()]
    tags = [t for t in tags if t not in missing]  # e.g. a fine-tune still being resumed
    models = {"base": base} | {t: netslim.load(_artifact(f"{args.model}_{t}")) for t in tags}
    task = get_task("fashion-mnist")
    x1 = task.example_inputs(1)
    out = {
        "model": args.model,
        "tags": tags,
        "missing": missing,
        "threads": args.threads,
        "macs": {k: total_macs(m, x1) for k, m in models.items()},
        "channels": {
            k: [m.out_channels for m in v.modules() if isinstance(m, torch.nn.Conv2d)] for k, v in models.items()
        },
    }
    out["macs_reduction"] = {k: round(out["macs"]["base"] / out["macs"][k], 3) for k in tags}
    variants = args.variants.split(",") if args.variants else ["plain"]
    x = task.example_inputs(8)
    for variant in variants:
        prepared = {k: _variant(m, variant) for k, m in models.items()}
        with torch.no_grad():  # a preparation must not change what the model computes
            err = max(
                float(
                    (
                        prepared[k](x.contiguous(memory_format=torch.channels_last) if "cl" in variant else x)
                        - models[k](x)
                    )
                    .abs()
                    .max()
                )
                for k in models
            )
        res = _timings(prepared, task, args, variant) | {"max_abs_output_diff": err}
        res["b64_speedup_over_macs_reduction"] = {
            k: round(res["b64"][f"speedup_{k}"] / out["macs_reduction"][k], 3) for k in tags
        }
        if args.profile:
            res["profile_b64_ms"] = _profile(prepared, task, variant)
        if args.variants:
            out[variant] = res
        else:
            out |= res
        print(variant, json.dumps({b: res[b] for b in ("b64", "b1")}), flush=True)
    return out


def sizes(args) -> dict:
    """File sizes of the baseline and of every saved artifact (``--tag`` may list several), each
    re-saved with its prune plans as this version of netslim stores them, and without them."""
    from netslim.core.serialize import read_description
    from netslim.prune.structured import PrunePlan

    base = netslim.load(checkpoint_path(args.model))
    out = {"model": args.model, "base": {"params": count_params(base), "bytes": _size(base)}}
    for tag in args.tag.split(","):
        path = _artifact(f"{args.model}_{tag}")
        if not path.is_file():
            out[tag] = "missing"
            continue
        model = netslim.load(path)
        plans = read_description(path)["info"].get("prune_plans") or []
        plans = [PrunePlan.from_dict(p).to_dict() for p in plans]
        with tempfile.TemporaryDirectory() as d:
            size = netslim.save(model, Path(d) / "m.safetensors", info={"prune_plans": plans}).stat().st_size
        row = {
            "params": count_params(model),
            "bytes": size,
            "bytes_without_plan": _size(model),
            "plan_json_bytes": len(json.dumps(plans)),
        }
        row["ratios"] = {
            "params": round(row["params"] / out["base"]["params"], 4),
            "bytes": round(size / out["base"]["bytes"], 4),
            "bytes_without_plan": round(row["bytes_without_plan"] / out["base"]["bytes"], 4),
        }
        out[tag] = row
    return out


def minilm(args) -> dict:
    from netslim.models import build_model

    task = get_task("pydocs-sentences", limit=args.sentences)
    base = build_model("minilm")
    ref_fid = task.evaluate(base, "test")["fidelity"]
    calib = task.calibration_inputs(64, seed=0)  # dict of (64, max_length) tensors
    batches = [{k: v[i : i + 16] for k, v in calib.items()} for i in range(0, 64, 16)]
    kw = (
        {"criterion": args.criterion, "batches": batches}
        if args.criterion == "activation"
        else {"criterion": args.criterion}
    )
    model, r1 = shrink_ffn(copy.deepcopy(base), 0.5, **kw)
    fid_ffn = task.evaluate(model, "test")["fidelity"]
    model, r2 = shrink_heads(model, 1 / 3, **kw)
    fid = task.evaluate(model, "test")["fidelity"]
    path = netslim.save(model, _artifact("minilm"))
    back = netslim.load(path)
    fid_back = task.evaluate(back, "test")["fidelity"]
    x = task.example_inputs(32)
    torch.set_num_threads(args.threads)
    t = interleaved_latency({"base": base, "pruned": back}, x, rounds=args.rounds, repeats=5, threads=args.threads)
    return {
        "criterion": args.criterion,
        "fidelity_base": ref_fid,
        "fidelity_ffn50": fid_ffn,
        "fidelity_ffn50_heads33": fid,
        "fidelity_reloaded": fid_back,
        "params": [count_params(base), count_params(back)],
        "bytes": [_size(base), path.stat().st_size],
        "latency_ms_b32": t,
        "speedup_b32": round(t["base"] / t["pruned"], 3),
        "heads_kept": r2["groups"][:1],
        "ffn_kept": r1["groups"][:1],
        "sentences": args.sentences,
    }


def smollm2(args) -> dict:
    """``--what ffn``: -25 % FFN neurons (activation criterion; ``--with-l2`` adds the L2 control);
    ``--what layers``: drop the 4 least influential of 30 blocks. Both: perplexity on the pydocs
    test split and a ``save_pretrained`` -> ``LlamaForCausalLM.from_pretrained`` reload check."""
    from transformers import LlamaForCausalLM

    from netslim.models import build_model

    task = get_task("pydocs", limit=args.blocks)
    base = build_model("smollm2")  # weights dequantised from the SmolLM2-135M-Instruct Q4_1 GGUF
    t0 = time.perf_counter()
    ppl_base = task.evaluate(base, "test")["perplexity"]
    eval_s = time.perf_counter() - t0
    out = {
        "what": args.what,
        "blocks_512": args.blocks,
        "ppl_base": ppl_base,
        "eval_seconds": round(eval_s, 1),
        "params_base": count_params(base),
        "bytes_base": _size(base),
    }
    n = 8
    calib = task.calibration_inputs(n, seed=0)  # (n, 512) token blocks of the calibration split
    batches = [calib[i : i + 2] for i in range(0, n, 2)]
    if args.what == "ffn":
        if args.with_l2:
            model, _ = shrink_ffn(copy.deepcopy(base), 0.25, criterion="l2")
            out["ffn25_l2"] = {"ppl": task.evaluate(model, "test")["perplexity"]}
            del model
        model, r = shrink_ffn(copy.deepcopy(base), 0.25, criterion="activation", batches=batches)
        res = {"criterion": "activation", "calibration_blocks_512": n, "config": r["config"]}
    else:
        model, r = drop_transformer_blocks(copy.deepcopy(base), 4, batches)
        res = {
            "criterion": "block influence (1 - cos)",
            "dropped": r["dropped"],
            "num_hidden_layers": model.config.num_hidden_layers,
        }
    res.update(ppl=task.evaluate(model, "test")["perplexity"], params=count_params(model))
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        res["bytes_save_pretrained"] = sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))
        back = LlamaForCausalLM.from_pretrained(d, local_files_only=True).eval()
        ids = task.example_inputs(1)["input_ids"][:, :128]
        with torch.no_grad():
            res["from_pretrained_max_abs_diff"] = float((back(ids).logits - model(ids).logits).abs().max())
        res["from_pretrained_config"] = {
            k: getattr(back.config, k) for k in ("intermediate_size", "num_hidden_layers", "num_attention_heads")
        }
    out["ffn25" if args.what == "ffn" else "drop4"] = res
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "part",
        choices=[
            "cnn",
            "torch_pruning",
            "tp_scores",
            "criteria",
            "convs",
            "blocks",
            "plans",
            "latency",
            "sizes",
            "minilm",
            "smollm2",
        ],
    )
    p.add_argument("--model", default="resnet20")
    p.add_argument("--macs", type=float, default=0.5)
    p.add_argument("--criterion", default="l2", help="l1 | l2 | taylor | activation (minilm: l2 or activation)")
    p.add_argument("--scope", default="global")
    p.add_argument(
        "--ratios",
        default="",
        help="cnn: per-layer plan as JSON {selector: share removed}, e.g. "
        '\'{"conv1": 0.5, "layer1.*.conv1": 0.5}\' (replaces --macs/--scope)',
    )
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="cnn: fine-tune with soft targets of the unpruned "
        "model (KD, T = 4) with this weight (0: plain fine-tuning, as Torch-Pruning's runs)",
    )
    p.add_argument(
        "--drop",
        default="",
        help="cnn: residual blocks replaced by the identity before channel "
        "pruning, comma-separated module names (e.g. layer1.1,layer1.2)",
    )
    p.add_argument(
        "--widths",
        default="",
        help="cnn/plans, ResNet-20: kept channels per stage 's1,i1,s2,i2,s3,i3' "
        "(residual stream and inner channels of stages 1-3); plans: several, ';'-separated, each optionally "
        "followed by '|' and blocks to drop",
    )
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--tag", default="2x")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument(
        "--variants",
        default="",
        help="latency: comma-separated preparations of every model: "
        "plain, cl (channels_last), fold (BN folded), fold+cl",
    )
    p.add_argument("--profile", action="store_true", help="latency: per-op self CPU time at batch 64")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="cnn/torch_pruning: fine-tuning seed (data order, "
        "augmentation and the 5,000-image validation hold-out; the test set is fixed)",
    )
    p.add_argument("--budget", type=float, default=540, help="cnn/torch_pruning: seconds this job may run")
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--what", choices=["ffn", "layers"], default="ffn", help="smollm2: which pruning")
    p.add_argument("--with-l2", action="store_true", help="smollm2 ffn: also the L2-norm control")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    parts = {
        "cnn": cnn,
        "torch_pruning": torch_pruning,
        "tp_scores": tp_scores,
        "criteria": criteria,
        "convs": convs,
        "blocks": blocks,
        "plans": plans,
        "latency": latency,
        "sizes": sizes,
        "minilm": minilm,
        "smollm2": smollm2,
    }
    result = parts[args.part](args)
    if result is None:
        print("time budget reached: fine-tuning checkpointed; run the same command again to resume")
        return
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    key = {
        "minilm": f"minilm_{args.criterion}",
        "smollm2": f"smollm2_{args.what}",
        "plans": f"plans_{args.model}_{args.tag}_t{args.threads}",
        "convs": f"convs_t{args.threads}",
        "latency": f"latency_{args.model}_{args.tag}_t{args.threads}"
        + (f"_{args.variants.replace(',', '_')}" if args.variants else ""),
        "sizes": f"sizes_{args.model}",
    }.get(args.part, f"{args.part}_{args.model}_{args.tag}")
    _merge(key, {"command": "benchmarks/structured.py " + " ".join(os.sys.argv[1:]), **result})
    print(json.dumps(result, indent=1)[:3000])


if __name__ == "__main__":
    main()
