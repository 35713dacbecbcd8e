"""Rebuild BENCHMARKS.md's per-issue sections from ``benchmarks/history/issueN.md`` and
``benchmarks/results/issueN_section.md`` (sections still being written).

Everything before the first ``## Issue 3`` heading (the header, the machine note and the
baselines of issue 2, whose table ``baselines.py`` refreshes in place) is kept as it is; each
later issue's section is owned by one file, so parallel work never edits BENCHMARKS.md itself.

    .venv/bin/python benchmarks/compose.py
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HISTORY = ROOT / "benchmarks" / "history"
FIRST_SECTION = 3


def compose(bench: Path = ROOT / "BENCHMARKS.md", results: Path = RESULTS) -> str:
    text = bench.read_text()
    start = re.search(rf"^## .*[Ii]ssue {FIRST_SECTION}\b", text, flags=re.M)
    if start is None:
        raise SystemExit(f"{bench}: no '## ... Issue {FIRST_SECTION}' heading to start the sections at")
    files = sorted([*results.glob("issue*_section.md"), *HISTORY.glob("issue*.md")],
                   key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    sections = [p.read_text().strip() for p in files if int(re.findall(r"\d+", p.stem)[0]) >= FIRST_SECTION]
    return text[:start.start()] + "\n\n".join(sections) + "\n"


def main() -> None:
    bench = ROOT / "BENCHMARKS.md"
    out = compose(bench)
    tmp = bench.with_suffix(".md.tmp")
    tmp.write_text(out)
    tmp.replace(bench)
    print(f"{bench}: {len(out):,} characters")


if __name__ == "__main__":
    main()
