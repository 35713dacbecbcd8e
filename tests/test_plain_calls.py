"""One plain-Python convention for every method (issue 24): ``netslim.<family>.<fn>(model,
data=None, **options) -> nn.Module``, made by :func:`netslim.api.method_function`, through
``netslim.apply`` (the same validation and ordering rule as a recipe step); the step's report is
on the returned model (``netslim.report_of``) and equals what the recipe records."""

from __future__ import annotations

import copy
import inspect
import json
import sys

import pytest
import torch
from torch import nn

import netslim
from netslim.core.config import get_method, methods


def _method_functions() -> dict[str, object]:
    """Every method function in netslim's loaded modules: public name -> function."""
    methods()  # loads every family
    found = {}
    for modname, mod in list(sys.modules.items()):
        if not modname.startswith("netslim.") or mod is None:
            continue
        for name, obj in vars(mod).items():
            if callable(obj) and getattr(obj, "config_cls", None) is not None and getattr(obj, "__name__", "") == name:
                found.setdefault(name, obj)
    return found


FUNCTIONS = _method_functions()
EXPECTED = {
    "quantize_weights": "weight_only",
    "ptq_int8": "ptq_int8",
    "mixed_precision": "mixed_precision",
    "dynamic_int8": "dynamic_int8",
    "bf16_linears": "bf16",
    "gptq": "gptq",
    "sparse_gptq": "sparsegpt_gptq",
    "prune_channels": "channels",
    "prune_heads": "heads",
    "prune_ffn": "ffn",
    "drop_layers": "layers",
    "prune_width": "width",
    "share_weights": "share",
    "magnitude_prune": "magnitude",
    "nm_prune": "nm",
    "imp_prune": "imp",
    "gradual_prune": "gradual",
    "lottery_ticket": "lottery",
    "sparsify": "sparsify",
    "wanda": "wanda",
    "sparsegpt": "sparsegpt",
    "magnitude_oneshot": "magnitude_oneshot",
    "svd_compress": "svd",
    "distill": "distill",
    "rigl_train": "rigl",
    "set_train": "set",
    "l0_prune": "l0",
    "movement_prune": "movement",
    "obd_prune": "obd",
    "cofi_prune": "cofi",
    "activation_rank": "activation_rank",
    "qat_train": "qat",
    "search_channels": "search_channels",
    "netadapt": "netadapt",
    "architecture_search": "nas",
}
# Steps of a recipe run, not methods on a model: Python calls what they wrap (netslim.train.loop.fit,
# task.evaluate, netslim.save / the export functions); every other method has a function.
RUN_STEPS = {"train", "finetune", "evaluate", "export"}


def _data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_the_family_functions_are_method_functions():
    got = {name: fn.config_cls.method for name, fn in FUNCTIONS.items()}
    assert {k: got.get(k) for k in EXPECTED} == EXPECTED


def test_every_method_has_a_family_function():
    with_function = {fn.config_cls.method for fn in FUNCTIONS.values()}
    builtin = {n for n, m in methods().items() if m.handler.__module__.startswith("netslim.")}
    assert builtin - with_function == RUN_STEPS


