"""Issue 23: what checking an artifact's SHA-256 checksums costs on load.

For each model, the artifact is saved once (``netslim.save``, which stores a SHA-256 of the
description and of every tensor), then ``netslim.load(path, verify=True)`` and
``netslim.load(path, verify=False)`` are timed A/B interleaved - the order alternates every
round (on, off / off, on) so that drift in the machine's load hits both - after one warm-up
load of each (the file is then in the page cache: these are warm-cache times, the case where
hashing is the largest share). Reported per mode: median, IQR and min of the wall-clock
seconds; the overhead is the difference of the medians, and ``hash_only_s`` times the
checksum verification alone (:func:`netslim.core.artifact_schema.verify_integrity`).

Models: LeNet-300 and ResNet-20 (random init: the weights do not matter for hashing) and
SmolLM2-135M (``build_model("smollm2")``: fp32, ~540 MB, its weights dequantized from the
packaged 4-bit GGUF).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/checksum_overhead.py [--models lenet300 resnet20 smollm2]
        [--repeats 9] [--threads 1] [--out benchmarks/results/checksum_overhead.json]

``--threads`` sets torch's threads, which also bounds the threads that hash tensors in parallel.
Results: ``benchmarks/results/checksum_overhead.json`` with the command, date, machine (nproc,
CPU model from /proc/cpuinfo) and load average before and after each model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from baselines import cpu_name  # benchmarks/ is on sys.path when this runs as a script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "checksum_overhead.json"
MODELS = ("lenet300", "resnet20", "smollm2")


def machine() -> dict:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "nproc": affinity or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median_s": round(statistics.median(times), 5),
        "iqr_s": round(q[2] - q[0], 5),
        "min_s": round(min(times), 5),
        "runs": [round(t, 5) for t in times],
    }


def timed_load(path: Path, verify: bool) -> float:
    import netslim

    t0 = time.perf_counter()
    model = netslim.load(path, verify=verify)
    seconds = time.perf_counter() - t0
    del model
    gc.collect()
    return seconds


def hash_only(path: Path) -> float:
    """Seconds of the checksum verification alone (header parse included)."""
    from netslim.core.artifact_schema import (
        hash_threads,
        parse_description,
        read_header,
        read_integrity,
        verify_integrity,
    )

    t0 = time.perf_counter()
    header = read_header(path)
    text, _ = parse_description(header)
    verify_integrity(header, read_integrity(header), text, hash_threads())
    return time.perf_counter() - t0


def bench_model(name: str, work: Path, repeats: int) -> dict:
    import netslim

    started, load_before = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), loadavg()
    model = netslim.build_model(name).eval()
    path = work / f"{name}.safetensors"
    t0 = time.perf_counter()
    netslim.save(model, path)
    save_s = time.perf_counter() - t0
    n_tensors = len(model.state_dict())
    del model
    gc.collect()
    times: dict[bool, list[float]] = {True: [], False: []}
    for verify in (True, False):  # warm-up: page cache, lazy imports, the kernel build
        timed_load(path, verify)
    for r in range(repeats):
        for verify in (True, False) if r % 2 == 0 else (False, True):
            times[verify].append(timed_load(path, verify))
    hashing = [hash_only(path) for _ in range(max(3, repeats // 2))]
    on, off = summary(times[True]), summary(times[False])
    overhead = on["median_s"] - off["median_s"]
    size = path.stat().st_size
    result = {
        "model": name,
        "file_bytes": size,
        "tensors": n_tensors,
        "save_s": round(save_s, 4),
        "verify_on": on,
        "verify_off": off,
        "overhead_s": round(overhead, 5),
        "overhead_ratio": round(on["median_s"] / off["median_s"], 4) if off["median_s"] else None,
        "hash_only_s": summary(hashing),
        "hash_mb_per_s": round(size / 1e6 / statistics.median(hashing), 1),
        "started": started,
        "load_before": load_before,
        "load_after": loadavg(),
    }
    path.unlink()
    print(
        f"{name}: {size / 1e6:.1f} MB, load verify on {on['median_s'] * 1e3:.1f} ms / off "
        f"{off['median_s'] * 1e3:.1f} ms (+{overhead * 1e3:.1f} ms, x{result['overhead_ratio']}), "
        f"hashing alone {statistics.median(hashing) * 1e3:.1f} ms",
        flush=True,
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--repeats", type=int, default=9, help="timed loads per mode (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 or 2 on the shared machine)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=None, help="where the artifacts are written (default: a temp dir)")
    args = ap.parse_args()
    if args.repeats < 2 or args.threads < 1:
        ap.error("--repeats must be >= 2 and --threads >= 1")

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("NETSLIM_PROGRESS", "0")
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "method": "netslim.load wall time, warm page cache, A/B interleaved (order alternating per round), "
        "medians; overhead = median(verify on) - median(verify off)",
        "load_before": loadavg(),
        "models": {},
    }
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for name in args.models:
            out["models"][name] = bench_model(name, Path(tmp), args.repeats)
    out["load_after"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
