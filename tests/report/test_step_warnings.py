"""Warnings a step writes into its notes reach the report's Warnings section (report.json / .md / .html)."""

from __future__ import annotations

import json

from netslim.report import write_report

BLOCK = {
    "accuracy": 0.9,
    "params": 10,
    "nonzero": 10,
    "macs": 10,
    "size_bytes": 100,
    "latency_ms_b1": 1.0,
    "latency_ms_b1_iqr": 0.01,
    "latency_ms_bN": 1.0,
    "latency_ms_bN_iqr": 0.01,
    "batch_N": 8,
}
LAYER = {
    "name": "fc",
    "type": "Linear",
    "shape": [4, 4],
    "params": 20,
    "nonzero": 20,
    "bits": 32.0,
    "macs": 16,
    "kind": "dense fp32",
    "sparsity": 0.0,
    "stored_bytes": 80,
}


def test_step_note_warnings_are_report_warnings(tmp_path):
    said = "ONNX Runtime check of m.onnx: max_abs_diff 0.5 vs the PyTorch model exceeds the stated tolerance 0.001."
    steps = [
        {"method": "ptq_int8", "seconds": 1.0, "metrics": BLOCK, "notes": {"ptq_int8": {"layers": 2}}},
        {
            "method": "export",
            "seconds": 1.0,
            "metrics": BLOCK,
            "notes": {"export": {"format": "onnx", "ort_check": {"max_abs_diff": 0.5}, "warnings": [said]}},
        },
    ]
    report = {
        "recipe": "r",
        "model": "m",
        "dataset": "d",
        "metric": "accuracy",
        "artifact": "/x/m.onnx",
        "baseline": BLOCK,
        "final": BLOCK,
        "layers": [LAYER],
        "skipped": [],
        "steps": steps,
    }
    write_report(report, tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["warnings"] == [f"step 2 (export): {said}"]  # and no latency advice: the timings were fine
    for f in ("report.md", "report.html"):
        assert "ONNX Runtime check of m.onnx" in (tmp_path / f).read_text()
