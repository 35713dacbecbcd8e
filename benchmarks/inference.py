"""Issue 25 — the shared inference harness: every transformer speed claim goes through it.

MiniLM (all-MiniLM-L6-v2, the zoo's ``minilm``) at three shapes over the same pre-tokenised
inputs - 64 sentences of the pydocs test split (``EmbeddingTask(limit=64)``, spread over the
split), tokenised once:

* ``b1``: batch 1 at natural length (timed: the sentence of median token count; fidelity: all 64, one at a time);
* ``b32``: batch 32 padded to the longest (timed: sentences 0-31; fidelity: 0-31 and 32-63);
* ``b32x128``: batch 32 padded to 128 tokens (same sentences).

Variants: fp32 eager, bf16 (whole model), netslim int8 = the artifact of ``netslim compress
int8_minilm`` loaded with ``netslim.load`` (built into ``--cache`` when missing), and every
peer available: ONNX Runtime dynamic int8 per-tensor, per-channel and "fused" (ORT's
transformer optimizer, then the same quantization), ONNX Runtime fp32, torch.ao dynamic
quantization (onednn engine) and torchao (when installed). Fidelity beside every time: mean
cosine of the mean-pooled embeddings to fp32's at the same shape, over the 64 sentences.

``--llm``: SmolLM2-135M greedy decoding, batch 1, a fixed prompt, 128 new tokens with a KV
cache (:mod:`inference_llm`): tokens/s of fp32, bf16, netslim int8 / int4, llama.cpp
(GGUF Q8_0 / Q4_0 from netslim's gguf export) and ONNX Runtime fp32 / int8 (netslim's ONNX
export with KV cache); fidelity = first token where the greedy output leaves fp32's.

Protocol (one process): every variant built and scored first, then per shape A/B interleaved
rounds (variant 1, 2, ..., n, then again), each round 2 warm-up calls and ``--repeats`` timed
blocks per variant; a block is ``number`` back-to-back calls sized to about ``--block-ms``
(``torch.utils.benchmark``-style blocked measurement), its mean one sample; median and IQR of
all samples pooled over the rounds (``netslim.measure.latency.interleaved_timings``);
``--threads`` intra-op threads for torch, ONNX Runtime and llama.cpp alike. The record keeps
the machine (CPU model and flags, cores), load average before and after, the command, the git
commit, versions, and per variant and shape the median, IQR, block size and fidelity.

    NETSLIM_CACHE=$PWD/.cache/netslim HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python benchmarks/inference.py
    ... benchmarks/inference.py [--llm] --build-only      # build the artifacts / exports into the cache, time nothing
    ... benchmarks/inference.py [--llm] --fidelity-only   # build and score every variant, time nothing
    ... benchmarks/inference.py --llm              # SmolLM2 decoding
    ... benchmarks/inference.py --llm --only ORT   # its ONNX Runtime rows alone (and fp32, the reference)
    ... benchmarks/inference.py --quick            # 2 rounds x 3 blocks (a look, not a figure)
    ... benchmarks/inference.py --profile          # also torch.profiler of netslim int8 and fp32 per shape
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference.py --tiny [--llm]   # random tiny BERT / Llama: smoke

Results: ``benchmarks/results/issue25_minilm.{json,md}`` (``--llm``: ``issue25_smollm2.{json,md}``;
``--profile``: ``issue25_minilm_profile.txt``); ``--tiny`` writes to a temporary folder unless ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from baselines import cpu_name  # benchmarks/ is on sys.path when this runs as a script
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHAPES = ("b1", "b32", "b32x128")
SENTENCES = 64
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


# ---------------------------------------------------------------------------- the record
def machine() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": cpu_name(),
        "cores_usable": affinity or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
    }


def git_state() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines())}


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("transformers", "onnxruntime", "llama_cpp", "torchao"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def new_record(args, what: str, block: str) -> dict:
    return {
        "issue": 25,
        "what": what,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git": git_state(),
        "machine": machine(),
        "versions": versions(),
        "threads": args.threads,
        "tiny": args.tiny,
        "protocol": protocol_text(args, block),
        "load_before": loadavg(),
    }


def protocol_text(args, block: str) -> str:
    return (
        f"one process; every variant built and scored first; then A/B interleaved rounds per shape "
        f"({args.rounds} rounds, each 2 warm-up calls then {args.repeats} timed blocks per variant; a block = "
        f"{block}, its mean one sample), median and IQR of all samples pooled "
        f"(netslim.measure.latency.interleaved_timings); {args.threads} intra-op threads in torch, ONNX Runtime "
        "and llama.cpp"
    )


def write_outputs(record: dict, markdown: str, stem: str, args) -> Path:
    from netslim.core.serialize import atomic_write

    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.mkdtemp(prefix="issue25_")) / f"{stem}.json" if args.tiny else RESULTS / f"{stem}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda t: Path(t).write_text(json.dumps(record, indent=2, default=float) + "\n"))
    md = out.with_suffix(".md")
    atomic_write(md, lambda t: Path(t).write_text(markdown))
    return out


# ------------------------------------------------------------------------ timing protocol
def block_sizes(models: dict[str, nn.Module], inputs: dict, block_ms: float) -> dict[str, int]:
    """Calls per timed block for each model: enough back-to-back calls for ~``block_ms`` (one
    timed call after a warm-up estimates the cost), at least 1, at most 1000."""
    sizes = {}
    with torch.inference_mode():
        for name, m in models.items():
            m(**inputs)
            t0 = time.perf_counter()
            m(**inputs)
            ms = (time.perf_counter() - t0) * 1e3
            sizes[name] = max(1, min(1000, math.ceil(block_ms / max(ms, 1e-3))))
    return sizes


def timed(models: dict[str, nn.Module], inputs: dict, args, number: int | None = None) -> dict[str, dict]:
    """Interleaved blocked timings of ``models`` on ``inputs``: per model median / quartiles / IQR (ms).
    ``number``: calls per block for every model (default: sized to ``--block-ms`` per model)."""
    from netslim.measure.latency import interleaved_timings

    number = block_sizes(models, inputs, args.block_ms) if number is None else dict.fromkeys(models, number)
    with torch.inference_mode():
        t = interleaved_timings(
            models, inputs, rounds=args.rounds, repeats=args.repeats, threads=args.threads, number=number
        )
    return {
        k: {
            "median_ms": v.median_ms,
            "q1_ms": v.q1_ms,
            "q3_ms": v.q3_ms,
            "iqr_ms": v.iqr_ms,
            "samples": v.repeats,
            "calls_per_block": number[k],
        }
        for k, v in t.items()
    }


# ------------------------------------------------------------------------- MiniLM inputs
def minilm_inputs(task) -> dict[str, dict]:
    """Per shape: the timed input and the batches the fidelity is computed on (64 sentences each)."""
    texts = task.sentences("test")[:SENTENCES]
    singles = [task.encode([t]) for t in texts]
    lengths = [int(s["input_ids"].shape[1]) for s in singles]
    median = sorted(range(len(texts)), key=lambda i: lengths[i])[len(texts) // 2]
    halves = [texts[:32], texts[32:]]
    padded = [task.encode(h) for h in halves]
    fixed = [task.encode(h, fixed=True) for h in halves]
    return {
        "b1": {
            "timed": singles[median],
            "batches": singles,
            "tokens": f"1 x {lengths[median]} (sentence #{median}, median length of the 64; "
            f"lengths {min(lengths)}-{max(lengths)})",
        },
        "b32": {
            "timed": padded[0],
            "batches": padded,
            "tokens": f"32 x {padded[0]['input_ids'].shape[1]} (sentences 0-31 padded to the longest; "
            f"32-63: 32 x {padded[1]['input_ids'].shape[1]})",
        },
        "b32x128": {
            "timed": fixed[0],
            "batches": fixed,
            "tokens": f"32 x {fixed[0]['input_ids'].shape[1]} (padded to the task's max_length)",
        },
    }


@torch.inference_mode()
def embeddings(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """Normalised mean-pooled embeddings (64, H) of ``batches`` in order."""
    from netslim.models.hf import sentence_embeddings

    return torch.cat([sentence_embeddings(model, b) for b in batches])


# ------------------------------------------------------------------------- MiniLM peers
class OrtEncoder(nn.Module):
    """An ONNX Runtime session behind the encoder's call (returns ``(last_hidden_state,)``);
    the numpy conversion of inputs and outputs is part of every call, as for a user."""

    def __init__(self, path: Path, threads: int):
        super().__init__()
        from netslim.quantize.onnx_runtime import onnx_session

        self.session = onnx_session(path, threads=threads)
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids, attention_mask, **_):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}
        return (torch.from_numpy(self.session.run(None, {k: feed[k].numpy() for k in self.names})[0]),)


def ort_files(fp32: nn.Module, example: dict, cache: Path) -> tuple[dict[str, Path], dict]:
    """fp32 ONNX (netslim's export), ORT's transformer optimizer on the TorchScript export
    (:func:`legacy_export`), and ORT dynamic int8 of both (per tensor = ORT's default, per
    channel): name -> file, plus notes. Cached in ``cache``."""
    from netslim.quantize import export_onnx
    from netslim.quantize.onnx_runtime import ort_dynamic_int8

    cache.mkdir(parents=True, exist_ok=True)
    notes: dict[str, Any] = {}
    fp32_path = cache / "fp32.onnx"
    if not fp32_path.is_file():
        export_onnx(fp32, fp32_path, example)
    files = {"ORT fp32": fp32_path}
    fused = cache / "fp32_fused.onnx"
    try:
        if not fused.is_file():
            from onnxruntime.transformers.optimizer import optimize_model

            legacy = legacy_export(fp32, example, cache / "fp32_torchscript_eager_attention.onnx")
            cfg = fp32.config
            opt = optimize_model(
                str(legacy), model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size
            )
            stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(fused))
            (cache / "fp32_fused.json").write_text(json.dumps(stats))
        notes["fused_operators"] = json.loads((cache / "fp32_fused.json").read_text())
        files["ORT fp32 fused"] = fused
    except Exception as e:  # a peer's tool failing is a result: recorded, the other variants still run
        notes["ort_fused_error"] = f"{type(e).__name__}: {e}"[:500]
    for src_name, src in list(files.items()):
        for per_channel in (False, True):
            name = src_name.replace("fp32", "int8") + (" per-channel" if per_channel else " per-tensor")
            path = cache / f"{src.stem}_int8_{'pc' if per_channel else 'pt'}.onnx"
            if not path.is_file():  # QInt8 weights, dynamic uint8 activations
                ort_dynamic_int8(src, path, per_channel=per_channel)
            files[name] = path
    return files, notes


def legacy_export(fp32: nn.Module, example: dict, path: Path) -> Path:
    """The TorchScript ONNX export (``dynamo=False``) of ``fp32`` with transformers' eager attention:
    the graph ORT's transformer optimizer was written for. netslim's (dynamo) export, or SDPA
    attention, leaves its Attention / EmbedLayerNormalization fusions unmatched (only
    SkipLayerNormalization and BiasGelu fuse)."""
    import warnings

    model = copy.deepcopy(fp32)
    model.set_attn_implementation("eager")

    class Hidden(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask)[0]

    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(model),
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )
    return path


def torch_ao_dynamic(fp32: nn.Module) -> nn.Module:
    """torch.ao ``quantize_dynamic`` of the Linear layers, qint8 weights, onednn engine."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.backends.quantized.engine = "onednn"
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)


