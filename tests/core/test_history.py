"""The ordering rule (requires / freezes) is state on the model, checked by apply(); the recipe
validator runs the same rule over a whole recipe."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch

import netslim
from netslim.core.config import MethodConfig, make_config
from netslim.core.errors import NetslimError
from netslim.core.history import StepHistory
from netslim.core.serialize import read_description
from netslim.recipe import parse_recipe


def _data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def gptq_lenet():
    torch.manual_seed(0)
    return netslim.apply(netslim.build_model("lenet300"), "gptq", data=_data(), bits=8, group_size=None, num_samples=32)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_magnitude_after_gptq_is_refused_naming_both_steps(gptq_lenet):
    assert StepHistory.of(gptq_lenet) == StepHistory(("gptq",), "gptq")
    before = _state(gptq_lenet)
    with pytest.raises(
        NetslimError,
        match=r"^Method 'magnitude' changes weights after 'gptq' froze them.*"
        r"steps applied to this model: gptq\)",
    ):
        netslim.apply(gptq_lenet, "magnitude", sparsity=0.5)
    after = _state(gptq_lenet)
    assert all(torch.equal(before[k], after[k]) for k in before)  # refused before any work
    assert StepHistory.of(gptq_lenet).applied == ("gptq",)


def test_steps_that_change_no_weight_may_follow_a_freeze(gptq_lenet, tmp_path):
    x = _data(8)[0]
    ref = gptq_lenet(x)
    out = netslim.apply(gptq_lenet, "evaluate", data=_data())
    assert StepHistory.of(out) == StepHistory(("gptq",), "gptq")  # evaluate changed nothing: not recorded
    assert torch.equal(out(x), ref)


def test_a_saved_and_loaded_model_keeps_its_history(gptq_lenet, tmp_path):
    path = netslim.save(gptq_lenet, tmp_path / "q.safetensors")
    assert read_description(path)["history"]["frozen_by"] == "gptq"
    again = netslim.load(path)
    assert StepHistory.of(again).frozen_by == "gptq"
    with pytest.raises(NetslimError, match="changes weights after 'gptq' froze them"):
        netslim.apply(again, "magnitude", sparsity=0.5)


def test_a_model_no_step_ran_on_has_no_history(tmp_path):
    model = netslim.build_model("lenet300")
    assert StepHistory.of(model) == StepHistory()
    assert "history" not in read_description(netslim.save(model, tmp_path / "m.safetensors"))
    pruned = netslim.apply(model, "magnitude", sparsity=0.5)
    assert StepHistory.of(pruned) == StepHistory(("magnitude",), None)


def test_a_malformed_history_in_a_file_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = netslim.apply(netslim.build_model("lenet300"), "magnitude", sparsity=0.5)
    path = netslim.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    desc = json.loads(meta["netslim"])
    desc["history"] = {"applied": "magnitude"}
    desc.pop("checksums")
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"netslim": json.dumps(desc)})
    with pytest.raises(NetslimError, match="history"):
        netslim.load(bad)


class _Freeze(MethodConfig):
    method: ClassVar[str] = "freeze_probe"
    freezes: ClassVar[bool] = True


class _Needs(MethodConfig):
    method: ClassVar[str] = "needs_probe"
    requires: ClassVar[tuple[str, ...]] = ("freeze_probe",)
    modifies_weights: ClassVar[bool] = False


class _FloatOnly(MethodConfig):
    method: ClassVar[str] = "float_probe"
    float_layers_only: ClassVar[bool] = True


class _Changes(MethodConfig):
    method: ClassVar[str] = "change_probe"


def test_the_rule():
    empty = StepHistory()
    assert empty.problem(_Needs()) == "needs a 'freeze_probe' step before it"
    assert empty.problem(_Changes()) is None
    frozen = empty.after(_Freeze())
    assert frozen == StepHistory(("freeze_probe",), "freeze_probe")
    assert frozen.problem(_Needs()) is None and frozen.problem(_FloatOnly()) is None
    assert frozen.problem(_Changes()).startswith("changes weights after 'freeze_probe' froze them")
    assert frozen.after(_FloatOnly()).frozen_by == "freeze_probe"  # a later step keeps the freeze
    assert frozen.after(_Needs()) == frozen  # changes no weight, freezes nothing: not recorded
    assert StepHistory.from_json(frozen.to_json()) == frozen


def test_recipe_validation_and_apply_give_the_same_verdict(gptq_lenet):
    """weight_only after gptq: allowed by both (float layers only); magnitude after gptq: refused by both."""
    steps = [{"method": "gptq", "bits": 8, "group_size": None}]
    parse_recipe({"steps": [*steps, {"method": "weight_only", "bits": 8, "group_size": None}]})
    assert (
        StepHistory.of(gptq_lenet).problem(make_config({"method": "weight_only", "bits": 8, "group_size": None}))
        is None
    )
    with pytest.raises(NetslimError, match=r"step 2 \('magnitude'\) changes weights after 'gptq' froze them"):
        parse_recipe({"steps": [*steps, {"method": "magnitude", "sparsity": 0.5}]})
