"""Issue 21 — prune + quantize, combined and in every order: accuracy, bytes on disk, latency.

**CNNs** (ResNet-20 and LeNet-5 on Fashion-MNIST, trained checkpoints from the cache): for
every sparsity in ``--sparsities`` x weight width in ``--bits`` x order in ``--orders``, one
recipe of the order family runs from the trained fp32 model with the same training budget
``E = --epochs`` (then ``sparsify``: the sparse int8 kernel per layer only where measured
faster, and a safetensors export - the sparse low-bit storage is what ``netslim.save`` writes):

* ``prune_ptq``       prune -> quantize (PTQ):  gradual magnitude pruning during E epochs, ptq_int8;
* ``quantize_prune``  quantize -> prune:        QAT E epochs, masks set once at half of it (the
                      quantized model is pruned), fine-tuned quantized with them fixed;
* ``joint``           pruning during QAT:       QAT E epochs with the cubic sparsity schedule;
* ``prune_qat``       prune -> quantize -> fine-tune: gradual E/2 epochs, QAT E/2 epochs with the
                      masks fixed.

Per run, in one process: test accuracy of the fp32 model, of the dense int8 model (ptq_int8 of
the same fp32 model at the same weight width) and of the artifact as loaded from disk;
compression = bytes of the fp32 safetensors file / bytes of the artifact file (every header
counted), beside the dense int8 file; latency at batch 1 and 64, A/B interleaved (median and
IQR of all rounds pooled, ``--threads`` intra-op threads): fp32, dense int8, the artifact as
``sparsify`` left it, and the same codes with every layer on the dense int8 kernel and every
layer on the sparse int8 kernel.

**SmolLM2-135M** (``--llm``): SparseGPT 50 % + GPTQ 4-bit (group 64: 576 is not a multiple of
128) in the three orders of ``sparsegpt_gptq`` (prune_first, quantize_first, joint) and dense
GPTQ w4 g64 as the reference: perplexity (pydocs test split, 8 x 512 tokens), bytes on disk of
the artifact (sparse int4) and of the same weights stored dense int4, and the peak resident
memory a fresh process adds by loading each file (netslim and transformers already imported).

    # real sizes (the coordinator's run; hours on 2 cores - filter with --only / --orders / --sparsities)
    NETSLIM_CACHE=$PWD/.cache/netslim OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prune_quantize.py --cnn
    NETSLIM_CACHE=$PWD/.cache/netslim OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prune_quantize.py --llm
    # smoke check: random ResNet-20 / LeNet-5 / tiny Llama, small data, a few steps
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prune_quantize.py --tiny

Results: ``benchmarks/results/issue21_cnn.json`` and ``issue21_llm.json`` (``--tiny``: a
temporary folder unless ``--out``), rewritten after every run: an interrupted run keeps what it
finished, and a rerun skips the cases already in the file (``--redo`` to run them again).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import netslim
from netslim.api import recipe_path
from netslim.core import serialize
from netslim.core.serialize import atomic_write
from netslim.measure.latency import interleaved_timings
from netslim.models.sources import open_model
from netslim.quantize.ptq import ptq_int8
from netslim.quantize.sparse_lowbit import SparseInt8Conv2d, SparseInt8Linear, densify, sparse_static
from netslim.recipe.spec import load_yaml
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
ORDERS = ("prune_ptq", "quantize_prune", "joint", "prune_qat")
MODELS = ("resnet20", "lenet5")
TRAIN = {  # per model: optimizer settings of the pruning / QAT runs (those of the shipped recipes)
    "resnet20": {
        "gradual": {"lr": 0.02, "weight_decay": 0.0005, "amp": "bf16"},
        "data": {"augment": True},
        "qat": {"lr": 0.0005, "optimizer": "adamw", "weight_decay": 0.0},
    },
    "lenet5": {
        "gradual": {"lr": 0.01, "weight_decay": 0.0001},
        "data": {},
        "qat": {"lr": 0.0005, "optimizer": "adamw", "weight_decay": 0.0},
    },
}


# ------------------------------------------------------------------------------ recipes
def order_steps(order: str, sparsity: float, bits: int, epochs: int, model: str, tiny: bool) -> list[dict]:
    """The steps of one member of the order family (the same training budget for every order)."""
    t = TRAIN[model]
    cap = {"max_steps": 3, "batch_size": 32} if tiny else {}
    half = max(1, epochs // 2)

    def gradual(e):
        return {
            "method": "gradual",
            "sparsity": sparsity,
            "scope": "global",
            "finetune": {"epochs": e, **t["gradual"], **cap},
            "frequency": 1 if tiny else 100,
            **({"end_step": 2} if tiny else {}),
        }

    def qat(e, prune=None):
        return {
            "method": "qat",
            "weight_bits": bits,
            "finetune": {"epochs": e, **t["qat"], **cap, **({"select_best": False} if tiny else {})},
            "calibration_samples": 64 if tiny else 512,
            **({"prune": prune} if prune else {}),
        }

    scheduled = {"sparsity": sparsity, "scope": "global"}
    steps = {
        "prune_ptq": [
            gradual(epochs),
            {"method": "ptq_int8", "weight_bits": {"*": bits}, "calibration_samples": 64 if tiny else 512},
        ],
        "quantize_prune": [qat(epochs, {**scheduled, "schedule": "oneshot", "at": 0.5})],
        "joint": [
            qat(epochs, {**scheduled, "schedule": "cubic", "end_fraction": 0.75, "frequency": 1 if tiny else 100})
        ],
        "prune_qat": [gradual(half), qat(half)],
    }[order]
    return steps + [
        {"method": "sparsify", "batch_sizes": [1, 64], "rounds": 1 if tiny else 3, "repeats": 2 if tiny else 10},
        {"method": "export", "filename": "model"},
    ]


def order_recipe(order: str, sparsity: float, bits: int, epochs: int, model: str, tiny: bool) -> dict:
    data = {**TRAIN[model]["data"], **({"limit": 200} if tiny else {})}
    return {
        "name": f"{model}_{order}_s{int(sparsity * 100)}_w{bits}",
        "dataset": "fashion-mnist",
        "data": data,
        "measure": {"batch_size": 64, "repeats": 3},
        "steps": order_steps(order, sparsity, bits, epochs, model, tiny),
    }


# ---------------------------------------------------------------------------- measuring
def _timing(t) -> dict:
    return {"median_ms": t.median_ms, "q1_ms": t.q1_ms, "q3_ms": t.q3_ms, "iqr_ms": t.iqr_ms, "repeats": t.repeats}


def with_kernels(model: torch.nn.Module, kernel: str) -> torch.nn.Module:
    """A copy whose sparse int8 layers all run ``kernel`` (the same codes)."""
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, (SparseInt8Conv2d, SparseInt8Linear)):
            serialize.replace_module(out, name, sparse_static(m, kernel, m.layout))
    return out


def _kernels(model: torch.nn.Module) -> dict:
    layers = [m for m in model.modules() if isinstance(m, (SparseInt8Conv2d, SparseInt8Linear))]
    return {"sparse_layers": sum(m.kernel == "sparse" for m in layers), "int8_layers": len(layers)}


def latency(models: dict, task, args) -> dict:
    out = {}
    for batch in (1, 64):
        t = interleaved_timings(
            models, task.example_inputs(batch), rounds=args.rounds, repeats=args.repeats, threads=args.threads
        )
        out[f"batch_{batch}"] = {k: _timing(v) for k, v in t.items()}
    return out


def _save_dense(model: torch.nn.Module, path: Path) -> Path:
    """``model`` saved with every quantized layer as dense codes (its sparse layers densified,
    the sparse storage forms off): the same weights, dense int4."""
    saved, serialize._STORAGE_FORMS = serialize._STORAGE_FORMS, {}
    try:
        return netslim.save(densify(model), path)
    finally:
        serialize._STORAGE_FORMS = saved


# ------------------------------------------------------------------------------ CNN runs
class Baseline:
    """The trained fp32 model of one zoo CNN, its file size and the dense int8 references."""

    def __init__(self, model_name: str, task, work: Path, tiny: bool):
        if tiny:
            torch.manual_seed(0)
            self.fp32 = netslim.build_model(model_name).eval()
        else:
            self.fp32 = open_model(model_name).model.eval()
        self.task, self.work = task, work
        self.fp32_bytes = netslim.save(self.fp32, work / f"{model_name}_fp32.safetensors").stat().st_size
        self.accuracy = task.evaluate(self.fp32)[task.metric]
        self.dense_int8: dict[int, tuple] = {}

    def int8(self, bits: int, tiny: bool):
        """(dense int8 model, its test accuracy, its file bytes) at ``bits``-bit weights, unpruned."""
        if bits not in self.dense_int8:
            calib = self.task.calibration_inputs(64 if tiny else 512, seed=0)
            q = ptq_int8(copy.deepcopy(self.fp32), calib, weight_bits={"*": bits})
            size = netslim.save(q, self.work / f"dense_int{bits}.safetensors").stat().st_size
            self.dense_int8[bits] = (q, self.task.evaluate(q)[self.task.metric], size)
        return self.dense_int8[bits]


def timed_models(base: Baseline, dense_q: torch.nn.Module, stored: torch.nn.Module, bits: int) -> dict:
    """The variants a CNN case times: fp32, the dense int model, the artifact as ``sparsify`` left
    it, and its codes with every layer on the dense / on the sparse int8 kernel."""
    return {
        "fp32": base.fp32,
        f"dense_int{bits}": dense_q,
        "artifact": stored,
        "artifact_all_dense_int8": with_kernels(stored, "dense"),
        "artifact_all_sparse_int8": with_kernels(stored, "sparse"),
    }


def _within(want, got) -> bool:
    """Whether ``got`` (a recipe as the runner expanded it) holds every value of ``want``."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _within(v, got[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(_within, want, got))
    return want == got


