"""The benchmark harness: the record schema and writer, the composer of BENCHMARKS.md, run_all's registry."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import compose  # noqa: E402
import record  # noqa: E402
import reference_tables  # noqa: E402
import run_all  # noqa: E402

# Every spelling the records written before record.py used, with the (before, after) it means.
LEGACY = [
    ({"load_avg": 2.5}, None, [2.5]),
    ({"load_avg": [1.0, 2.0, 3.0]}, None, [1.0, 2.0, 3.0]),
    ({"load_avg_at_measure": 1.67}, None, [1.67]),
    ({"load_avg_start_end": [16.5, 15.9]}, [16.5], [15.9]),
    ({"load_before": [1, 2, 3], "load_after": [4, 5, 6]}, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]),
    ({"machine": {"load_before": [2.0], "load_after": [1.0]}}, [2.0], [1.0]),
    ({"load_average_start": [4.84], "load_average_end": [2.3]}, [4.84], [2.3]),
    ({"loadavg_1m_end": 2.2}, None, [2.2]),
    ({"loadavg_at_measure": [3.84, 4.47, 4.52]}, None, [3.84, 4.47, 4.52]),
    ({"loadavg_before_after": [[3.25, 3.2, 3.1], [3.09, 3.16, 3.1]]}, [3.25, 3.2, 3.1], [3.09, 3.16, 3.1]),
    ({"load_avg": {"before": [1.0, 1.0, 1.0], "after": [2.0, 2.0, 2.0]}}, [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]),
    ({"seconds": 3.0}, None, None),
]


@pytest.mark.parametrize(("obj", "before", "after"), LEGACY)
def test_load_average_reads_every_spelling(obj, before, after):
    assert record.load_average(obj) == {"before": before, "after": after}


def test_every_result_file_reads_and_no_spelling_is_left_unread():
    keys = set()

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if re.fullmatch(r"load_?av\w*|load_(before|after)", k):
                    keys.add(k)
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for path in sorted((BENCH / "results").glob("*.json*")):
        walk(record.read(path))
    known = {k for obj, _, _ in LEGACY for k in obj} | {"load_before", "load_after"}
    assert keys <= known, f"a load spelling record.load_average does not read: {sorted(keys - known)}"


def test_record_written_atomically_with_machine_and_metrics(tmp_path):
    rec = record.start("unit", argv=["benchmarks/unit.py", "--flag", "a b"])
    out = record.write(tmp_path / "r.json", record.finish(rec, {"accuracy": 0.9}))
    doc = json.loads(out.read_text())
    assert doc["schema"] == record.SCHEMA and doc["name"] == "unit"
    assert doc["command"] == "benchmarks/unit.py --flag 'a b'"
    assert doc["metrics"] == {"accuracy": 0.9}
    assert doc["wall_s"] >= 0 and doc["finished_utc"] >= doc["started_utc"]
    assert set(doc["load_avg"]) == {"before", "after"} and len(doc["load_avg"]["after"]) == 3
    assert doc["machine"]["logical_cpus"] >= 1 and "amx_int8" in doc["machine"]["flags"]
    assert "_t0" not in doc and list(tmp_path.iterdir()) == [out]  # no temporary file left
    assert record.is_record(doc) and record.body(doc) == {"accuracy": 0.9}
    assert record.describe(doc)["date"] == doc["started_utc"][:10]


def test_update_keeps_the_other_keys(tmp_path):
    path = tmp_path / "keyed.json"
    path.write_text(json.dumps({"old": {"loadavg_1m_end": 1.0}}))
    record.update(path, "new", record.finish(record.start("new", argv=["x.py"])))
    doc = json.loads(path.read_text())
    assert set(doc) == {"old", "new"} and record.is_record(doc["new"])


def test_benchmarks_md_is_composed_from_its_sources():
    text, _ = compose.compose()
    assert (BENCH.parent / "BENCHMARKS.md").read_text() == text, (
        "BENCHMARKS.md differs from benchmarks/reference + records: run `python benchmarks/compose.py`"
    )


def test_every_reference_row_names_a_record_and_a_known_run():
    text, _ = compose.compose()
    assert compose.check_tables(text, "BENCHMARKS.md") == []
    rows = [line for line in text.splitlines() if line.startswith("| ") and "](benchmarks/results/" in line]
    assert len(rows) > 80
    bad = compose.check_tables("| value | record |\n|---|---|\n| 1 % | somewhere |\n", "t")
    assert bad and "no record" in bad[0]
    bad = compose.check_tables("| value | run | record |\n|---|---|---|\n| 1 | `nope` | no record |\n", "t")
    assert bad and "nope" in bad[0]


def test_links_and_anchors_are_checked(tmp_path):
    cache: dict = {compose.OUT: {"present"}}
    problems, _ = compose.check_links("[a](#present) [b](#absent) [c](benchmarks/results/none.json)", "t", cache)
    assert len(problems) == 2 and "#absent" in problems[0] and "none.json" in problems[1]
    assert compose.slug("LeNet-300-100 at 95 %: the shipped recipe") == "lenet-300-100-at-95--the-shipped-recipe"
    assert compose.slug("Fuzz suite (`tests/test_fuzz.py`)") == "fuzz-suite-teststest_fuzzpy"


def test_every_generated_table_renders():
    for name, fn in reference_tables.TABLES.items():
        out = fn(BENCH / "results")
        assert out.startswith("| ") and "benchmarks/results/" in out, name


def test_run_registry_is_consistent():
    ids = [r.id for r in run_all.RUNS]
    assert len(ids) == len(set(ids))
    sections = "".join(p.read_text() for p in (BENCH / "reference").glob("*.md"))
    for technique in {r.technique for r in run_all.RUNS}:
        assert f"<!-- runs: {technique} -->" in sections, f"no reference section lists the runs of {technique}"
    quick = [r for r in run_all.RUNS if r.quick]
    assert quick and all(r.minutes is not None for r in quick)
    assert sum(r.minutes for r in quick) < run_all.QUICK_BUDGET_MIN


def test_dry_run_prints_every_command(capsys):
    assert run_all.main(["--quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for r in run_all.RUNS:
        assert (f"# {r.id} " in out) == r.quick
    assert "benchmarks/quantize.py resnet20 --only minmax" in out
    assert run_all.main(["--dry-run", "journeys"]) == 0 and "journeys.py a b c" in capsys.readouterr().out


def test_generated_tables_read_records_of_the_new_schema(tmp_path):
    """A converted script (quantize.py) writes its rows under ``metrics``; the table reads them and the header."""
    rows = {
        "fp32": {"accuracy": 0.939, "bytes": 1000, "size_vs_fp32": 1.0, "latency_ms": 14.0, "speedup": 1.0},
        "fp32 channels-last": {"latency_ms": 13.0, "speedup": 1.08},
        "int8 PTQ (minmax)": {
            "accuracy": 0.9384,
            "bytes": 267,
            "size_vs_fp32": 0.267,
            "latency_ms": 5.0,
            "speedup": 2.8,
        },
    }
    for name in ("quantize_resnet20_int8_rerun2.json", "quantize_resnet20_int8_rerun.json"):
        rec = record.start(name[:-5], argv=["benchmarks/quantize.py", "resnet20"])
        record.write(tmp_path / name, record.finish(rec, {"model": "resnet20", "threads": 2, "rows": rows}))
    table = reference_tables.int8_resnet20(tmp_path)
    assert "**2.80x**" in table and "2.60x" in table and rec["started_utc"][:10] in table
    assert f"{rec['load_avg']['before'][0]:.1f} → {rec['load_avg']['after'][0]:.1f}" in table
