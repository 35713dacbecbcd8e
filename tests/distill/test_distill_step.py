"""The ``distill`` step: trains through fit, leaves no adapters, checks teacher/student fit."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.distill import DistillConfig, DistillTask, distill_from


def test_config_round_trips_through_yaml():
    cfg = DistillConfig(
        teacher="reference", distill_temperature=2.0, distill=0.5, finetune={"epochs": 1}, hints={"layer3": "layer3"}
    )
    assert make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    with pytest.raises(NetslimError, match="'distill'"):
        make_config({"method": "distill", "distill": 2})


def test_old_spellings_are_refused_naming_the_new_ones():
    for old, new in [
        ({"alpha": 0.5}, "'alpha' is now spelled 'distill'"),
        ({"temperature": 2.0}, "'temperature' is now spelled 'distill_temperature'"),
        ({"epochs": 3}, "'epochs' is a training option: set it under 'finetune:'"),
    ]:
        with pytest.raises(NetslimError, match=new):
            make_config({"method": "distill", **old})
    # the other keys of a partial finetune block keep distill's own training defaults
    assert make_config({"method": "distill", "finetune": {"lr": 0.05}}).finetune.epochs == 3


def test_alpha_zero_task_loss_equals_the_plain_task_loss(tiny_mlp, fmnist_small):
    batch = next(fmnist_small.train_batches(0, 32))
    teacher = netslim.build_model("lenet300")
    wrapped = DistillTask(fmnist_small, teacher, DistillConfig(distill=0.0))
    torch.testing.assert_close(wrapped.loss(tiny_mlp, batch), fmnist_small.loss(tiny_mlp, batch))
    same = DistillTask(fmnist_small, tiny_mlp, DistillConfig(distill=1.0))
    assert same.loss(tiny_mlp, batch).abs().item() < 1e-5  # teacher = student: no soft loss


def _convnet(width: int) -> nn.Module:
    # (B, 1, 28, 28) -> "features" (B, width, 7, 7) -> logits (B, 10)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def test_distill_trains_the_student_only(fmnist_small):
    torch.manual_seed(0)
    teacher, student = _convnet(8), _convnet(4)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    summary = distill_from(
        student,
        teacher,
        DistillConfig(finetune={"epochs": 1, "max_steps": 3, "batch_size": 32}, hints={"3": "3"}),
        task=fmnist_small,
    )
    assert summary["steps"] == 3
    assert [n for n, _ in student.named_children()] == [str(i) for i in range(7)]  # no adapter left
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in s_before.items())


def test_mismatched_outputs_are_refused_before_training(tiny_mlp, fmnist_small):
    teacher = netslim.build_model("lenet300", num_classes=7)
    with pytest.raises(NetslimError, match=r"teacher \(2, 7\), student \(2, 10\)"):
        distill_from(tiny_mlp, teacher, DistillConfig(finetune={"max_steps": 1}), task=fmnist_small)


def test_hint_features_of_different_resolution_are_refused(fmnist_small):
    student, teacher = _convnet(4), _convnet(8)
    with pytest.raises(NetslimError, match="Hint '1'"):
        distill_from(student, teacher, DistillConfig(finetune={"max_steps": 1}, hints={"1": "3"}), task=fmnist_small)


def test_recipe_step_uses_the_reference_teacher(tiny_mlp, fmnist_small, tmp_path):
    ref = tmp_path / "ref.safetensors"
    netslim.save(tiny_mlp, ref)
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path, reference=lambda: netslim.load(ref))
    model = apply(tiny_mlp, DistillConfig(finetune={"epochs": 1, "max_steps": 2, "batch_size": 32}), ctx)
    assert ctx.notes["distill"]["steps"] == 2 and ctx.notes["distill"]["teacher"] == "reference"
    assert isinstance(model.fc1, nn.Linear)
    with pytest.raises(NetslimError, match="'teacher'.*no such file"):
        apply(model, DistillConfig(teacher=str(tmp_path / "missing.safetensors"), finetune={"max_steps": 1}), ctx)


def test_fresh_student_from_the_current_model(tiny_mlp, fmnist_small, tmp_path):
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    cfg = DistillConfig(teacher="current", student="lenet300", finetune={"max_steps": 1, "batch_size": 16})
    student = apply(tiny_mlp, cfg, ctx)
    assert student.netslim_arch == {"name": "lenet300", "kwargs": {}} and student is not tiny_mlp
    with pytest.raises(NetslimError, match="set 'student'"):
        apply(tiny_mlp, DistillConfig(teacher="current", finetune={"max_steps": 1}), ctx)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_soft_term_sends_its_gradient_into_the_student(fmnist_small, alpha):
    """Regression: the soft loss was computed under the teacher's no_grad, so it added no
    gradient and α only scaled the hard loss down (KD lost ~10 pt to labels-only training).
    Oracle: the gradient of (1 - α)·CE + α·soft_target_loss computed by hand."""
    from netslim.distill.losses import soft_target_loss

    torch.manual_seed(0)
    student, teacher = _convnet(4), _convnet(8)
    x, y = batch = next(fmnist_small.train_batches(0, 32))
    kd = DistillConfig(distill=alpha, distill_temperature=2.0)
    loss = DistillTask(fmnist_small, teacher, kd).loss(student, batch)
    loss.backward()
    got = _grads(student)
    student.zero_grad()
    with torch.no_grad():
        t_logits = teacher(x)
    s_logits = student(x)
    ref = (1 - alpha) * torch.nn.functional.cross_entropy(s_logits, y) + alpha * soft_target_loss(
        s_logits, t_logits, 2.0
    )
    ref.backward()
    want = _grads(student)
    torch.testing.assert_close(loss.detach(), ref.detach())
    assert sum(g.norm() for g in want) > 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert all(p.grad is None for p in teacher.parameters())


def test_pure_distillation_moves_the_student_towards_the_teacher(fmnist_small):
    """α = 1 (no labels): a few steps must lower the soft loss on held-out images."""
    from netslim.distill.losses import soft_target_loss

    torch.manual_seed(0)
    student, teacher = _convnet(4), _convnet(8)
    x = fmnist_small.splits["val"][0][:200]

    def gap() -> float:
        with torch.no_grad():
            return soft_target_loss(student(x), teacher(x), 1.0).item()

    before = gap()
    distill_from(
        student,
        teacher,
        DistillConfig(
            distill=1.0,
            distill_temperature=1.0,
            finetune={"epochs": 1, "max_steps": 30, "batch_size": 32, "lr": 0.05, "select_best": False},
        ),
        task=fmnist_small,
    )
    assert gap() < 0.5 * before


def test_shape_probe_leaves_batchnorm_statistics_alone(fmnist_small):
    from netslim.distill.step import check_compatible

    torch.manual_seed(0)
    student = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    ).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    check_compatible(student, _convnet(8), fmnist_small, DistillConfig())
    assert student.training
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())


def _mixed_pair(mix: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    """Student conv stack whose feature '2' (3 channels) maps linearly onto the teacher's (5 channels):
    the teacher's conv '2' is ``mix`` (5×3) applied to the student's output channels."""
    torch.manual_seed(0)
    student = nn.Sequential(
        nn.Conv2d(1, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 10),
    )
    teacher = nn.Sequential(
        nn.Conv2d(1, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 10),
    )
    with torch.no_grad():
        teacher[0].load_state_dict(student[0].state_dict())
        teacher[2].weight.copy_(torch.einsum("ts,sihw->tihw", mix, student[2].weight))
        teacher[2].bias.copy_(mix @ student[2].bias)
    return student, teacher


def _hint_gap(student, teacher, adapter, x) -> float:
    from netslim.distill.losses import hint_loss

    with torch.no_grad():
        return hint_loss(student[:3](x), teacher[:3](x), adapter).item()


def test_hint_loss_is_zero_for_a_student_equal_to_the_teacher_and_trains_the_adapter(fmnist_small):
    from netslim.distill.losses import hint_loss

    x = fmnist_small.splits["val"][0][:16]
    student, teacher = _mixed_pair(torch.randn(5, 3))
    f = student[:3](x)
    assert hint_loss(f, f.clone()).item() == 0.0
    adapter = nn.Conv2d(3, 5, 1, bias=False)
    loss = hint_loss(f, teacher[:3](x), adapter)
    loss.backward()
    assert loss.item() > 0 and adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_least_squares_adapter_recovers_the_linear_map_between_features(fmnist_small):
    """Oracle: teacher feature = M · student feature exactly, so the fitted 1×1 adapter is M
    and its hint loss ~0, where PyTorch's random init leaves a large loss."""
    from netslim.distill.step import check_compatible, init_adapters

    mix = torch.randn(5, 3)
    student, teacher = _mixed_pair(mix)
    cfg = DistillConfig(hints={"2": "2"}, adapter_samples=64)
    adapters = check_compatible(student, teacher, fmnist_small, cfg)
    x = fmnist_small.splits["val"][0][:64]
    random_gap = _hint_gap(student, teacher, adapters["2"], x)
    init_adapters(adapters, student, teacher, fmnist_small, cfg)
    torch.testing.assert_close(adapters["2"].weight[:, :, 0, 0], mix, atol=1e-3, rtol=1e-3)
    assert _hint_gap(student, teacher, adapters["2"], x) < 1e-5 * max(random_gap, 1e-3)
    untouched = check_compatible(student, teacher, fmnist_small, cfg.model_copy(update={"adapter_init": "random"}))
    w = untouched["2"].weight.clone()
    init_adapters(untouched, student, teacher, fmnist_small, cfg.model_copy(update={"adapter_init": "random"}))
    assert torch.equal(untouched["2"].weight, w)


