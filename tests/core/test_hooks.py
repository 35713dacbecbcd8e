import pytest
import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.hooks import eval_mode, hooked


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 2))


def _flags(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules()}


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_mixed_training_flags_come_back_per_submodule():
    model = _net().train()
    model[2].eval()  # a frozen part of a model in training
    model[1].eval()
    before = _flags(model)
    seen = {}
    with eval_mode(model) as m:
        assert m is model
        seen.update(_flags(model))
        model(torch.randn(3, 4))
    assert not any(seen.values())
    assert _flags(model) == before  # model.train(True) would have put model[2] in train mode


def test_training_true_runs_in_train_mode_and_restores_eval():
    model = _net().eval()
    with eval_mode(model, training=True):
        assert all(_flags(model).values())
    assert not any(_flags(model).values())


def test_a_module_added_in_the_block_takes_its_parents_flag():
    model = _net().eval()
    model[2].train()
    with eval_mode(model):
        model[2][0] = nn.Linear(8, 8)  # train mode by construction; its parent was in train mode
        model[3] = nn.Linear(8, 2).train()  # the root was in eval mode
    assert model[2][0].training and model[2].training
    assert not model[3].training and not model.training


def test_hooks_of_every_kind_run_and_are_removed():
    model = _net()
    calls = []
    hooks = [
        (model[0], lambda m, a: calls.append("pre"), "pre"),
        ("2.0", lambda m, a, o: calls.append("forward")),  # the default kind, a name
        (model[3], lambda m, a, kw: calls.append(("pre_kwargs", kw)), "pre_kwargs"),
        ("3", lambda m, a, kw, o: calls.append("forward_kwargs"), "forward_kwargs"),
    ]
    with eval_mode(model, hooks):
        model(torch.randn(2, 4))
    assert calls == ["pre", "forward", ("pre_kwargs", {}), "forward_kwargs"]
    assert _hook_count(model) == 0
    model(torch.randn(2, 4))
    assert len(calls) == 4


def test_a_mapping_of_hooks_takes_kind_and_may_replace_outputs():
    model = nn.Sequential(nn.Linear(3, 3), nn.Identity())
    with eval_mode(model, {"0": lambda m, a: (torch.zeros_like(a[0]),)}, kind="pre", grad=False):
        y = model(torch.randn(2, 3))
    assert torch.equal(y, model[0].bias.expand(2, 3))  # the input was replaced by zeros
    assert _hook_count(model) == 0


def test_an_exception_removes_the_hooks_and_restores_the_flags():
    model = _net().train()
    model[2][1].eval()
    before = _flags(model)

    def boom(m, a, o):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model, {model[3]: boom}, grad=False):
            model(torch.randn(2, 4))
    assert _hook_count(model) == 0
    assert _flags(model) == before
    assert torch.is_grad_enabled()


def test_a_bad_name_registers_nothing():
    model = _net().train()
    with pytest.raises(NetslimError, match="no module of that name"):
        with eval_mode(model, [("0", lambda m, a, o: None), ("nope", lambda m, a, o: None)]):
            pass
    assert _hook_count(model) == 0 and model.training


@pytest.mark.parametrize(
    "hooks,match",
    [
        ({"0": lambda m, a: None}, "Unknown hook kind"),
        ([("0",)], "must be a"),
        ([(3, lambda m, a, o: None)], "target must be a module"),
        ({"0": "not callable"}, "must be callable"),
    ],
)
def test_bad_hook_specs_are_one_line_errors(hooks, match):
    model = _net()
    kind = "post" if match == "Unknown hook kind" else "forward"
    with pytest.raises(NetslimError, match=match):
        with eval_mode(model, hooks, kind=kind):
            pass
    assert _hook_count(model) == 0 and model.training


def test_grad_settings_are_honoured_and_undone():
    model = _net()
    x = torch.randn(2, 4)
    with eval_mode(model, grad=False):
        assert not torch.is_grad_enabled()
        assert not model(x).requires_grad
    assert torch.is_grad_enabled()
    with eval_mode(model, grad="inference"):
        assert torch.is_inference_mode_enabled()
        assert model(x).is_inference()
    assert not torch.is_inference_mode_enabled()
    with torch.no_grad():
        with eval_mode(model, grad=True):
            assert model(x).requires_grad
        assert not torch.is_grad_enabled()
        with eval_mode(model):  # None: as the caller has it
            assert not torch.is_grad_enabled()
    with pytest.raises(NetslimError, match="'grad' parameter of eval_mode"):
        with eval_mode(model, grad="yes"):
            pass


def test_nested_use_restores_each_level():
    model = _net().train()
    model[1].eval()
    outer_calls, inner_calls = [], []
    with eval_mode(model, {"0": lambda m, a, o: outer_calls.append(1)}, grad=False):
        with eval_mode(model, {"0": lambda m, a, o: inner_calls.append(1)}, training=True, grad=True):
            assert all(_flags(model).values()) and torch.is_grad_enabled()
            model(torch.randn(2, 4))
        assert not any(_flags(model).values()) and not torch.is_grad_enabled()
        model(torch.randn(2, 4))
    assert (len(outer_calls), len(inner_calls)) == (2, 1)
    assert _hook_count(model) == 0
    assert _flags(model) == {n: n != "1" for n in _flags(model)}


def test_hooked_leaves_the_mode_and_needs_a_root_for_names():
    model = _net().train()
    seen = []
    with hooked([(model[0], lambda m, a, o: seen.append(m.training))]):
        model(torch.randn(2, 4))
    assert seen == [True] and _hook_count(model) == 0
    with pytest.raises(NetslimError, match="pass the model"):
        with hooked({"0": lambda m, a, o: None}):
            pass
