"""The shipped Deep Compression recipes parse, and a shrunken copy runs end to end."""

from pathlib import Path

import pytest
import torch
import yaml

import netslim
from netslim.models import build_model
from netslim.recipe import load_recipe, parse_recipe, run_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("name", ["deep_compression_lenet300", "deep_compression_lenet5"])
def test_shipped_recipes_parse(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert [s.method for s in recipe.steps][-2:] == ["share", "export"]
    assert recipe.steps[-1].format == "nsz"


def test_pipeline_runs_and_the_nsz_reloads_with_the_same_accuracy(tmp_path):
    data = yaml.safe_load((RECIPES / "deep_compression_lenet300.yaml").read_text())
    step = {s["method"]: s for s in data["steps"]}  # the shipped steps, shortened
    prune = {
        **step["gradual"],
        "finetune": {**step["gradual"]["finetune"], "epochs": 1, "max_steps": 6},
        "frequency": 2,
        "end_step": 4,
    }
    share = {**step["share"], "finetune": {"epochs": 1, "max_steps": 3}}
    recipe = parse_recipe({**data, "steps": [prune, share, step["export"]]})
    torch.manual_seed(0)
    model_path = netslim.save(
        build_model("lenet300"), tmp_path / "lenet300.safetensors", {"model": "lenet300", "dataset": "fashion-mnist"}
    )
    report = run_recipe(recipe, tmp_path / "run", model_ref=str(model_path), data_options={"limit": 1000})
    artifact = Path(report["artifact"])
    assert artifact.suffix == ".nsz" and report["final"]["size_bytes"] == artifact.stat().st_size
    notes = report["steps"][1]["notes"]["share"]
    assert notes["nsz_bit_exact"] and notes["on_centroids"]
    stages = {r["stage"]: r for r in notes["stages"]}
    assert (
        stages["huffman (.nsz)"]["bytes"] < stages["quantized (fixed-width)"]["bytes"] < stages["dense fp32"]["bytes"]
    )
    assert report["final"]["accuracy"] == stages["huffman (.nsz)"]["accuracy"]  # lossless coding
    kinds = [p["kind"] for p in notes["tradeoff"]]
    assert kinds == ["dense", "quantization only (no fine-tuning)", "pruning only", "pruning + quantization"]
    table = (tmp_path / "run" / "deep_compression.md").read_text()
    assert "| huffman (.nsz) | " + f"{artifact.stat().st_size:,}" in table
    assert (tmp_path / "run" / "plots" / "deep_compression.png").stat().st_size > 0