def torchao_int8(fp32: nn.Module) -> nn.Module | None:
    """torchao's Int8DynamicActivationInt8WeightConfig on the Linear layers; None when not installed."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return None
    m = copy.deepcopy(fp32)
    quantize_(m, Int8DynamicActivationInt8WeightConfig())
    return m


def cached_artifact(model_ref: str | None, recipe: str, out: Path, limit: int | None = None) -> tuple[Path, dict]:
    """The artifact of ``netslim compress RECIPE [--model REF] --out OUT``: reused when OUT holds a
    finished run's report, else run now. Returns (artifact path, facts from its report)."""
    import netslim

    report_path = out / "report.json"
    if not report_path.is_file() or not Path(json.loads(report_path.read_text())["artifact"]).is_file():
        netslim.compress(model_ref, recipe, out=out, limit=limit, force=True)
    report = json.loads(report_path.read_text())
    facts = {
        "recipe": recipe,
        "out": str(out),
        "artifact": report["artifact"],
        "artifact_bytes": Path(report["artifact"]).stat().st_size,
        "command": f"netslim compress {recipe}"
        + (f" --model {model_ref}" if model_ref else "")
        + (f" --limit {limit}" if limit else "")
        + f" --out {out}",
        "built": dt.datetime.fromtimestamp(report_path.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds"),
    }
    final, metric = report.get("final", {}), report.get("metric")
    facts |= {
        "recipe_metric": metric,
        "recipe_score": final.get(metric),
        "recipe_baseline_score": report.get("baseline", {}).get(metric),
    }  # the run's own evaluation (its data, its limit)
    return Path(report["artifact"]), facts


def minilm_variants(args, cache: Path, example: dict) -> tuple[dict[str, nn.Module], dict]:
    import netslim
    from netslim.models import build_model
    from netslim.quantize import bf16_linears

    name = "tiny-bert" if args.tiny else "minilm"
    fp32 = build_model(name).eval()
    notes: dict[str, Any] = {
        "fp32 eager": "PyTorch eager mode (no torch.compile), transformers' default attention "
        f"({fp32.config._attn_implementation})"
    }
    eager_attn = copy.deepcopy(fp32)
    eager_attn.set_attn_implementation("eager")  # transformers' matmul-softmax-matmul attention
    variants = {
        "fp32 eager": fp32,
        "fp32 eager, HF eager attention": eager_attn,
        "bf16": bf16_linears(copy.deepcopy(fp32), scope="model").eval(),
    }
    artifact, facts = cached_artifact(
        name if args.tiny else None, "int8_minilm", cache / "int8_minilm", limit=40 if args.tiny else None
    )
    variants["netslim int8"] = netslim.load(artifact).eval()
    notes["netslim int8"] = facts | {
        "attn_implementation": getattr(getattr(variants["netslim int8"], "config", None), "_attn_implementation", None)
    }
    files, notes["onnxruntime"] = ort_files(fp32, example, cache / "onnx")
    for k, path in files.items():
        variants[k] = OrtEncoder(path, args.threads)
    notes["onnxruntime"]["files"] = {k: {"path": str(p), "bytes": p.stat().st_size} for k, p in files.items()}
    variants["torch.ao dynamic (onednn)"] = torch_ao_dynamic(fp32).eval()
    ao = torchao_int8(fp32)
    if ao is None:
        notes["torchao"] = "not installed in this venv: no torchao row"
    else:
        variants["torchao int8 dynamic"] = ao.eval()
    return variants, notes


# ------------------------------------------------------------------------------- MiniLM
def run_minilm(args) -> tuple[dict, str]:
    from netslim.core.cache import cache_dir
    from netslim.train.lm_tasks import EmbeddingTask

    task = EmbeddingTask(model_name="tiny-bert" if args.tiny else "minilm", limit=SENTENCES)
    shapes = minilm_inputs(task)
    cache = Path(args.cache) if args.cache else cache_dir() / "bench" / "issue25" / ("tiny" if args.tiny else "real")
    record = new_record(
        args,
        "MiniLM inference: fp32 / bf16 / netslim int8 / every peer, three shapes",
        f"back-to-back calls sized to ~{args.block_ms:g} ms",
    )
    example = {k: v[:2] for k, v in shapes["b32"]["timed"].items()}
    variants, notes = minilm_variants(args, cache, example)
    if args.build_only:
        return record | {"variants": list(variants), "notes": notes, "build_only": True}, ""
    if args.only:
        variants = {k: v for k, v in variants.items() if k == "fp32 eager" or any(o in k for o in args.only)}
    record |= {
        "model": "tiny-bert (random, smoke)" if args.tiny else "minilm (all-MiniLM-L6-v2)",
        "inputs": {s: shapes[s]["tokens"] for s in SHAPES},
        "variants": list(variants),
        "notes": notes,
        "fidelity": "mean cosine of L2-normalised mean-pooled last hidden states to fp32 eager's at the "
        "same shape, over the 64 sentences",
    }
    torch.set_num_threads(args.threads)
    record["load_at_timing_start"] = loadavg()
    rows: dict[str, dict] = {s: {} for s in SHAPES}
    for s in SHAPES:
        ref = embeddings(variants["fp32 eager"], shapes[s]["batches"])
        for k, m in variants.items():
            rows[s][k] = {"fidelity": float((embeddings(m, shapes[s]["batches"]) * ref).sum(-1).mean())}
    for s in SHAPES if not args.fidelity_only else ():
        for k, t in timed(variants, shapes[s]["timed"], args).items():
            rows[s][k] |= t | {"speedup_vs_fp32": None}
        base = rows[s]["fp32 eager"]["median_ms"]
        for k in variants:
            rows[s][k]["speedup_vs_fp32"] = base / rows[s][k]["median_ms"]
        print(f"{s}: " + ", ".join(f"{k} {r['median_ms']:.2f} ms" for k, r in rows[s].items()), flush=True)
    record |= {"rows": rows, "load_after": loadavg()}
    if args.fidelity_only:
        return record, "\n".join(f"{s} {k}: cos {r['fidelity']:.4f}" for s in SHAPES for k, r in rows[s].items())
    if args.profile:
        record["profile"] = profile_shapes(variants, {s: shapes[s]["timed"] for s in SHAPES}, args)
    return record, minilm_markdown(record)


def minilm_markdown(record: dict) -> str:
    rows = record["rows"]
    head = "| variant | " + " | ".join(f"{s}: {record['inputs'][s].split(' (')[0]}" for s in SHAPES) + " |"
    lines = [
        f"MiniLM inference, {record['date']}, commit {record['git']['commit'][:10]}, {record['machine']['cpu_model']}, "
        f"{record['threads']} threads, load {record['load_before']} -> {record['load_after']}.",
        "",
        f"Protocol: {record['protocol']}. Cell: median ms (IQR) speed-up vs fp32 eager, cosine to fp32.",
        "",
        head,
        "|---|" + "---|" * len(SHAPES),
    ]
    for k in record["variants"]:
        cells = []
        for s in SHAPES:
            r = rows[s][k]
            cells.append(
                f"{r['median_ms']:.2f} ({r['iqr_ms']:.2f}) {r['speedup_vs_fp32']:.2f}x, cos {r['fidelity']:.4f}"
            )
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", *notes_lines(record["notes"]), "", f"Command: `{record['command']}`"]
    return "\n".join(lines) + "\n"


def notes_lines(notes: dict) -> list[str]:
    """The notes a reader of the table needs: artifacts used, peers missing or failing."""
    out = []
    for k, v in notes.items():
        if isinstance(v, str) or "error" in k:
            out.append(f"- {k}: {v}")
        elif isinstance(v, dict):
            facts = {
                kk: vv
                for kk, vv in v.items()
                if kk in ("command", "recipe_score", "recipe_metric", "artifact_bytes", "fused_operators")
            }
            errors = {kk: vv for kk, vv in v.items() if "error" in kk}
            if facts or errors:
                out.append(f"- {k}: " + ", ".join(f"{kk} {vv}" for kk, vv in (facts | errors).items()))
    return out


# -------------------------------------------------------------------- batch-1 profile
def python_calls(model: nn.Module, inputs: dict) -> dict[str, int]:
    """Python-level function calls (``sys.setprofile`` events) in one forward: Python functions
    and builtins / C functions called from Python (ctypes calls and torch ops among them)."""
    counts = {"call": 0, "c_call": 0}

    def hook(frame, event, arg):
        if event in counts:
            counts[event] += 1

    with torch.inference_mode():
        sys.setprofile(hook)
        try:
            model(**inputs)
        finally:
            sys.setprofile(None)
    return {"python_functions": counts["call"], "builtin_calls": counts["c_call"]}


def profile_shapes(variants: dict, inputs: dict[str, dict], args) -> dict:
    """:func:`profile_forward` of netslim int8 and fp32 eager at each shape (20 forwards at batch 1,
    3 at batch 32); the profiler tables to ``issue25_minilm_profile.txt`` beside the result."""
    out, parts = {}, []
    for shape, x in inputs.items():
        out[shape] = {}
        for name in ("netslim int8", "fp32 eager"):
            out[shape][name], table = profile_forward(variants[name], x, 20 if shape == "b1" else 3)
            parts.append(f"== {shape}, {name}: {tuple(x['input_ids'].shape)} tokens\n{table}")
    path = (
        Path(args.out).with_name("issue25_minilm_profile.txt") if args.out else (RESULTS / "issue25_minilm_profile.txt")
    )
    if not args.tiny or args.out:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(parts))
        out["table_file"] = str(path)
    return out