def test_every_handler_is_named_after_its_method():
    named = {n: m.handler.__name__ for n, m in methods().items() if m.handler.__module__.startswith("netslim.")}
    assert len(named) > 30 and {n: h for n, h in named.items() if h != f"run_{n}"} == {}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_the_signature_follows_the_convention(name):
    fn = FUNCTIONS[name]
    cls = fn.config_cls
    assert get_method(cls.method).config_cls is cls  # the function applies the registered method
    params = list(inspect.signature(fn).parameters.values())
    model, data, *options = params
    assert (model.name, model.kind, model.default) == ("model", model.POSITIONAL_OR_KEYWORD, model.empty)
    assert (data.name, data.kind, data.default) == ("data", data.POSITIONAL_OR_KEYWORD, None)
    assert all(p.kind is p.KEYWORD_ONLY for p in options)  # every option keyword-only, none is ctx
    assert [p.name for p in options] == list(cls.model_fields)
    assert inspect.signature(fn).return_annotation is nn.Module
    assert fn.__name__ == name and cls.__name__ in fn.__doc__


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_a_wrong_option_is_one_error_naming_method_and_option(name):
    fn = FUNCTIONS[name]
    model = netslim.build_model("lenet300")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        netslim.NetslimError, match=rf"^{name} \(method '{fn.config_cls.method}'\): .*unknown field 'nope'"
    ):
        fn(model, nope=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any change


def test_a_wrong_value_names_the_field_and_what_it_got():
    with pytest.raises(netslim.NetslimError, match=r"^quantize_weights \(method 'weight_only'\): field 'bits'.*got 5"):
        netslim.quantize.quantize_weights(netslim.build_model("lenet300"), bits=5)


def test_a_config_passed_as_data_is_refused():
    from netslim.quantize import WeightOnlyConfig, quantize_weights

    with pytest.raises(netslim.NetslimError, match=r"options as keywords.*netslim.apply\(model, cfg\)"):
        quantize_weights(netslim.build_model("lenet300"), WeightOnlyConfig(bits=4))


# name -> (zoo model, data, options); each runs in a second or two on lenet
CASES = {
    "quantize_weights": ("lenet300", None, {"bits": 4, "group_size": None}),
    "magnitude_prune": ("lenet300", None, {"sparsity": 0.5}),
    "nm_prune": ("lenet300", None, {"n": 2, "m": 4}),
    "magnitude_oneshot": ("lenet300", None, {"sparsity": 0.5}),
    "obd_prune": ("lenet300", "labelled", {"sparsity": 0.5, "num_samples": 16, "batch_size": 8}),
    "svd_compress": ("lenet300", "inputs", {"select": "rank", "rank": 16, "data_aware": True}),
    "activation_rank": ("lenet300", "inputs", {"tolerance": 0.2, "exclude": "fc3"}),
    "ptq_int8": ("lenet5", "inputs", {"calibration_samples": 32}),
    "dynamic_int8": ("lenet300", None, {}),
    "gptq": ("lenet300", "labelled", {"bits": 8, "group_size": None, "num_samples": 32}),
    "prune_channels": ("lenet5", "labelled", {"ratio": 0.5, "scope": "uniform"}),
    "drop_layers": ("resnet20", "labelled", {"count": 1, "calibration_samples": 8}),
    "share_weights": ("lenet300", "labelled", {"bits": 2, "finetune": {"epochs": 1, "max_steps": 2}}),
}
# Notes that depend on the run around the step: the stage report's path (the run's folder), the
# stages' .nsz bytes (the file carries the run's description) and the accuracy of the unpruned
# reference model (a recipe keeps one; a direct call has none)
RUN_SPECIFIC = {"share_weights": ("report", "tradeoff", "stages")}


def _case_data(kind):
    x, y = _data()
    return {None: None, "inputs": x, "labelled": (x, y)}[kind]


def _without(notes, keys):
    return {k: v for k, v in notes.items() if k not in keys} if keys else notes


def _jsonable(notes):
    """The notes as report.json holds them, wall-clock times left out."""

    def untimed(x):
        if isinstance(x, dict):
            return {k: untimed(v) for k, v in x.items() if k != "seconds"}
        return [untimed(v) for v in x] if isinstance(x, list) else x

    return untimed(json.loads(json.dumps(notes, default=str)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_call_returns_the_model_and_its_report_equals_the_recipe_step(name, tmp_path):
    zoo, kind, options = CASES[name]
    fn = FUNCTIONS[name]
    torch.manual_seed(0)
    model = netslim.build_model(zoo)
    data = _case_data(kind)
    out = fn(copy.deepcopy(model), data, **options)
    assert isinstance(out, nn.Module)
    report = netslim.report_of(out)
    method = fn.config_cls.method
    assert isinstance(report, netslim.StepReport) and report.method == method
    assert report.options == fn.config_cls(**options).model_dump(mode="json")
    assert report.notes is not None

    run = netslim.compress(
        copy.deepcopy(model),
        [{"method": method, **options}],
        data=_data(),  # the same rows, labelled: a run evaluates
        out=tmp_path / "run",
        verify=False,
    )
    step = run.report["steps"][0]
    assert step["method"] == method and step["params"] == report.options
    assert list(step["notes"]) == [method]  # the handler notes under its method's name only
    assert _jsonable(_without(step["notes"][method], RUN_SPECIFIC.get(name, ()))) == _jsonable(
        _without(report.notes, RUN_SPECIFIC.get(name, ()))
    )
    assert _jsonable(netslim.report_of(run.model).notes) == _jsonable(step["notes"][method])  # a recipe's too
    assert list(report.skipped) == run.report["skipped"]


def test_pruning_after_gptq_is_refused_in_the_direct_call_too():
    from netslim.prune.structured import prune_channels
    from netslim.quantize.gptq import gptq

    q = gptq(netslim.build_model("lenet300"), _data(), bits=8, group_size=None, num_samples=32)
    assert netslim.report_of(q).method == "gptq"
    before = copy.deepcopy(q.state_dict())
    with pytest.raises(netslim.NetslimError, match=r"^Method 'channels' changes weights after 'gptq' froze them"):
        prune_channels(q, _data(), ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_distill_takes_its_teacher_as_a_recipe_does(tmp_path):
    from netslim.distill import distill

    teacher = netslim.save(netslim.build_model("lenet300"), tmp_path / "teacher.safetensors")
    student = distill(netslim.build_model("lenet300"), _data(), teacher=str(teacher), finetune={"max_steps": 1})
    report = netslim.report_of(student)
    assert report.method == "distill" and report.notes["steps"] == 1 and report.notes["teacher"] == str(teacher)
    with pytest.raises(netslim.NetslimError, match=r"teacher 'reference' needs a recipe run"):
        distill(netslim.build_model("lenet300"), _data(), finetune={"max_steps": 1})


def test_a_call_that_writes_no_file_leaves_no_folder(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    netslim.prune.magnitude_prune(netslim.build_model("lenet300"), sparsity=0.5)
    assert not list(tmp_path.glob("netslim-apply-*"))


def test_report_of_a_model_no_step_ran_on_is_one_error():
    with pytest.raises(netslim.NetslimError, match=r"^report_of: no netslim step was applied to this LeNet300"):
        netslim.report_of(netslim.build_model("lenet300"))


def test_families_are_attributes_of_netslim_imported_on_first_use():
    import subprocess

    code = (
        "import sys, netslim; assert 'netslim.prune' not in sys.modules; "
        "f = netslim.prune.magnitude_prune; assert f.__name__ == 'magnitude_prune'; "
        "assert netslim.quantize.qat_train.config_cls.method == 'qat'\n"
        "try:\n    netslim.nothing\nexcept AttributeError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "has no attribute 'nothing'" in out.stdout
