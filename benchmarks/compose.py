"""Compose BENCHMARKS.md: a reference organised by technique, then an index of the history.

Sources, in this order:

* ``benchmarks/reference/NN-*.md`` (curated): one file per technique family, prose and compact
  tables of the current best figures with their peers; a line ``<!-- table: NAME [k=v ...] -->``
  becomes a table computed from the records by ``reference_tables.py``, a line
  ``<!-- runs: TECHNIQUE -->`` the exact commands ``run_all.py`` holds for that technique;
* ``benchmarks/history/issueN.md`` and ``benchmarks/results/issueN_section.md`` (sections still
  being written): how each figure was reached, per development issue, linked from the index at
  the end (not inlined).

Checks, before anything is written (an error names every problem): each table marker names a
known table; each ``run`` cell names a run of ``run_all.py``; each row of a table with a
``record`` column links a file under ``benchmarks/results/`` or says "no record"; each local link
(records, history sections and their ``#anchors``) resolves. History files no reference section
links to are listed as warnings: a new section (issues 20, 21, 25 ...) needs its figures in the
reference.

    .venv/bin/python benchmarks/compose.py            # rewrite BENCHMARKS.md
    .venv/bin/python benchmarks/compose.py --check    # exit 1 if BENCHMARKS.md is not what the sources give
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_tables as tables
import run_all

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
REFERENCE = BENCH / "reference"
HISTORY = BENCH / "history"
OUT = ROOT / "BENCHMARKS.md"

TABLE = re.compile(r"^<!-- table: (\w+)((?: \w+=\S+)*) -->$", re.M)
RUNS = re.compile(r"^<!-- runs: ([\w-]+) -->$", re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


class ComposeError(Exception):
    pass


# ---------------------------------------------------------------------------------- sources
def history_files() -> dict[int, Path]:
    """Issue number -> its history file; a section still in results/ counts until it moves to history/."""
    found: dict[int, Path] = {}
    problems = []
    for path in [*sorted(HISTORY.glob("issue*.md")), *sorted(RESULTS.glob("issue*_section.md"))]:
        n = int(re.findall(r"\d+", path.stem)[0])
        if n in found:
            problems.append(
                f"issue {n} has two history files: {found[n].relative_to(ROOT)} and {path.relative_to(ROOT)}"
            )
        found[n] = path
    if problems:
        raise ComposeError("\n".join(problems))
    return dict(sorted(found.items()))


def _title(path: Path) -> str:
    for line in path.read_text().splitlines():
        m = HEADING.match(line)
        if m:
            return m.group(2)
    return path.stem


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


# ---------------------------------------------------------------------------------- expansion
def expand_tables(text: str, where: str, used: list[str]) -> str:
    def one(m: re.Match) -> str:
        name, opts = m.group(1), dict(kv.split("=", 1) for kv in m.group(2).split())
        if name not in tables.TABLES:
            raise ComposeError(f"{where}: unknown table {name!r}; known: {', '.join(tables.TABLES)}")
        used.append(name)
        body = tables.TABLES[name](RESULTS, **opts)
        return f"{body}\n\n*Generated from the records by `compose.py` (table `{name}`).*"

    return TABLE.sub(one, text)


def expand_runs(text: str, where: str) -> str:
    def one(m: re.Match) -> str:
        technique = m.group(1)
        runs = [r for r in run_all.RUNS if r.technique == technique]
        if not runs:
            raise ComposeError(f"{where}: no run of run_all.py has technique {technique!r}")
        lines = [
            f"<details><summary>Commands ({len(runs)} run{'s' if len(runs) > 1 else ''}; "
            "<code>benchmarks/run_all.py ID</code> runs one)</summary>",
            "",
        ]
        for r in runs:
            writes = ", ".join(f"`{w}`" for w in r.writes) or "no record"
            lines.append(
                f"- `{r.id}` ({run_all.minutes_text(r)}{', in --quick' if r.quick else ''}; writes {writes})"
                f"{': ' + r.note if r.note else ''}"
            )
            lines += [
                f"  `{run_all.shown(r, c)}`" + ("  " if i < len(r.cmds) - 1 else "") for i, c in enumerate(r.cmds)
            ]
        return "\n".join([*lines, "", "</details>"])

    return RUNS.sub(one, text)


def history_index(files: dict[int, Path], linked: set[Path]) -> str:
    rows = [
        "| issue | history (how the figures were reached, dated, superseded runs kept) | quoted above |",
        "|---|---|---|",
    ]
    for n, path in files.items():
        rel = path.relative_to(ROOT)
        where = "" if path.parent == HISTORY else " (still being written in `benchmarks/results/`)"
        rows.append(f"| {n} | [{_title(path)}]({rel}){where} | {'yes' if path in linked else '**not yet**'} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------- checks
def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def check_tables(text: str, where: str) -> list[str]:
    """Rows of tables with a ``record`` column link a record or say "no record"; ``run`` ids exist."""
    problems = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(line) <= set("|-: "):
            continue
        row = dict(zip(header, cells))
        rec = row.get("record")
        if rec is not None and rec and "benchmarks/results/" not in rec and "no record" not in rec:
            problems.append(f"{where}: row without a record link or 'no record': {line[:100]}")
        for rid in re.findall(r"`([\w-]+)`", row.get("run", "")):
            if rid not in run_all.BY_ID:
                problems.append(f"{where}: run id {rid!r} is not in run_all.py")
    return problems


def check_links(text: str, where: str, cache: dict[Path, set[str]]) -> tuple[list[str], set[Path]]:
    """Local links resolve: the file exists and, for ``#anchor``, has that heading (``cache[OUT]``: this
    document's own headings)."""
    problems, targets = [], set()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        full = (ROOT / path).resolve() if path else OUT
        if path and not full.exists():
            problems.append(f"{where}: link to a missing file: {target}")
            continue
        targets.add(full)
        if anchor and full.suffix == ".md":
            if full not in cache:
                cache[full] = anchors(full.read_text())
            if anchor not in cache[full]:
                problems.append(f"{where}: no heading for #{anchor} in {path or 'BENCHMARKS.md'}")
    return problems, targets


