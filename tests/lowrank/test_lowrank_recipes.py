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
    path = netslim.save(
        torch_model, tmp_path / "lenet300.safetensors", {"model": "lenet300", "dataset": "fashion-mnist"}
    )
    recipe = load_recipe(RECIPES / "svd_lenet300_2x.yaml")
    from netslim.recipe.spec import MeasureOptions

    recipe = recipe.model_copy(
        update={
            "measure": MeasureOptions(batch_size=8, repeats=1),
            "steps": (
                recipe.steps[0],
                recipe.steps[1].model_copy(update={"epochs": 1, "max_steps": 2}),
                *recipe.steps[2:],
            ),
        }
    )
    report = run_recipe(recipe, tmp_path / "out", model_ref=str(path), data_options={"limit": 600})
    assert report["final"]["params"] <= 0.5 * report["baseline"]["params"]
    assert isinstance(netslim.load(report["artifact"]).fc1, LowRankLinear)


def _short(recipe, **update):
    """The recipe with every training step cut to a couple of steps on small batches."""
    from netslim.recipe.spec import MeasureOptions

    steps = tuple(
        s.model_copy(update={"epochs": 1, "max_steps": 2, "batch_size": 16, **update}) if hasattr(s, "max_steps") else s
        for s in recipe.steps
    )
    return recipe.model_copy(update={"measure": MeasureOptions(batch_size=8, repeats=1), "steps": steps})


@pytest.mark.parametrize(
    "name, model, check",
    [
        ("prune_distill_lenet300", "lenet300", lambda m: float((m.fc1.weight == 0).float().mean()) > 0.5),
        ("kd_resnet20_half", "resnet20", lambda m: m.netslim_arch["kwargs"].get("width") == 8),
    ],
)
def test_distill_recipes_run_on_a_small_subset(tmp_path, cache_dir, name, model, check):
    from netslim.recipe.runner import run_recipe

    path = netslim.save(
        netslim.build_model(model), tmp_path / f"{model}.safetensors", {"model": model, "dataset": "fashion-mnist"}
    )
    report = run_recipe(
        _short(load_recipe(RECIPES / f"{name}.yaml")),
        tmp_path / "out",
        model_ref=str(path),
        data_options={"limit": 200},
    )
    assert report["final"]["params"] <= report["baseline"]["params"]
    assert check(netslim.load(report["artifact"]))
