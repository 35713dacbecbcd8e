"""`make bench`: run every benchmark script in order; each refreshes its BENCHMARKS.md section.

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
SCRIPTS: list[tuple[str, list[str]]] = [
    ("baselines", ["--reuse"]),
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
