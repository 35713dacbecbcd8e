"""Issue 18 — the int8 models of the shipped recipes as ONNX, run by ONNX Runtime, vs PyTorch int8.

For ResNet-20 (``int8_resnet20``: static int8 PTQ, Fashion-MNIST) and MiniLM (``int8_minilm``:
dynamic int8, bf16 body, pydocs sentences) the shipped recipe runs with its export step
replaced by ``export: {format: onnx}`` (the step records its ONNX Runtime check). Then, in one
process:

* metric: the run's task rebuilt from the .onnx file as ``netslim eval`` rebuilds it (its stored
  data; fidelity against the run's baseline.safetensors), scored on the PyTorch int8 model and
  on the .onnx in ONNX Runtime (``netslim.models.onnx_model.OnnxModel``, all graph optimisations);
* latency at batch 1 and 32: A/B interleaved rounds (PyTorch int8, ORT, PyTorch int8, ...), each
  round a warm-up and ``--repeats`` timed calls, median and IQR of all rounds pooled, both
  runtimes pinned to ``--threads`` intra-op threads (ORT's session follows torch's count);
* bytes: the .onnx file vs the int8 safetensors artifact of the same model.

Stated tolerance of "equal": accuracy within 0.2 pp (ResNet-20, 10,000 test images: at most
20 predictions moved by ORT's integer requantization), fidelity within 1e-3 (MiniLM).

    NETSLIM_CACHE=$PWD/.cache/netslim OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_runtime.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_runtime.py --tiny   # random ResNet-20 + tiny BERT, small data

Results: ``benchmarks/results/issue18_onnx.json`` (``--tiny``: a temporary file unless ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import netslim
from netslim.api import recipe_path
from netslim.core.serialize import atomic_write
from netslim.measure.latency import interleaved_timings
from netslim.models.sources import open_model
from netslim.recipe.inputs import resolve_task, stored_reference
from netslim.recipe.spec import load_yaml

ROOT = Path(__file__).resolve().parent
TOLERANCE = {"accuracy": 0.002, "fidelity": 1e-3}
# name -> (shipped recipe, model ref, recipe overrides) at real size / with --tiny
CASES = {
    "resnet20": ("int8_resnet20", "resnet20", {}),
    "minilm": ("int8_minilm", "minilm", {}),
}
TINY = {
    "resnet20": (
        "int8_resnet20",
        None,
        {"dataset": "fashion-mnist", "data": {"limit": 200}, "step": {"calibration_samples": 32}},
    ),
    "minilm": ("int8_minilm", "tiny-bert", {"data": {"limit": 40}}),
}


def _recipe(name: str, case: str, overrides: dict) -> dict:
    """The shipped recipe with its export step as ONNX and a light in-run measurement (timed here instead)."""
    rec = load_yaml(recipe_path(name))
    steps = [s for s in rec["steps"] if s["method"] != "export"]
    steps[0] = {**steps[0], **overrides.get("step", {})}
    rec.update(
        steps=[*steps, {"method": "export", "format": "onnx", "filename": f"{case}_int8"}],
        measure={"batch_size": 32, "repeats": 3},
    )
    rec.update({k: v for k, v in overrides.items() if k in ("dataset", "data")})
    return rec


def _model_ref(case: str, ref: str | None):
    if ref is not None:
        return ref
    torch.manual_seed(0)
    return netslim.build_model(case)  # --tiny: random weights, no trained checkpoint needed


def _timing(t) -> dict:
    return {"median_ms": t.median_ms, "q1_ms": t.q1_ms, "q3_ms": t.q3_ms, "iqr_ms": t.iqr_ms, "repeats": t.repeats}


def run_case(case: str, spec: tuple, args, work: Path) -> dict:
    recipe_name, ref, overrides = spec
    t0 = time.perf_counter()
    result = netslim.compress(_model_ref(case, ref), _recipe(recipe_name, case, overrides), out=work / case)
    compress_s = time.perf_counter() - t0
    onnx_path = Path(result.artifact)
    torch_int8 = result.model.eval()
    opened = open_model(str(onnx_path))
    task = resolve_task(opened, reference=stored_reference(opened))  # as `netslim eval x.onnx` does
    ort_model = opened.model
    metric = task.metric
    with torch.inference_mode():
        scores = {"pytorch_int8": task.evaluate(torch_int8)[metric], "onnx_ort": task.evaluate(ort_model)[metric]}
    latency = {}
    for batch in (1, 32):
        t = interleaved_timings(
            {"pytorch_int8": torch_int8, "onnx_ort": ort_model},
            task.example_inputs(batch),
            rounds=args.rounds,
            repeats=args.repeats,
            threads=args.threads,
        )
        latency[f"batch_{batch}"] = {k: _timing(v) for k, v in t.items()} | {
            "onnx_over_pytorch": t["onnx_ort"].median_ms / t["pytorch_int8"].median_ms
        }
    safet = netslim.save(torch_int8, work / f"{case}_int8.safetensors", opened.info)
    export_notes = result.report["steps"][-1]["notes"]["export"]
    delta = scores["onnx_ort"] - scores["pytorch_int8"]
    return {
        "recipe": recipe_name,
        "model": result.report["model"],
        "dataset": result.report["dataset"],
        "metric": metric,
        "scores": scores,
        "delta": delta,
        "tolerance": TOLERANCE[metric],
        "equal_within_tolerance": abs(delta) <= TOLERANCE[metric],
        "baseline_fp32": result.report["baseline"].get(metric),
        "ort_check_at_export": export_notes.get("ort_check"),
        "export_warnings": export_notes.get("warnings", []),
        "latency": latency,
        "bytes": {"onnx": onnx_path.stat().st_size, "int8_safetensors": safet.stat().st_size},
        "compress_seconds": compress_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="random ResNet-20 and tiny BERT on small data: a smoke check")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes (default 1)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --tiny 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per round (default 30; --tiny 3)")
    ap.add_argument("--only", choices=sorted(CASES), action="append", help="run only this model (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/issue18_onnx.json)")
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.tiny else 7)
    args.repeats = args.repeats or (3 if args.tiny else 30)
    out = args.out or (
        Path(tempfile.mkdtemp()) / "issue18_onnx_tiny.json" if args.tiny else ROOT / "results" / "issue18_onnx.json"
    )
    cases = TINY if args.tiny else CASES
    import onnxruntime

    result = {
        "issue": 18,
        "what": "int8 model of the shipped recipe: PyTorch vs its ONNX export in ONNX Runtime",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
        "tiny": args.tiny,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_before": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "protocol": f"A/B interleaved, {args.rounds} rounds x {args.repeats} calls (2 warm-up calls per round), "
        f"median and IQR of all rounds pooled, {args.threads} intra-op thread(s) in both runtimes; "
        "metric on the run's test split rebuilt from the .onnx as `netslim eval` does",
        "threads": args.threads,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="netslim_issue18_") as tmp:
        for case in args.only or list(cases):
            result["models"][case] = run_case(case, cases[case], args, Path(tmp))
            print(
                f"{case}: {json.dumps(result['models'][case]['scores'])}, ORT/PyTorch latency b1 "
                f"{result['models'][case]['latency']['batch_1']['onnx_over_pytorch']:.2f}x, b32 "
                f"{result['models'][case]['latency']['batch_32']['onnx_over_pytorch']:.2f}x",
                flush=True,
            )
    result["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda t: Path(t).write_text(json.dumps(result, indent=2, default=float)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