def run_cnn_case(base: Baseline, model_name: str, order: str, sparsity: float, bits: int, args) -> dict:
    recipe = order_recipe(order, sparsity, bits, args.epochs, model_name, args.tiny)
    out_dir = base.work / recipe["name"]
    finished = out_dir / "report.json"
    reused = bool(args.keep) and finished.is_file()
    if reused:
        # A --keep run that compressed this case and stopped later (e.g. while measuring) left its
        # finished recipe output: use it, do not train again (the record says so).
        report = json.loads(finished.read_text())
        if not _within(recipe["steps"], report["recipe_spec"]["steps"]):
            raise SystemExit(f"{finished}: a kept case with other steps; remove {out_dir} to run it again")
        result = SimpleNamespace(report=report, artifact=report["artifact"])
        seconds = sum(s.get("seconds") or 0.0 for s in report["steps"])
    else:
        t0 = time.perf_counter()
        result = netslim.compress(copy.deepcopy(base.fp32), recipe, out=out_dir, limit=200 if args.tiny else None)
        seconds = time.perf_counter() - t0
    artifact = Path(result.artifact)
    stored = netslim.load(artifact)  # what is on disk, as netslim.load rebuilds it
    task, metric = base.task, base.task.metric
    dense_q, dense_acc, dense_bytes = base.int8(bits, args.tiny)
    acc = task.evaluate(stored)[metric]
    lat = latency(timed_models(base, dense_q, stored, bits), task, args)
    sparsify = next((s["notes"].get("sparsify", {}) for s in result.report["steps"] if s["method"] == "sparsify"), {})
    w = [m for m in stored.modules() if hasattr(m, "int_weight")]
    zeros = sum(int((m.int_weight() == 0).sum()) for m in w) / max(1, sum(m.weight_numel for m in w))
    return {
        "model": model_name,
        "order": order,
        "sparsity": sparsity,
        "weight_bits": bits,
        "epochs": args.epochs,
        "recipe": recipe,
        "compress_seconds": seconds,  # the steps' own seconds when reused
        "compress_reused": reused,
        "artifact_name": artifact.name,
        "accuracy": {
            "fp32": base.accuracy,
            f"dense_int{bits}": dense_acc,
            "artifact": acc,
            "drop_vs_fp32_pt": 100 * (base.accuracy - acc),
        },
        "bytes": {
            "fp32_file": base.fp32_bytes,
            f"dense_int{bits}_file": dense_bytes,
            "artifact": artifact.stat().st_size,
            "header": int.from_bytes(artifact.read_bytes()[:8], "little") + 8,
        },
        "compression": {
            "vs_fp32": base.fp32_bytes / artifact.stat().st_size,
            f"dense_int{bits}_vs_fp32": base.fp32_bytes / dense_bytes,
        },
        "zero_codes": zeros,
        "kernels": _kernels(stored),
        "sparsify_int8_layers": sparsify.get("int8_layers", {}),
        "latency": lat,
        "speedup_vs_dense_int8_b64": lat["batch_64"][f"dense_int{bits}"]["median_ms"]
        / lat["batch_64"]["artifact"]["median_ms"],
    }