# ---------------------------------------------------------------------------------- composition
def compose() -> tuple[str, list[str]]:
    """BENCHMARKS.md's text and the warnings (errors raise ComposeError)."""
    files = history_files()
    parts, problems, used, linked = [], [], [], set()
    cache: dict[Path, set[str]] = {}
    sources = sorted(REFERENCE.glob("*.md"))
    if not sources:
        raise ComposeError(f"no reference sources in {REFERENCE.relative_to(ROOT)}")
    for src in sources:
        where = str(src.relative_to(ROOT))
        parts.append((where, expand_runs(expand_tables(src.read_text().strip(), where, used), where)))
    cache[OUT] = anchors("\n\n".join(text for _, text in parts) + "\n## Contents\n## History\n")
    for where, text in parts:
        problems += check_tables(text, where)
        found, targets = check_links(text, where, cache)
        problems += found
        linked |= targets
    toc = "\n".join(
        f"- [{m.group(2)}](#{slug(m.group(2))})"
        for _, part in parts[1:]
        for m in [HEADING.match(part.splitlines()[0])]
        if m
    )
    history = history_index(files, linked)
    body = "\n\n".join(
        [
            parts[0][1],
            "## Contents\n\n" + toc + "\n- [History](#history)",
            *(text for _, text in parts[1:]),
            "## History\n\nWhat each development issue measured, in the order it happened, with the "
            "runs that were superseded or missed. The reference above quotes the current figures; "
            "these files keep how they were reached.\n\n" + history,
        ]
    )
    problems += check_links(body, "BENCHMARKS.md", cache)[0]
    if problems:
        raise ComposeError("\n".join(dict.fromkeys(problems)))
    warnings = [
        f"history file {p.relative_to(ROOT)} (issue {n}) is not quoted by any reference section"
        for n, p in files.items()
        if p not in linked
    ]
    return body.rstrip() + "\n", warnings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare with BENCHMARKS.md instead of writing it")
    args = p.parse_args(argv)
    try:
        text, warnings = compose()
    except ComposeError as e:
        print(f"compose.py: {e}", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"compose.py: warning: {w}", file=sys.stderr)
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT.name}: {'up to date' if same else 'differs from its sources: run benchmarks/compose.py'}")
        return 0 if same else 1
    tmp = OUT.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(OUT)
    print(f"{OUT}: {len(text):,} characters, {len(text.splitlines()):,} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
