"""Quantization configs: YAML round-trip, recipe validation, shipped recipes parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netslim.core.config import make_config
from netslim.core.errors import NetslimError

METHODS = ["weight_only", "dynamic_int8", "bf16", "ptq_int8"]
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("method", METHODS)
def test_config_roundtrips_through_yaml(method):
    cfg = make_config({"method": method})
    again = make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and type(cfg).freezes


@pytest.mark.parametrize("method", METHODS)
def test_unknown_field_rejected(method):
    with pytest.raises(NetslimError, match="unknown field 'bogus'"):
        make_config({"method": method, "bogus": 1})


def test_weight_only_rounding_choices():
    with pytest.raises(NetslimError, match="rounding"):
        make_config({"method": "weight_only", "rounding": "gptq-ish"})


@pytest.mark.parametrize("name", ["int8_minilm", "int4_smollm2", "int8_resnet20"])
def test_shipped_recipes_parse(name):
    from netslim.recipe import load_recipe

    rec = load_recipe(RECIPES / f"{name}.yaml")
    assert rec.steps[0].method in METHODS