def profile_forward(m: nn.Module, inputs: dict, iters: int) -> tuple[dict, str]:
    """Where a forward spends its time (torch.profiler):
    ops and Python calls per forward, self CPU by op, and the time outside every op (Python,
    module calls, argument handling) per forward and per encoder layer, bounded: at least the
    unprofiled wall minus the ops' profiled self time (the profiler inflates op times), at most
    the profiled wall minus it (which includes the profiler's own bookkeeping). A profile, not a
    timing claim."""
    from torch.profiler import ProfilerActivity, profile

    layers = len(getattr(getattr(m, "encoder", None), "layer", [])) or 1
    with torch.inference_mode():
        for _ in range(3):
            m(**inputs)
        walls = []
        for _ in range(iters):
            t0 = time.perf_counter()
            m(**inputs)
            walls.append((time.perf_counter() - t0) * 1e3)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(iters):
                m(**inputs)
            profiled = (time.perf_counter() - t0) * 1e3 / iters
    events = prof.key_averages()
    ops = {e.key: {"calls": e.count / iters, "self_ms": e.self_cpu_time_total / 1e3 / iters} for e in events}
    op_ms = sum(v["self_ms"] for v in ops.values())
    wall = sorted(walls)[len(walls) // 2]
    top = dict(sorted(ops.items(), key=lambda kv: -kv[1]["self_ms"])[:15])
    return (
        {
            "forwards": iters,
            "wall_ms_per_forward_unprofiled": wall,
            "wall_ms_per_forward_profiled": profiled,
            "op_self_ms_per_forward_profiled": op_ms,
            "ops_per_forward": sum(v["calls"] for v in ops.values()),
            **python_calls(m, inputs),
            "layers": layers,
            "outside_ops_ms_per_layer_bounds": [(wall - op_ms) / layers, (profiled - op_ms) / layers],
            "top_ops": top,
        },
        events.table(sort_by="self_cpu_time_total", row_limit=25),
    )


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--llm", action="store_true", help="SmolLM2 greedy decoding instead of MiniLM")
    p.add_argument("--tiny", action="store_true", help="random tiny BERT / Llama: a smoke test of the harness")
    p.add_argument("--quick", action="store_true", help="2 rounds x 3 blocks (a look, not a figure)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --llm 5; --quick 2)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed blocks per variant and round (default 10; --llm 2; --quick 3, --llm --quick 1)",
    )
    p.add_argument("--block-ms", type=float, default=20.0, help="target duration of one timed block")
    p.add_argument("--new-tokens", type=int, default=128, help="--llm: greedy tokens per call")
    p.add_argument("--only", nargs="*", help="variants whose name contains one of these (fp32 always)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="MiniLM: torch.profiler of netslim int8 and fp32 at each shape, after the timing",
    )
    p.add_argument(
        "--fidelity-only",
        action="store_true",
        help="build and score every variant, time nothing (a correctness check; writes no result)",
    )
    p.add_argument(
        "--build-only",
        action="store_true",
        help="build / cache every artifact and exported file, time nothing (run it before a timing job)",
    )
    p.add_argument("--cache", default=None, help="artifacts / exported files (default $NETSLIM_CACHE/bench/issue25)")
    p.add_argument("--out", default=None, help="result JSON (the .md beside it)")
    args = p.parse_args(argv)
    llm_defaults = (5, 2) if not args.quick else (2, 1)
    defaults = llm_defaults if args.llm else ((2, 3) if args.quick else (7, 10))
    args.rounds = args.rounds or defaults[0]
    args.repeats = args.repeats or defaults[1]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.llm:
        from inference_llm import run_llm

        record, markdown = run_llm(args)
        stem = "issue25_smollm2"
    else:
        record, markdown = run_minilm(args)
        stem = "issue25_minilm"
    if args.build_only or args.fidelity_only:
        print(markdown if args.fidelity_only else json.dumps(record["notes"], indent=2, default=str))
        return 0
    path = write_outputs(record, markdown, stem, args)
    print(markdown)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
