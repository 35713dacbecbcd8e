"""benchmarks/inference.py (the issue-25 inference harness) at tiny sizes: its greedy loop, inputs and a smoke run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCH))  # the scripts import each other as benchmarks/ does when run
    try:
        import inference
        import inference_llm

        yield inference, inference_llm
    finally:
        sys.path.remove(str(BENCH))


def test_greedy_loop_equals_generate(harness):
    """The KV-cache loop every PyTorch decoding row runs = transformers' greedy generate."""
    from netslim.models import build_model

    _, llm = harness
    model = build_model("tiny-llama").eval()
    ids = torch.tensor([[5, 17, 99, 3, 42, 8]])
    ours = llm.Greedy(model, 12)(ids)
    with torch.inference_mode():
        ref = model.generate(
            ids, do_sample=False, max_new_tokens=12, min_new_tokens=12, attention_mask=torch.ones_like(ids)
        )[:, ids.shape[1] :]
    assert ours.shape == (1, 12) and torch.equal(ours, ref)


def test_minilm_inputs_are_the_three_shapes(harness):
    from netslim.train.lm_tasks import EmbeddingTask

    inference, _ = harness
    shapes = inference.minilm_inputs(EmbeddingTask(model_name="tiny-bert", limit=inference.SENTENCES))
    assert set(shapes) == set(inference.SHAPES)
    singles = shapes["b1"]["batches"]
    assert len(singles) == 64 and all(b["input_ids"].shape[0] == 1 for b in singles)
    assert int(shapes["b1"]["timed"]["attention_mask"].sum()) == shapes["b1"]["timed"]["input_ids"].shape[1]
    for s in ("b32", "b32x128"):  # 2 x 32 sentences, the first 32 timed
        assert [b["input_ids"].shape[0] for b in shapes[s]["batches"]] == [32, 32]
        assert shapes[s]["timed"] is shapes[s]["batches"][0]
    assert shapes["b32x128"]["timed"]["input_ids"].shape[1] == 128
    longest = max(int(b["attention_mask"].sum()) for b in singles[:32])
    assert shapes["b32"]["timed"]["input_ids"].shape[1] == longest


@pytest.mark.slow
def test_tiny_run_writes_every_shape_and_variant(harness, tmp_path):
    inference, _ = harness
    out = tmp_path / "m.json"
    argv = [
        "--tiny",
        "--quick",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--repeats",
        "1",
        "--block-ms",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(out),
        "--only",
        "netslim",
        "ORT int8 per-channel",
    ]
    assert inference.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["variants"] == ["fp32 eager", "netslim int8", "ORT int8 per-channel"]
    for s in inference.SHAPES:
        for v in record["variants"]:
            row = record["rows"][s][v]
            assert row["median_ms"] > 0 and row["calls_per_block"] >= 1 and 0.99 < row["fidelity"] <= 1.0 + 1e-6
    assert record["notes"]["netslim int8"]["command"].startswith("netslim compress int8_minilm")
    assert out.with_suffix(".md").read_text().count("| netslim int8 |") == 1


def test_teacher_forced_agreement_of_the_model_itself_is_one(harness):
    from netslim.models import build_model

    _, llm = harness
    g = llm.Greedy(build_model("tiny-llama").eval(), 10)
    ids = torch.tensor([[5, 17, 99, 3]])
    out = g(ids)
    assert torch.equal(g.teacher_forced(ids, out), out)


def test_ort_rows_alone_decode_as_pytorch(harness, tmp_path):
    """``--llm --only ORT`` builds fp32 and the ONNX Runtime rows only (netslim's KV-cache export and
    ORT's int8 of it); the fp32 decoder step decodes exactly what PyTorch decodes."""
    from types import SimpleNamespace

    _, llm = harness
    args = SimpleNamespace(tiny=True, new_tokens=10, only=["ORT"], threads=1)
    ids = torch.tensor([[5, 17, 99, 3, 42, 8]])
    variants, notes = llm.llm_variants(args, tmp_path, ids)
    assert list(variants) == ["fp32", "ORT fp32 (KV cache)", "ORT int8 per-channel (KV cache)"]
    ref = variants["fp32"](ids)
    ort = variants["ORT fp32 (KV cache)"]
    assert torch.equal(ort(ids), ref) and torch.equal(ort.teacher_forced(ids, ref), ref)
    assert notes["onnxruntime_files"]["export_check"]["greedy_tokens_equal"]
    assert "greedy tokens equal True" in notes["onnxruntime"]
    agreement = (variants["ORT int8 per-channel (KV cache)"].teacher_forced(ids, ref) == ref).float().mean()
    assert agreement >= 0.7
