"""The shipped structured-pruning recipes parse; the channel recipe runs end to end on a small CNN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import netslim
from netslim.prune.structured import replay
from netslim.recipe.spec import MeasureOptions, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
NAMES = ["channels_resnet20_2x", "channels_mobilenetv2_2x", "heads_ffn_minilm", "ffn_smollm2_25", "layers_smollm2"]


@pytest.mark.parametrize("name", NAMES)
def test_structured_recipe_parses(name):
    assert load_recipe(RECIPES / f"{name}.yaml").name == name


def test_channels_recipe_runs_and_the_artifact_is_smaller(tmp_path, cache_dir):
    from netslim.recipe.runner import run_recipe

    model = netslim.build_model("resnet20")
    path = netslim.save(model, tmp_path / "resnet20.safetensors", {"model": "resnet20", "dataset": "fashion-mnist"})
    recipe = load_recipe(RECIPES / "channels_resnet20_2x.yaml")  # as shipped, with a 2-step fine-tune
    layers, channels = recipe.steps[:2]
    channels = channels.model_copy(
        update={
            "finetune": channels.finetune.model_copy(
                update={"epochs": 1, "max_steps": 2, "amp": "none", "batch_size": 32}
            )
        }
    )
    recipe = recipe.model_copy(
        update={"measure": MeasureOptions(batch_size=8, repeats=1), "steps": (layers, channels, *recipe.steps[2:])}
    )
    report = run_recipe(recipe, tmp_path / "out", model_ref=str(path), data_options={"limit": 600})
    assert 0.45 <= report["final"]["macs"] / report["baseline"]["macs"] <= 0.5
    # the file shrinks with the parameters: a dense model, no masks, no padding
    size = report["final"]["size_bytes"] / report["baseline"]["size_bytes"]
    params = report["final"]["params"] / report["baseline"]["params"]
    assert params < 0.6 and abs(size - params) < 0.02
    back = netslim.load(report["artifact"])
    assert isinstance(back.layer1[1], torch.nn.Identity) and isinstance(back.layer1[2], torch.nn.Identity)
    widths = [m.out_channels for m in back.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 16 == 0 for w in widths) and sum(widths) < sum(
        m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    )
    plans = netslim.core.serialize.read_description(report["artifact"])["info"]["prune_plans"]
    assert len(plans) == 2 and plans[0]["drop_modules"] == ["layer1.1", "layer1.2"]
    again = replay(netslim.build_model("resnet20"), plans)
    assert [p.shape for p in again.parameters()] == [p.shape for p in back.parameters()]
