"""The shipped structured-pruning recipes parse; the channel recipe runs end to end on a small CNN."""
from __future__ import annotations

from pathlib import Path

import pytest

import netslim
from netslim.recipe.spec import MeasureOptions, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
NAMES = ["channels_resnet20_2x", "channels_mobilenetv2_2x", "heads_ffn_minilm", "ffn_smollm2_25", "layers_smollm2"]


@pytest.mark.parametrize("name", NAMES)
def test_structured_recipe_parses(name):
    assert load_recipe(RECIPES / f"{name}.yaml").name == name


def test_channels_recipe_runs_and_the_artifact_is_smaller(tmp_path, cache_dir):
    from netslim.recipe.runner import run_recipe

    model = netslim.build_model("lenet5")
    path = netslim.save(model, tmp_path / "lenet5.safetensors", {"model": "lenet5", "dataset": "fashion-mnist"})
    recipe = load_recipe(RECIPES / "channels_resnet20_2x.yaml")  # the same steps, on LeNet-5, in 2 iterations
    step = recipe.steps[0].model_copy(update={"iterations": 2, "finetune": recipe.steps[0].finetune.model_copy(
        update={"epochs": 1, "max_steps": 2, "amp": "none"})})
    recipe = recipe.model_copy(update={"measure": MeasureOptions(batch_size=8, repeats=1),
                                       "steps": (step, *recipe.steps[1:])})
    report = run_recipe(recipe, tmp_path / "out", model_ref=str(path), data_options={"limit": 600})
    assert report["final"]["macs"] <= 0.5 * report["baseline"]["macs"]
    # the file shrinks with the parameters: a dense model, no masks, no padding
    size = report["final"]["size_bytes"] / report["baseline"]["size_bytes"]
    params = report["final"]["params"] / report["baseline"]["params"]
    assert params < 0.9 and abs(size - params) < 0.02
    back = netslim.load(report["artifact"])
    assert back.conv1.out_channels < 20
    plans = netslim.core.serialize.read_description(report["artifact"])["info"]["prune_plans"]
    assert len(plans) == 2
