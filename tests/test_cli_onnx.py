"""`netslim eval / bench / inspect` of an .onnx from a recipe run, through the CLI (issue 18).

A user's CNN file on an image folder: PTQ int8 -> export format onnx. The .onnx re-scores the
run's own data (stored in its metadata) in ONNX Runtime as the PyTorch int8 model scored it,
bench measures it from what it stores, inspect lists its QDQ layers and the check made at export;
a damaged .onnx, or a model no graph can express, is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from PIL import Image
from test_cli import run_cli

CNN = textwrap.dedent("""
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))


    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 2)

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return y if y.sum() > 0 else -y  # a Python branch on tensor values: no graph expresses it


    def branchy():
        torch.manual_seed(0)
        return Branchy()
""")
RECIPE = """name: onnx_cnn
measure: {batch_size: 4, repeats: 3}
steps:
  - method: ptq_int8
    calibration_samples: 16
  - method: evaluate
  - method: export
    format: onnx
    filename: q
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_cli")
    (d / "cnn.py").write_text(CNN)
    rng = np.random.default_rng(0)
    for c, base in (("a", 40), ("b", 150)):
        (d / "imgs" / c).mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(base + rng.normal(0, 40, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / "imgs" / c / f"{i}.png")
    (d / "r.yaml").write_text(RECIPE)
    run_cli("compress", d / "r.yaml", "--model", f"{d / 'cnn.py'}:build", "--data", d / "imgs", "--out", d / "out")
    return d, d / "out", json.loads((d / "out" / "report.json").read_text())


WIDE = {"COLUMNS": "250"}  # rich wraps table cells at the terminal's width


def _metrics(stdout: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-0-9.]+)", stdout)}


def test_report_records_the_ort_check(run):
    _, out, rep = run
    assert rep["artifact"].endswith("q.onnx") and (out / "q.onnx").is_file()
    check = rep["steps"][-1]["notes"]["export"]["ort_check"]
    assert check["within_tolerance"] and check["provider"] == "CPUExecutionProvider"
    assert check["inputs"]["input"][0] == 8 and check["mean_abs_diff"] <= check["tolerance"]["bound"]
    assert not any("ONNX Runtime check" in w for w in rep["warnings"])


def test_eval_rescores_the_runs_data_in_onnxruntime(run):
    d, out, rep = run
    proc = run_cli("eval", out / "q.onnx")
    assert f"data: {d / 'imgs'} (image-classification" in proc.stdout and "the data of the run" in proc.stdout
    got, torch_int8 = _metrics(proc.stdout), rep["steps"][1]["notes"]["evaluate"]
    # ORT's fused integer kernels: within the stated bound of the PyTorch int8 model
    assert got["accuracy"] == pytest.approx(torch_int8["accuracy"], abs=1 / 8)
    assert got["loss"] == pytest.approx(torch_int8["loss"], abs=0.02)


def test_bench_measures_the_file(run):
    _, out, rep = run
    proc = run_cli("bench", out / "q.onnx", "--batch-size", 4, "--repeats", 3, env_extra=WIDE)
    rows = dict(re.findall(r"│ (\w+)\s+│\s+([0-9.,e-]+) │", proc.stdout))
    assert int(rows["params"].replace(",", "")) == rep["final"]["params"] == 554
    assert int(rows["size_bytes"].replace(",", "")) == (out / "q.onnx").stat().st_size
    assert int(rows["macs"].replace(",", "")) == rep["final"]["macs"]
    assert float(rows["latency_ms_b1"]) > 0


def test_inspect_lists_qdq_layers_and_the_check(run):
    _, out, _ = run
    text = " ".join(run_cli("inspect", out / "q.onnx", env_extra=WIDE).stdout.split())
    assert re.search(r"QDQ layers \(int8 weights dequantized in the graph\) │ 2 │", text)
    assert "ONNX Runtime check at export" in text and "within tolerance" in text


def test_damaged_onnx_and_inexpressible_model_exit_2_with_one_line(run, tmp_path):
    d, out, _ = run
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((out / "q.onnx").read_bytes()[:1500])
    proc = run_cli("eval", bad, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"netslim: error: {bad}: not a readable ONNX model")

    target = tmp_path / "out"
    proc = run_cli(
        "compress",
        d / "r.yaml",
        "--model",
        f"{d / 'cnn.py'}:branchy",
        "--data",
        d / "imgs",
        "--out",
        target,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert re.match(r"netslim: error: step 3 \(export\): ONNX export of Branchy failed: .*data-dependent", proc.stderr)
    assert not [p.name for p in target.iterdir() if "q.onnx" in p.name]  # no file, no temporary left
