"""Issue 17 at real size: the three new-user journeys, run through the CLI exactly as the README shows.

Inputs come from ``benchmarks/byo_data.py all .cache/byo`` (Fashion-MNIST PNG folders, the
docs-section JSONL folder, an untrained MiniLM classifier directory, SmolLM2 as a
``save_pretrained`` directory, one plain-text corpus file). Each command is timed (wall
seconds) and its peak RSS read from ``wait4``; each journey's ``report.json`` and the
``netslim eval`` line of its artifact are stored in ``benchmarks/results/issue17_journeys.json``.

    .venv/bin/python benchmarks/journeys.py [a] [b] [c] [--work .cache/journeys]

SmolLM2's weights are dequantized from a 4-bit GGUF (Q4_1): see BENCHMARKS.md's note.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETSLIM = [str(ROOT / ".venv" / "bin" / "netslim")]
BYO = ROOT / ".cache" / "byo"
CNN = "benchmarks/user_models/fmnist_cnn.py:build"
RESULTS = ROOT / "benchmarks" / "results" / "issue17_journeys.json"


def run(cmd: list[str]) -> dict:
    """Run ``cmd`` from the repo root; wall seconds, peak RSS (MiB) and the output's last lines."""
    env = {**os.environ, "NETSLIM_PROGRESS": "0", "COLUMNS": "160"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    record = {
        "command": " ".join(c if " " not in c else repr(c) for c in cmd),
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "exit": code,
        "output": out.strip().splitlines()[-12:],
    }
    print(f"[{seconds:7.1f} s, {record['peak_rss_mib']} MiB, exit {code}] {record['command']}", flush=True)
    if code != 0:
        print(out, file=sys.stderr)
        raise SystemExit(f"command failed: {record['command']}")
    return record


def _report(out: Path) -> dict:
    rep = json.loads((out / "report.json").read_text())
    keep = ("recipe", "model", "dataset", "metric", "artifact", "baseline", "final", "skipped")
    return {k: rep[k] for k in keep} | {
        "steps": [
            {"method": s["method"], "seconds": round(s["seconds"], 1), "metrics": s["metrics"]} for s in rep["steps"]
        ]
    }


def _eval_value(record: dict, metric: str) -> float | None:
    m = re.search(rf"{metric}=([0-9.]+)", "\n".join(record["output"]))
    return float(m.group(1)) if m else None


def journey_a(work: Path, epochs: int) -> dict:
    trained = work / "a_cnn.safetensors"
    out = work / "a_run"
    cmds = [
        run(
            [
                *NETSLIM,
                "train",
                "--model",
                CNN,
                "--data",
                str(BYO / "fmnist_png"),
                "--epochs",
                str(epochs),
                "--out",
                str(trained),
            ]
        ),
        run(
            [
                *NETSLIM,
                "compress",
                "channels_50_int8",
                "--model",
                CNN,
                "--weights",
                str(trained),
                "--data",
                str(BYO / "fmnist_png"),
                "--out",
                str(out),
            ]
        ),
    ]
    rep = _report(out)
    cmds.append(run([*NETSLIM, "eval", rep["artifact"], "--model", CNN]))
    return {"commands": cmds, "report": rep, "eval": _eval_value(cmds[-1], "accuracy")}


def journey_b(work: Path, limit: int, epochs: int) -> dict:
    trained = work / "b_minilm_docs.safetensors"
    out = work / "b_run"
    cmds = [
        run(
            [
                *NETSLIM,
                "train",
                str(BYO / "minilm_docs_init"),
                "--data",
                str(BYO / "docs_sections"),
                "--limit",
                str(limit),
                "--epochs",
                str(epochs),
                "--out",
                str(trained),
            ]
        ),
        run([*NETSLIM, "compress", "heads_ffn_distill", "--model", str(trained), "--out", str(out)]),
    ]
    rep = _report(out)
    cmds.append(run([*NETSLIM, "eval", rep["artifact"]]))
    return {"commands": cmds, "report": rep, "eval": _eval_value(cmds[-1], "accuracy")}


def journey_c(work: Path, recipes: list[str]) -> dict:
    res = {}
    for recipe in recipes:
        out = work / f"c_{recipe}"
        cmds = [
            run(
                [
                    *NETSLIM,
                    "compress",
                    recipe,
                    "--model",
                    str(BYO / "smollm2_hf"),
                    "--data",
                    str(BYO / "pydocs.txt"),
                    "--out",
                    str(out),
                ]
            )
        ]
        rep = _report(out)
        cmds.append(run([*NETSLIM, "eval", rep["artifact"]]))
        res[recipe] = {"commands": cmds, "report": rep, "eval": _eval_value(cmds[-1], "perplexity")}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("journeys", nargs="*", default=["a", "b", "c"], choices=["a", "b", "c"])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "journeys")
    ap.add_argument("--a-epochs", type=int, default=5)
    ap.add_argument("--b-limit", type=int, default=4000, help="at most this many paragraphs per split")
    ap.add_argument("--b-epochs", type=int, default=1)
    ap.add_argument("--c-recipes", nargs="+", default=["gptq_w4g128", "sparsegpt_50", "gptq_smollm2_w4g64"])
    args = ap.parse_args()
    if not (BYO / "fmnist_png").is_dir():
        raise SystemExit(f"{BYO} is missing its inputs: run `python benchmarks/byo_data.py all {BYO}` first.")
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for j in args.journeys:
        load = os.getloadavg()
        started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if j == "a":
            res = journey_a(args.work, args.a_epochs)
        elif j == "b":
            res = journey_b(args.work, args.b_limit, args.b_epochs)
        else:
            res = journey_c(args.work, args.c_recipes)
        results[j] = {
            "started": started,
            "load_before": [round(x, 2) for x in load],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "result": res,
        }
        RESULTS.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
