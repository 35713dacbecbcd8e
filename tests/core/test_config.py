import pydantic
import pytest
import torch
import yaml

from netslim.core.config import apply, make_config, methods
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.models import build_model


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_registered_config_round_trips_through_yaml(name):
    cfg = methods()[name].config_cls.example()
    again = make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and type(again) is type(cfg)


@pytest.mark.parametrize("name", sorted(methods()))
def test_configs_are_frozen_and_reject_unknown_fields(name):
    cfg = methods()[name].config_cls.example()
    with pytest.raises(NetslimError, match="unknown field 'no_such_field'"):
        make_config({**cfg.to_dict(), "no_such_field": 1})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        setattr(cfg, next(iter(type(cfg).model_fields), "x"), None)


@pytest.mark.parametrize("arch", ["lenet300", "lenet5"])
@pytest.mark.parametrize("name", sorted(methods()))
def test_every_method_keeps_the_output_shape(name, arch, fmnist_small, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch)
    x = fmnist_small.example_inputs(4)
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path, reference=lambda: build_model(arch))
    out = apply(model, methods()[name].config_cls.example(), ctx)
    assert out(x).shape == (4, 10)


def test_error_names_where_field_and_value():
    with pytest.raises(NetslimError) as e:
        make_config({"method": "finetune", "epochs": -1}, "recipe step 2")
    msg = str(e.value)
    assert "recipe step 2" in msg and "'epochs'" in msg and "-1" in msg and "greater than or equal to 0" in msg


def test_unknown_method_lists_allowed():
    with pytest.raises(NetslimError, match="Unknown method 'nope'; allowed values: .*finetune"):
        make_config({"method": "nope"})


def test_missing_method_key():
    with pytest.raises(NetslimError, match="missing 'method'"):
        make_config({"epochs": 1}, "step 1")