# ------------------------------------------------------------------------------ LLM runs
LLM_ORDERS = ("dense_gptq", "sparsegpt_fp32", "prune_first", "quantize_first", "joint")


def llm_recipe(case: str, tiny: bool) -> dict:
    rec = load_yaml(recipe_path("sparsegpt_gptq_smollm2"))
    step = dict(rec["steps"][0])
    if case == "dense_gptq":
        step = {k: v for k, v in step.items() if k not in ("order", "sparsity")} | {"method": "gptq"}
    elif case == "sparsegpt_fp32":  # the perplexity the combined model is held to (within 10 %)
        keep = ("sparsity", "num_samples", "seq_len", "batch_size")
        step = {k: v for k, v in step.items() if k in keep} | {"method": "sparsegpt"}
    else:
        step["order"] = case
    if tiny:
        step.update(num_samples=8, seq_len=32, batch_size=4)
        if "group_size" in step:
            step["group_size"] = 32
        rec.update(data={"limit": 4}, model=None, dataset="pydocs")
    # The study reports perplexity, bytes and load memory, not latency: one unpaired timing per
    # stage (the shipped recipe's paired rounds cost ~15 min per case on this machine).
    rec.update(
        name=f"smollm2_{case}",
        steps=[step, {"method": "evaluate"}, {"method": "export", "filename": "model"}],
        measure={"batch_size": 1, "repeats": 1, "paired": False},
    )
    return rec


