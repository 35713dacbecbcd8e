"""The recipe steps end to end on a small saved model; the emitted recipe reproduces the policy."""

import pytest
import torch
import yaml

from netslim.core.config import get_method, make_config
from netslim.core.errors import NetslimError
from netslim.core.serialize import load, save
from netslim.models import build_model
from netslim.prune.structured import total_macs
from netslim.recipe.runner import run_recipe
from netslim.recipe.spec import load_recipe, parse_recipe
from netslim.train.loop import FinetuneConfig, TrainingStep


@pytest.fixture
def saved_resnet(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r8.safetensors"
    save(build_model("resnet20", depth=8, width=4), path, {"model": "resnet20", "dataset": "fashion-mnist"})
    return path


def _recipe(step: dict) -> dict:
    return {"name": "t", "dataset": "fashion-mnist", "data": {"limit": 300}, "measure": {"repeats": 2}, "steps": [step]}


@pytest.mark.slow  # two recipe runs with measurements: ~15 s each on a shared 2-core CPU
@pytest.mark.parametrize("strategy", ["knapsack", "cem"])
def test_search_channels_meets_budget_and_emits_a_reproducing_recipe(strategy, saved_resnet, tmp_path):
    step = {
        "method": "search_channels",
        "budget": 0.6,
        "strategy": strategy,
        "val_samples": 40,
        "population": 4,
        "generations": 2,
        "sensitivity_cache": "run",
        "space": {"ratios": [0.0, 0.25, 0.5, 0.75]},
    }
    out = tmp_path / "run"
    report = run_recipe(parse_recipe(_recipe(step)), out, model_ref=str(saved_resnet))
    note = report["steps"][0]["notes"]["search_channels"]
    x = torch.randn(1, 1, 28, 28)
    dense = total_macs(load(saved_resnet), x)
    assert report["steps"][0]["metrics"]["macs"] <= 0.6 * dense
    assert note["cost"] == report["steps"][0]["metrics"]["macs"]
    emitted = load_recipe(out / "search" / "best_recipe.yaml")
    again = run_recipe(emitted, tmp_path / "again", model_ref=str(saved_resnet))
    assert again["final"]["macs"] == report["final"]["macs"]
    assert again["final"]["params"] == report["final"]["params"]
    assert (out / "search" / ("pareto.png" if strategy == "cem" else "sensitivity.png")).is_file()


def test_netadapt_step_meets_budget(saved_resnet, tmp_path, monkeypatch):
    import netslim.search.netadapt as na

    seen, real = [], na.short_finetune

    def spy(model, data, *, steps, lr, **kw):
        seen.append((steps, lr))
        return real(model, data, steps=steps, lr=lr, **kw)

    monkeypatch.setattr(na, "short_finetune", spy)
    step = {
        "method": "netadapt",
        "target": "params",
        "budget": 0.7,
        "step": 0.15,
        "candidate_steps": 2,
        "candidate_lr": 0.02,
        "train_samples": 64,
        "val_samples": 40,
    }
    report = run_recipe(parse_recipe(_recipe(step)), tmp_path / "na", model_ref=str(saved_resnet))
    assert seen and set(seen) == {(2, 0.02)}  # every candidate's short fine-tune: candidate_steps at candidate_lr
    note = report["steps"][0]["notes"]["netadapt"]
    assert report["steps"][0]["metrics"]["params"] <= 0.7 * note["dense_cost"]
    assert note["iterations"] >= 2
    emitted = yaml.safe_load((tmp_path / "na" / "search" / "best_recipe.yaml").read_text())
    assert emitted["steps"][0]["method"] == "channels"


@pytest.mark.parametrize("method", ["search_channels", "netadapt"])
def test_training_options_nest_under_finetune(method):
    base = {"method": method, "budget": 0.5}
    assert issubclass(get_method(method).config_cls, TrainingStep)
    assert make_config(base).finetune is None  # no final fine-tune unless asked
    for old, new in [("epochs", "epochs"), ("lr_schedule", "schedule"), ("batch_size", "batch_size")]:
        with pytest.raises(
            NetslimError,
            match=rf"'{old}' is a training option: set it under 'finetune:' "
            rf"\(finetune: \{{{new}: \.\.\.\}}\)",
        ):
            make_config({**base, old: 2})
    cfg = make_config({**base, "finetune": {"epochs": 3, "amp": "bf16"}})
    assert cfg.finetune == FinetuneConfig(epochs=3, amp="bf16")  # the rest: FinetuneConfig's defaults
    assert make_config(cfg.to_dict()) == cfg  # round trip through the recipe form


def test_netadapt_candidate_training_is_its_own_and_its_old_names_are_refused():
    base = {"method": "netadapt", "budget": 0.5}
    for old, new in [("lr", "candidate_lr"), ("finetune_steps", "candidate_steps")]:
        with pytest.raises(NetslimError, match=rf"'{old}' is now spelled '{new}' \({new}: \.\.\.\)"):
            make_config({**base, old: 1})
    cfg = make_config({**base, "candidate_steps": 5, "candidate_lr": 0.02, "finetune": {"lr": 0.001}})
    assert (cfg.candidate_steps, cfg.candidate_lr, cfg.finetune.lr) == (5, 0.02, 0.001)


def test_unreachable_budget_in_a_recipe_is_a_clear_error(saved_resnet, tmp_path):
    from netslim.core.errors import NetslimError

    step = {
        "method": "search_channels",
        "budget": 0.01,
        "val_samples": 20,
        "sensitivity_cache": "run",
        "space": {"ratios": [0.0, 0.5]},
    }
    with pytest.raises(NetslimError, match="step 1 \\(search_channels\\).*cannot be met by any policy"):
        run_recipe(parse_recipe(_recipe(step)), tmp_path / "u", model_ref=str(saved_resnet))
