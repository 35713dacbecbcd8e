"""A whole recipe with ``stream: true`` (issue 19, parts 1 and 2): the run streams a 3-shard
Hugging Face directory and reports what the in-memory run reports (same artifact tensors, same
perplexity, params, non-zeros, MACs), every stage's measured peak memory and time; bad input
is one line, exit code 2, nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")

import netslim
from netslim.models.hf_tiny import tiny_decoder, tiny_llama
from netslim.models.hf_tokenizers import byte_tokenizer

STEPS = [
    {"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 64, "batch_size": 2},
    {"method": "evaluate"},
    {"method": "export", "format": "sparse"},
]
MEASURE = {"batch_size": 1, "repeats": 2, "paired": False}


def save_3_shards(model: torch.nn.Module, path: Path) -> None:
    """``save_pretrained``, its weights then split into 3 shards with an index (as HF writes them)."""
    from safetensors.torch import save_file

    model.save_pretrained(path)
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    names, weight_map = list(state), {}
    for k in range(3):
        file = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file({n: state[n] for n in names[k::3]}, str(path / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names[k::3]})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stream_run")
    save_3_shards(tiny_llama(), root / "model")
    byte_tokenizer("causal").save_pretrained(root / "model")
    (root / "corpus.txt").write_text(
        "".join(f"Line {i} of a text to score a language model on, with words.\n" for i in range(400))
    )
    return root / "model", root / "corpus.txt"


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    model, corpus = inputs
    out = tmp_path_factory.mktemp("runs")
    reports = {}
    for stream in (False, True):
        recipe = {"name": "t", "stream": stream, "data": {"seq_len": 64}, "measure": MEASURE, "steps": STEPS}
        reports[stream] = netslim.compress(str(model), recipe, data=str(corpus), out=out / str(stream)).report
    return reports


def test_streamed_run_writes_the_in_memory_artifact(runs):
    a, b = load_file(runs[False]["artifact"]), load_file(runs[True]["artifact"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = netslim.load(runs[True]["artifact"])  # an ordinary artifact: CSR layers, loadable
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "SparseLinear"


@pytest.mark.parametrize("block", ["baseline", "final"])
def test_streamed_run_reports_the_same_numbers(runs, block):
    mem, st = runs[False][block], runs[True][block]
    for key in ("perplexity", "params", "nonzero", "macs"):
        assert st[key] == mem[key], key
    assert st["latency_ms_b1"] > 0 and st["latency_ms_b1_iqr"] >= 0 and st["latency_ms_bN"] > 0  # summed per block
    assert runs[True]["latency_protocol"].startswith("baseline, steps and final: streamed")
    assert (
        runs[True]["steps"][1]["notes"]["evaluate"]["perplexity"]
        == runs[False]["steps"][1]["notes"]["evaluate"]["perplexity"]
    )
    rows = {r["name"]: r for r in runs[False]["layers"]}
    assert [r["name"] for r in runs[True]["layers"]] == list(rows)
    assert all(r == rows[r["name"]] for r in runs[True]["layers"])


@pytest.mark.parametrize("stream", [False, True])
def test_every_stage_has_its_measured_peak_memory_and_time(runs, stream):
    memory = runs[stream]["memory"]
    stages = [s["stage"] for s in memory["stages"]]
    assert stages[0].startswith("baseline") and stages[-1].startswith("final")
    assert "step 1 (sparsegpt)" in stages and "step 1 (sparsegpt) measure" in stages
    for s in memory["stages"]:
        assert s["peak_rss_bytes"] >= max(s["start_rss_bytes"], s["end_rss_bytes"]) > 0
        assert s["peak_rss_x_fp32"] == round(s["peak_rss_bytes"] / memory["fp32_model_bytes"], 3)
        assert s["seconds"] >= 0
    assert memory["fp32_model_bytes"] == 4 * runs[stream]["baseline"]["params"]
    assert memory["streamed"] is stream
    assert memory["process_peak_rss_bytes"] >= max(s["peak_rss_bytes"] for s in memory["stages"])
    assert runs[True]["steps"][0]["notes"]["stream"]["blocks"] == 2


def test_the_report_shows_memory_and_time(runs):
    md = Path(runs[True]["artifact"]).parent / "report.md"
    text = md.read_text()
    assert "## Memory and time" in text and "peak RSS / fp32 model" in text and "step 1 (sparsegpt)" in text
    assert "baseline.safetensors" not in text and "the input model's safetensors" in text  # no copy was written


def test_a_streamed_run_resumes_from_its_checkpoint(runs, inputs):
    model, corpus = inputs
    out = Path(runs[True]["artifact"]).parent
    recipe = {"name": "t", "stream": True, "data": {"seq_len": 64}, "measure": MEASURE, "steps": STEPS}
    again = netslim.compress(str(model), recipe, data=str(corpus), out=out, resume=True).report
    assert again["final"]["perplexity"] == runs[True]["final"]["perplexity"]


# ------------------------------------------------------------------------ bad input
def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from netslim.cli import main

    old = sys.argv
    sys.argv = ["netslim", *map(str, argv)]
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = old
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "recipe, model, expected",
    [
        (
            {"stream": True, "steps": [{"method": "magnitude", "sparsity": 0.5}]},
            "dir",
            r"has stream: true but step 1 \(magnitude\) cannot stream: it needs the whole model in memory .*set stream: false",
        ),
        (
            {"stream": True, "steps": [{"method": "export", "format": "onnx"}]},
            "dir",
            r"step 1 \(export format 'onnx'\) cannot stream",
        ),
        (
            {"stream": True, "steps": [{"method": "sparsegpt", "num_samples": 8, "seq_len": 64}]},
            "lenet300",
            r"stream: true needs the model's weights on disk as safetensors .*got 'lenet300'",
        ),
        (
            {
                "stream": True,
                "memory_budget": "1MiB",
                "steps": [{"method": "sparsegpt", "num_samples": 8, "seq_len": 64}],
            },
            "dir",
            r"memory_budget 1 MiB is below what one decoder block needs: about .* raise memory_budget to at least",
        ),
        (
            {"memory_budget": "lots", "steps": [{"method": "sparsegpt"}]},
            "dir",
            r"field 'memory_budget'.*must be a size such as 2GiB",
        ),
        (
            {"stream": True, "steps": [{"method": "weight_only", "bits": 8, "group_size": None, "embeddings": True}]},
            "dir",
            r"step 1 \(weight_only with embeddings: true\) cannot stream: a quantized embedding / LM head",
        ),
    ],
    ids=[
        "method",
        "export-format",
        "built-in-memory",
        "budget-below-one-block",
        "budget-not-a-size",
        "quantized-embeddings",
    ],
)
def test_bad_streaming_input_is_one_line_and_writes_nothing(inputs, tmp_path, capsys, recipe, model, expected):
    import re

    import yaml

    model_dir, corpus = inputs
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "data": {"seq_len": 64}, **recipe}))
    out = tmp_path / "out"
    code, err = _cli(
        ["compress", path, "--model", model_dir if model == "dir" else model, "--data", corpus, "--out", out], capsys
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith("netslim: error: "), err
    assert re.search(expected, err), err
    assert not out.exists()


def test_every_shipped_recipe_that_streams_can_stream():
    from netslim.api import recipes_dir
    from netslim.recipe import load_recipe
    from netslim.recipe.streamed import blockers

    streamed = [load_recipe(p) for p in sorted(recipes_dir().glob("*.yaml"))]
    streamed = [r for r in streamed if r.stream is True]
    assert len(streamed) >= 4  # the SmolLM2 one-shot recipes (int4 / gptq_int8emb quantize embeddings: in memory)
    for r in streamed:
        assert not blockers(r), r.name
        assert r.measure.batch_size == 1 and r.measure.repeats <= 3 and r.data.get("eval_batch_size") == 1, r.name


def test_a_tied_lm_head_is_stored_once_as_in_memory(tmp_path):
    """SmolLM2's LM head is tied to the embedding: the streamed sparse export stores it once
    (an alias), as the in-memory export does - same tensors, same aliases, same file size
    (it was written twice: 545.9 vs 432.7 MB on SmolLM2)."""
    specials = {"bos_token_id": 256, "eos_token_id": 256, "pad_token_id": 256}
    model = tiny_decoder("Llama", 1, max_position_embeddings=256, tie_word_embeddings=True, **specials)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    save_3_shards(model, tmp_path / "model")
    byte_tokenizer("causal").save_pretrained(tmp_path / "model")
    (tmp_path / "c.txt").write_text("".join(f"Line {i} of a text with words.\n" for i in range(200)))
    steps = [
        {"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 32, "batch_size": 2},
        {"method": "export", "format": "sparse"},
    ]
    files = {}
    for stream in (False, True):
        recipe = {"name": "t", "stream": stream, "data": {"seq_len": 32}, "measure": MEASURE, "steps": steps}
        files[stream] = Path(
            netslim.compress(
                str(tmp_path / "model"), recipe, data=str(tmp_path / "c.txt"), out=tmp_path / str(stream)
            ).report["artifact"]
        )
    a, b = load_file(files[False]), load_file(files[True])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "lm_head.weight" not in b
    data_bytes = [
        f.stat().st_size - 8 - int.from_bytes(f.read_bytes()[:8], "little") for f in (files[False], files[True])
    ]
    assert data_bytes[0] == data_bytes[1]  # the headers differ only in info.reference (the source path)
    loaded = netslim.load(files[True])
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