def test_fit_adapter_on_linear_features_and_rank_deficient_inputs():
    from netslim.distill.step import fit_adapter

    torch.manual_seed(0)
    s = torch.randn(200, 4)
    s[:, 3] = s[:, 0]  # rank-deficient: the ridge term keeps the solve finite
    m = torch.randn(6, 4)
    a = fit_adapter(nn.Linear(4, 6, bias=False), s, s @ m.T)
    assert torch.isfinite(a.weight).all()
    torch.testing.assert_close(s @ a.weight.T, s @ m.T, atol=1e-3, rtol=1e-3)


def test_adapter_init_sees_train_mode_features_and_leaves_batchnorm_alone(fmnist_small):
    """A student with stale BatchNorm statistics: the adapter is fitted to the batch-statistics
    features that training will produce, and the running statistics are restored."""
    from netslim.distill.losses import hint_loss
    from netslim.distill.step import check_compatible, init_adapters

    torch.manual_seed(0)
    student = nn.Sequential(
        nn.Conv2d(1, 3, 3, 2, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10)
    )
    with torch.no_grad():
        student[1].running_mean.fill_(5.0)  # stale: eval-mode features differ from train-mode ones
    teacher = _convnet(5)
    cfg = DistillConfig(hints={"2": "1"}, adapter_samples=64)
    adapters = check_compatible(student, teacher, fmnist_small, cfg)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    init_adapters(adapters, student, teacher, fmnist_small, cfg)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    from netslim.distill.step import fit_adapter

    x = fmnist_small.calibration_inputs(64, seed=0)  # the samples init_adapters used (seed = cfg.seed)
    with torch.no_grad():
        t = teacher[:2](x)
        eval_fit = fit_adapter(nn.Conv2d(3, 5, 1, bias=False), student.eval()[:3](x), t)
        s_train = student.train()[:3](x)  # batch statistics, as in training
        train_gap = hint_loss(s_train, t, adapters["2"]).item()
        assert train_gap < 0.9 * hint_loss(s_train, t, eval_fit).item()
        assert train_gap < hint_loss(s_train, t, check_compatible(student, teacher, fmnist_small, cfg)["2"]).item()
