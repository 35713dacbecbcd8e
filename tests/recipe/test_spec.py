from pathlib import Path

import pytest
import yaml

from netslim.core.errors import NetslimError
from netslim.recipe import load_recipe, parse_recipe


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_parse_valid_recipe_round_trips(tmp_path):
    r = load_recipe(
        _write(
            tmp_path,
            "name: x\nmodel: lenet300\nsteps:\n  - method: finetune\n    epochs: 1\n"
            "  - method: evaluate\n    split: val\n  - method: export\n",
        )
    )
    assert [s.method for s in r.steps] == ["finetune", "evaluate", "export"]
    assert parse_recipe(yaml.safe_load(yaml.safe_dump(r.to_dict()))) == r


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("steps: []", "'steps' must be a non-empty list"),
        ("- a\n- b", "must be a mapping"),
        ("steps:\n  - epochs: 1", "step 1: missing 'method'"),
        ("steps:\n  - method: prune_everything", "step 1: Unknown method 'prune_everything'; allowed values:"),
        ("steps:\n  - method: evaluate\n  - method: finetune\n    epochs: -2", "step 2 .*'epochs'.*got -2"),
        ("steps:\n  - method: finetune\n    lr: fast", "step 1 .*'lr'.*got 'fast'"),
        ("steps:\n  - method: finetune\n    optimizer: lbfgs", "step 1 .*'optimizer'.*'sgd', 'adamw' or 'adam'"),
        ("steps:\n  - method: evaluate\n    split: dev", "step 1 .*'split'.*'test' or 'val'"),
        ("steps:\n  - method: export\n    format: pickle", "step 1 .*'format'.*safetensors.*got 'pickle'"),
        ("steps:\n  - method: finetune\n    epoch: 3", "step 1 .*unknown field 'epoch'"),
        ("steps:\n  - method: evaluate\nmeasure: {batch_size: 0}", "'measure.batch_size'"),
        ("steps:\n  - method: evaluate\ncolour: red", "'colour'"),
        ("steps: [method: evaluate", "malformed YAML at line"),
    ],
)
def test_invalid_recipes_give_one_clear_error(tmp_path, text, pattern):
    with pytest.raises(NetslimError, match=pattern):
        load_recipe(_write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(NetslimError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_order_validation_uses_requires_and_freezes():
    from typing import ClassVar

    from netslim.core.config import MethodConfig, register

    class FreezeCfg(MethodConfig):
        method: ClassVar[str] = "test_freeze"
        freezes: ClassVar[bool] = True

    class NeedsCfg(MethodConfig):
        method: ClassVar[str] = "test_needs_freeze"
        requires: ClassVar[tuple] = ("test_freeze",)
        modifies_weights: ClassVar[bool] = False

    register(FreezeCfg)(lambda m, c, x: m)
    register(NeedsCfg)(lambda m, c, x: m)
    with pytest.raises(NetslimError, match="step 1 .*needs a 'test_freeze' step before it"):
        parse_recipe({"steps": [{"method": "test_needs_freeze"}, {"method": "test_freeze"}]})
    with pytest.raises(NetslimError, match="step 2 .*'finetune'.*after 'test_freeze' froze"):
        parse_recipe({"steps": [{"method": "test_freeze"}, {"method": "finetune"}]})
    parse_recipe({"steps": [{"method": "test_freeze"}, {"method": "test_needs_freeze"}, {"method": "evaluate"}]})


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    r = load_recipe(path)
    assert r.name == path.stem and r.steps
    assert parse_recipe(yaml.safe_load(yaml.safe_dump(r.to_dict()))) == r


def test_masked_sparse_recipes_bake_masks_before_export():
    # Recipes that train with masks must bake them (`sparsify`) before timing and export:
    # a parametrized model runs weight * mask on every call and times slower than dense.
    for name in ("rigl_lenet300_90", "lottery_lenet300", "nm24_resnet20", "prune_lenet300_95"):
        methods = [
            s.method for s in load_recipe(Path(__file__).resolve().parents[2] / "recipes" / f"{name}.yaml").steps
        ]
        assert "sparsify" in methods and methods.index("sparsify") < methods.index("export"), name
