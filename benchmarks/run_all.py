"""`make bench`: run every benchmark script in order.

Each writes its JSON under benchmarks/results/; baselines.py also refreshes the baselines table
of BENCHMARKS.md in place, the other sections are written from the JSON files.

Scripts are listed explicitly (no discovery), cheapest first. Pass script names to run a
subset: `python benchmarks/run_all.py baselines`.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, arguments): baselines reuse cached checkpoints so later scripts find them.
# Long: the whole list takes hours on 2 CPU cores; pass names to run a subset.
SCRIPTS: list[tuple[str, list[str]]] = [
    ("baselines", ["--reuse"]),
    ("hf_baselines", []),
    ("prune_unstructured", []),
    ("prune_compare", ["--model", "lenet300", "--sparsity", "0.9", "0.95"]),
    ("deep_compression", ["--models", "lenet300,lenet5,resnet20"]),
    ("quantize", ["minilm"]),
    ("quantize", ["resnet20"]),
    ("quantize", ["smollm2"]),
    ("lowrank_distill", []),
    ("structured", ["cnn", "--model", "resnet20", "--epochs", "5", "--lr", "0.02", "--tag", "2x"]),
    ("structured", ["latency", "--model", "resnet20", "--tag", "2x"]),
    ("structured", ["minilm"]),
    ("structured", ["smollm2"]),
    ("llm_oneshot", []),
]


def main(argv: list[str]) -> int:
    wanted = set(argv)
    failed = []
    for name, args in SCRIPTS:
        if wanted and name not in wanted:
            continue
        path = HERE / f"{name}.py"
        if not path.is_file():
            print(f"[bench] {name}: missing, skipped", flush=True)
            continue
        t0 = time.time()
        print(f"[bench] {name} {' '.join(args)}", flush=True)
        rc = subprocess.call([sys.executable, str(path), *args])
        print(f"[bench] {name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
