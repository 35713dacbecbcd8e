"""One shape per decision across every registered method config (issue 24): one selector type for
``include`` / ``exclude``, one nested ``finetune:`` block for the training options of a step that
trains (old flat spellings refused naming the new one), one KD spelling (``distill`` /
``distill_temperature``)."""

from __future__ import annotations

import pytest

from netslim.core.config import get_method, make_config, methods
from netslim.core.errors import NetslimError
from netslim.train.loop import FinetuneConfig, TrainingStep


def _configs(has_field: str) -> list[str]:
    return sorted(n for n, m in methods().items() if has_field in m.config_cls.model_fields)


def _base(name: str) -> dict:
    """The example config of ``name`` as a recipe step (required fields filled in)."""
    return {"method": name, **get_method(name).config_cls.example().model_dump()}


SELECTING = _configs("include")
TRAINING = sorted(n for n, m in methods().items() if issubclass(m.config_cls, TrainingStep))


def test_the_selecting_methods_include_every_family():
    assert {"magnitude", "dynamic_int8", "ptq_int8", "gptq", "weight_only", "qat", "share", "svd", "sparsegpt"} <= set(
        SELECTING
    )


@pytest.mark.parametrize("name", SELECTING)
@pytest.mark.parametrize("field", ["include", "exclude"])
def test_every_selector_field_takes_a_string_or_a_list_and_checks_regexes(name, field):
    one = make_config({**_base(name), field: "fc1"})
    assert getattr(one, field) == ("fc1",)  # a bare string is one selector, the same in every family
    many = make_config({**_base(name), field: ["fc1", "re:fc[23]", "type:Linear"]})
    assert getattr(many, field) == ("fc1", "re:fc[23]", "type:Linear")
    assert make_config(many.to_dict()) == many  # round trip through the recipe form
    with pytest.raises(NetslimError, match=rf"field '{field}'.*not a valid regular expression"):
        make_config({**_base(name), field: ["re:fc("]})


def test_the_training_methods_are_training_steps():
    assert {
        "imp",
        "gradual",
        "lottery",
        "l0",
        "movement",
        "rigl",
        "set",
        "cofi",
        "distill",
        "share",
        "qat",
        "channels",
        "heads",
        "ffn",
        "layers",
        "width",
        "search_channels",
        "netadapt",
    } <= set(TRAINING)


@pytest.mark.parametrize("name", TRAINING)
def test_training_options_nest_under_one_finetune_block(name):
    cls = get_method(name).config_cls
    key = cls.training_key
    assert key in cls.model_fields
    for old, new in [("epochs", "epochs"), ("lr", "lr"), ("lr_schedule", "schedule"), ("batch_size", "batch_size")]:
        if old in cls.model_fields:
            continue
        if old in cls.renamed:  # a field of the method's own under the old name (netadapt's lr: candidate_lr)
            with pytest.raises(NetslimError, match=rf"'{old}' is now spelled '{cls.renamed[old]}'"):
                make_config({**_base(name), old: 1})
            continue
        with pytest.raises(
            NetslimError,
            match=rf"'{old}' is a training option: set it under '{key}:' "
            rf"\({key}: \{{{new}: \.\.\.\}}\)",
        ):
            make_config({**_base(name), old: 1})
    # a partial block keeps the method's own training defaults for the keys it leaves out
    for field, info in cls.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, FinetuneConfig):
            data = {k: v for k, v in _base(name).items() if k != field}
            got = getattr(make_config({**data, field: {"max_steps": 7}}), field)
            assert got == default.model_copy(update={"max_steps": 7})


def test_partial_blocks_keep_each_methods_defaults():
    rigl = make_config({"method": "rigl", "finetune": {"epochs": 20}}).finetune
    assert (rigl.epochs, rigl.lr) == (20, 0.05)  # rigl trains from scratch: its lr, not FinetuneConfig's 0.01
    share = make_config({"method": "share", "finetune": {"epochs": 1}}).finetune
    assert (share.optimizer, share.lr, share.weight_decay) == ("adam", 1e-4, 0.0)
    cofi = make_config({"method": "cofi", "train": {"epochs": 1}})
    assert (cofi.train.optimizer, cofi.train.batch_size, cofi.finetune) == ("adamw", 32, None)
    given = FinetuneConfig(epochs=1)  # an instance is taken as it is
    assert get_method("rigl").config_cls(finetune=given).finetune.lr == 0.01


def test_one_kd_spelling():
    for name, m in methods().items():
        fields = m.config_cls.model_fields
        assert "temperature" not in fields and not ("alpha" in fields and "distill" in fields), name
        if "distill_temperature" in fields:
            assert "distill" in fields, name
    assert {"channels", "heads", "ffn", "layers", "width", "cofi", "distill"} <= set(_configs("distill_temperature"))
    for old, new in [("alpha", "distill"), ("temperature", "distill_temperature")]:
        with pytest.raises(NetslimError, match=rf"'{old}' is now spelled '{new}'"):
            make_config({"method": "distill", old: 0.5})
