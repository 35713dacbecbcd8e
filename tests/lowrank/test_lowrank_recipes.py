"""The shipped low-rank / distillation recipes parse, and the LeNet one runs end to end."""
from __future__ import annotations

from pathlib import Path

import pytest

import netslim
from netslim.lowrank import LowRankLinear
from netslim.recipe.spec import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
NAMES = ["svd_lenet300_2x", "svd_minilm_ffn", "kd_resnet20_half", "prune_distill_lenet300"]


@pytest.mark.parametrize("name", NAMES)
def test_recipe_parses(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.name == name


def test_svd_recipe_runs_on_a_small_subset(tmp_path, cache_dir):
    from netslim.recipe.runner import run_recipe

    torch_model = netslim.build_model("lenet300")
    path = netslim.save(torch_model, tmp_path / "lenet300.safetensors", {"model": "lenet300",
                                                                         "dataset": "fashion-mnist"})
    recipe = load_recipe(RECIPES / "svd_lenet300_2x.yaml")
    from netslim.recipe.spec import MeasureOptions

    recipe = recipe.model_copy(update={"measure": MeasureOptions(batch_size=8, repeats=1), "steps": (recipe.steps[0], recipe.steps[1].model_copy(
        update={"epochs": 1, "max_steps": 2}), *recipe.steps[2:])})
    report = run_recipe(recipe, tmp_path / "out", model_ref=str(path), data_options={"limit": 600})
    assert report["final"]["params"] <= 0.5 * report["baseline"]["params"]
    assert isinstance(netslim.load(report["artifact"]).fc1, LowRankLinear)