def loaded_peak_rss_mb(path: Path) -> dict:
    """Memory (MiB) of a fresh process loading ``path``, with netslim, its method families and
    transformers imported first: peak RSS before and after the load and their difference
    (``model``), and the resident set before and after (``resident_model``: what stays).

    The peak is the process's own ``VmHWM`` (/proc/self/status), not ``ru_maxrss``: Linux
    carries ``ru_maxrss`` over fork + exec, so a child of this (GB-sized) process reported its
    parent's high-water mark before it loaded anything.

    The loaded tensors map the file (safetensors): after the load only the pages something read
    are resident - the sparse layers' bitmasks (checked at load), not yet the dense codes - so
    ``resident_model`` is not what the model takes. Hence also: ``held`` (the bytes of the
    model's distinct tensors, parameters and buffers: what its layers keep), and after one
    forward pass of 16 tokens (every weight read): ``forward_peak`` (peak over load + forward)
    and ``resident_forward`` (resident set after it, glibc's freed heap returned first with
    ``malloc_trim``: what is live, not what the allocator keeps cached), all from the same
    starting point."""
    code = (
        "import ctypes, gc, json, sys, psutil, torch, netslim, transformers\n"
        "from netslim.core.registry import load_sources\n"
        "load_sources()\n"
        "def peak():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) / 1024\n"
        "rss = lambda: (gc.collect(), psutil.Process().memory_info().rss / 2**20)[1]\n"
        "before, rss0 = peak(), rss()\n"
        "m = netslim.load(sys.argv[1])\n"
        "after, rss1 = peak(), rss()\n"
        "held = {t.data_ptr(): t.nbytes for t in [*m.parameters(), *m.buffers()]}\n"
        "with torch.no_grad():\n"
        "    m(input_ids=torch.arange(16)[None])\n"
        "fwd = peak()\n"
        "ctypes.CDLL('libc.so.6').malloc_trim(0)\n"
        "rss2 = rss()\n"
        "print(json.dumps({'peak_before': before, 'peak_after': after, 'model': after - before,\n"
        "                  'rss_before': rss0, 'rss_after': rss1, 'resident_model': rss1 - rss0,\n"
        "                  'held': sum(held.values()) / 2**20, 'forward_peak': fwd - before,\n"
        "                  'resident_forward': rss2 - rss0}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_llm_case(case: str, args, work: Path) -> dict:
    recipe = llm_recipe(case, args.tiny)
    ref = netslim.build_model("tiny-llama") if args.tiny else "smollm2"
    t0 = time.perf_counter()
    result = netslim.compress(ref, recipe, out=work / case)
    seconds = time.perf_counter() - t0
    artifact = Path(result.artifact)
    dense = _save_dense(netslim.load(artifact), work / f"{case}_dense_int4.safetensors")
    notes = result.report["steps"][0]["notes"]
    metric = result.report["metric"]
    rss = {"artifact": loaded_peak_rss_mb(artifact), "same_weights_dense_int4": loaded_peak_rss_mb(dense)}
    return {
        "case": case,
        "recipe": recipe,
        "compress_seconds": seconds,
        "metric": metric,
        "baseline_fp32": result.report["baseline"].get(metric),
        "final": result.report["final"].get(metric),
        "bytes": {
            "artifact": artifact.stat().st_size,
            "same_weights_dense_int4": dense.stat().st_size,
            "fp32_baseline": result.report["baseline"].get("size_bytes"),
        },
        "peak_rss_mb_when_loaded": rss,
        "step_notes": notes,
    }


# ---------------------------------------------------------------------------------- main
def _header(args, what: str) -> dict:
    return {
        "issue": 21,
        "what": what,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
        "tiny": args.tiny,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_before": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "protocol": f"A/B interleaved, {args.rounds} rounds x {args.repeats} calls (2 warm-up calls per round), "
        f"median and IQR of all rounds pooled, {args.threads} intra-op thread(s)",
        "runs": [],
    }


def _write(path: Path, result: dict) -> None:
    result["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda t: Path(t).write_text(json.dumps(result, indent=2, default=float)))


def _existing(path: Path, args, what: str) -> dict:
    if path.is_file() and not args.redo and not args.tiny:
        return json.loads(path.read_text())
    return _header(args, what)


def main_cnn(args, out: Path) -> None:
    result = _existing(out, args, "order study: prune x quantize on ResNet-20 / LeNet-5 (Fashion-MNIST)")
    done = {(r["model"], r["order"], r["sparsity"], r["weight_bits"]) for r in result["runs"]}
    with tempfile.TemporaryDirectory(prefix="netslim_issue21_") as tmp:
        work = args.keep or Path(tmp)
        for model_name in args.only or MODELS:
            task = get_task("fashion-mnist", limit=200 if args.tiny else None)
            base = Baseline(model_name, task, work, args.tiny)
            for sparsity in args.sparsities:
                for bits in args.bits:
                    for order in args.orders:
                        if (model_name, order, sparsity, bits) in done:
                            continue
                        run = run_cnn_case(base, model_name, order, sparsity, bits, args)
                        result["runs"].append(run)
                        _write(out, result)
                        print(
                            f"{model_name} {order} s={sparsity} w{bits}: acc {run['accuracy']['artifact']:.4f} "
                            f"(fp32 {base.accuracy:.4f}), {run['compression']['vs_fp32']:.1f}x smaller, b64 "
                            f"{run['speedup_vs_dense_int8_b64']:.2f}x vs dense int{bits}",
                            flush=True,
                        )
    print(f"wrote {out}")


def main_llm(args, out: Path) -> None:
    result = _existing(out, args, "SmolLM2-135M: SparseGPT 50 % + GPTQ w4 g64 in three orders vs dense GPTQ")
    done = {r["case"] for r in result["runs"]}
    with tempfile.TemporaryDirectory(prefix="netslim_issue21_llm_") as tmp:
        for case in args.llm_orders:
            if case in done:
                continue
            run = run_llm_case(case, args, Path(tmp))
            result["runs"].append(run)
            _write(out, result)
            print(
                f"{case}: {run['metric']} {run['final']:.3f} (fp32 {run['baseline_fp32']:.3f}), "
                f"{run['bytes']['artifact']:,} B vs dense int4 {run['bytes']['same_weights_dense_int4']:,} B, "
                f"loaded: peak +{run['peak_rss_mb_when_loaded']['artifact']['model']:.0f} MiB, resident "
                f"+{run['peak_rss_mb_when_loaded']['artifact']['resident_model']:.0f} MiB (dense int4: peak "
                f"+{run['peak_rss_mb_when_loaded']['same_weights_dense_int4']['model']:.0f}, resident "
                f"+{run['peak_rss_mb_when_loaded']['same_weights_dense_int4']['resident_model']:.0f})",
                flush=True,
            )
    print(f"wrote {out}")


def remeasure_latency(folder: Path, path: Path, args) -> None:
    """The CNN cases' latency measured again from the artifacts a ``--keep`` run kept (the study
    may have trained beside other jobs; timing wants a quiet machine); accuracy and bytes stay."""
    args.rounds, args.repeats = args.rounds or 7, args.repeats or 20
    result = json.loads(path.read_text())
    bases: dict[str, Baseline] = {}
    for run in result["runs"]:
        artifact = folder / run["recipe"]["name"] / run.get("artifact_name", "model.safetensors")
        if (args.only and run["model"] not in args.only) or not artifact.is_file():
            continue
        name, bits = run["model"], run["weight_bits"]
        if name not in bases:
            bases[name] = Baseline(name, get_task("fashion-mnist"), folder, tiny=False)
        base = bases[name]
        stored = netslim.load(artifact)
        lat = latency(timed_models(base, base.int8(bits, tiny=False)[0], stored, bits), base.task, args)
        run["latency_remeasured"] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
            "load": [round(x, 2) for x in os.getloadavg()],
            "latency": lat,
            "speedup_vs_dense_int8_b64": lat["batch_64"][f"dense_int{bits}"]["median_ms"]
            / lat["batch_64"]["artifact"]["median_ms"],
        }
        print(
            f"{run['recipe']['name']}: b64 {run['latency_remeasured']['speedup_vs_dense_int8_b64']:.2f}x vs dense",
            flush=True,
        )
        _write(path, result)


def remeasure_memory(folder: Path, path: Path) -> None:
    """The LLM study's load memory measured again from kept artifacts (the study's own numbers:
    ``ru_maxrss`` carried the parent's peak into the child, and the load then built an fp32 copy
    first); the study's other figures stay as they are."""
    result = json.loads(path.read_text())
    with tempfile.TemporaryDirectory(prefix="netslim_issue21_mem_") as tmp:
        for run in result["runs"]:
            artifact = folder / f"{run['case']}.safetensors"
            if not artifact.is_file():
                continue
            dense = _save_dense(netslim.load(artifact), Path(tmp) / f"{run['case']}_dense_int4.safetensors")
            run["memory_remeasured"] = {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
                "commit": subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
                ).stdout.strip(),
                "bytes": {"artifact": artifact.stat().st_size, "same_weights_dense_int4": dense.stat().st_size},
                "artifact": loaded_peak_rss_mb(artifact),
                "same_weights_dense_int4": loaded_peak_rss_mb(dense),
            }
            m = run["memory_remeasured"]
            a, d = m["artifact"], m["same_weights_dense_int4"]
            print(
                f"{run['case']}: held {a['held']:.1f} MiB (dense int4 {d['held']:.1f}); load peak / resident "
                f"+{a['model']:.0f} / +{a['resident_model']:.0f} (dense +{d['model']:.0f} / +{d['resident_model']:.0f}); "
                f"after a forward: peak / resident +{a['forward_peak']:.0f} / +{a['resident_forward']:.0f} "
                f"(dense +{d['forward_peak']:.0f} / +{d['resident_forward']:.0f})",
                flush=True,
            )
    _write(path, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cnn", action="store_true", help="the CNN order study (ResNet-20, LeNet-5)")
    ap.add_argument("--llm", action="store_true", help="the SmolLM2 orders")
    ap.add_argument("--tiny", action="store_true", help="random models, small data, a few steps: a smoke check")
    ap.add_argument("--only", choices=MODELS, action="append", help="CNN: only this model (repeatable)")
    ap.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    ap.add_argument("--llm-orders", nargs="+", choices=LLM_ORDERS, default=list(LLM_ORDERS))
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    ap.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    ap.add_argument("--epochs", type=int, default=4, help="training epochs of every order (default 4)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for the latency (default 1)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --tiny 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per round (default 20; --tiny 2)")
    ap.add_argument("--redo", action="store_true", help="run cases already in the result file again")
    ap.add_argument("--out", type=Path, default=None, help="result folder (default benchmarks/results)")
    ap.add_argument(
        "--remeasure-memory",
        type=Path,
        default=None,
        metavar="DIR",
        help="LLM: measure again the memory of loading each case's artifact kept as DIR/<case>.safetensors "
        "(and its dense int4 form) with this checkout's netslim.load; stored as 'memory_remeasured'",
    )
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="CNN: keep the baselines and every case's output folder (artifact) in DIR instead of a temporary folder",
    )
    ap.add_argument(
        "--remeasure-latency",
        type=Path,
        default=None,
        metavar="DIR",
        help="CNN: time again (on a quiet machine) the cases whose artifacts a --keep DIR run kept; the same "
        "protocol, stored as 'latency_remeasured' beside the study's own timings",
    )
    args = ap.parse_args()
    if args.remeasure_latency:
        remeasure_latency(args.remeasure_latency, (args.out or ROOT / "results") / "issue21_cnn.json", args)
        return
    if args.remeasure_memory:
        remeasure_memory(args.remeasure_memory, (args.out or ROOT / "results") / "issue21_llm.json")
        return
    if args.tiny:
        args.cnn, args.llm = (True, True) if not (args.cnn or args.llm) else (args.cnn, args.llm)
        args.sparsities, args.bits, args.epochs = args.sparsities[:1], args.bits, 2
    if not (args.cnn or args.llm):
        ap.error("choose --cnn, --llm or --tiny")
    args.rounds = args.rounds or (2 if args.tiny else 7)
    args.repeats = args.repeats or (2 if args.tiny else 20)
    folder = args.out or (Path(tempfile.mkdtemp(prefix="issue21_tiny_")) if args.tiny else ROOT / "results")
    if args.cnn:
        main_cnn(args, folder / "issue21_cnn.json")
    if args.llm:
        main_llm(args, folder / "issue21_llm.json")


if __name__ == "__main__":
    main()
