"""The ``distill`` recipe step: train the student on task loss + distillation terms.

```yaml
- method: distill
  teacher: reference      # the model as it was before this recipe, or an artifact path
  distill: 0.9            # weight of the soft loss; 1 - distill on the task's own loss
  distill_temperature: 4.0
  finetune: {epochs: 3}   # the student's training (a FinetuneConfig, as in every step that trains)
  hints: {layer3: layer3} # optional FitNets hints: student module -> teacher module
  adapter_init: lstsq     # hint adapters start as the least-squares map student -> teacher features
```

``distill`` / ``distill_temperature`` are the KD spelling of every step that distils (the
structured steps and ``cofi`` fine-tune with the same two keys); ``alpha`` / ``temperature`` are
refused with a message naming them.

It reuses :func:`netslim.train.loop.fit` through a :class:`~netslim.distill.task.DistillTask`
(:mod:`netslim.distill.task`: the loss, any task); this module holds the config, the hint
adapters' set-up, the teacher's loading and the handler. In Python the method is
:func:`distill` (``fn(model, data=None, **options) -> model``; ``teacher`` an artifact path or a
zoo name there, as 'reference' needs a recipe run) and its building block :func:`distill_from`
(a teacher module at hand).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from netslim.api import method_function
from netslim.core.config import register
from netslim.core.errors import NetslimError
from netslim.core.hooks import eval_mode
from netslim.core.surgery import get_module
from netslim.train.loop import FinetuneConfig, TrainingStep, finetune_field, fit
from netslim.train.tasks import Task

from .losses import check_shapes
from .task import Capture, DistillTask, WithAdapters, adapter_key


class DistillConfig(TrainingStep):
    """Fine-tune with a teacher: Hinton soft targets, embedding and hint distillation."""

    method = "distill"
    data_parallel: ClassVar[bool] = True  # under torchrun: every rank trains (netslim.train.parallel)
    renamed: ClassVar[dict[str, str]] = {"alpha": "distill", "temperature": "distill_temperature"}
    teacher: str = Field(
        "reference",
        description="'reference' (the model before the recipe), 'current' (the "
        "model entering this step), a zoo name (its trained checkpoint) or an artifact path",
    )
    student: str | None = Field(
        None,
        description="zoo name: train a fresh student of this architecture "
        "(with student_kwargs) instead of the model entering this step",
    )
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    distill: float = Field(0.9, ge=0, le=1, description="weight of the soft loss (1 - distill: the task loss)")
    distill_temperature: float = Field(4.0, gt=0)
    output_loss: Literal["auto", "kl", "cosine", "mse"] = "auto"
    hints: dict[str, str] = Field(default_factory=dict, description="student module -> teacher module")
    hint_loss: Literal["mse", "attention"] = "mse"
    hint_weight: float = Field(1.0, ge=0)
    adapter_init: Literal["lstsq", "random"] = Field(
        "lstsq",
        description="hint adapters (where widths differ): 'lstsq' starts from the ridge least-squares "
        "map of the student's features onto the teacher's on calibration data (a pruned student's kept "
        "channels then start matched, not scrambled); 'random' = PyTorch's default init",
    )
    adapter_samples: int = Field(256, ge=1, description="calibration samples for adapter_init 'lstsq'")
    finetune: FinetuneConfig = finetune_field(
        "the student's training; its seed also seeds a fresh 'student' and the adapters' calibration rows", epochs=3
    )

    @classmethod
    def example(cls) -> DistillConfig:
        return cls(finetune={"epochs": 1, "max_steps": 2, "batch_size": 32})

    @property
    def keeps_modules(self) -> bool:
        """A fresh ``student`` replaces the model (netslim.recipe.preflight)."""
        return self.student is None

    def preflight(self, model, task) -> None:
        """Before a recipe runs: a ``student`` is a zoo model name."""
        if self.student is not None:
            from netslim.models.registry import model_entry

            try:
                model_entry(self.student)
            except NetslimError as e:
                raise NetslimError(f"field 'student': {e}") from None


@torch.no_grad()
def _features(model: nn.Module, names, task: Task, example, train: bool = False) -> dict[str, torch.Tensor]:
    """Output and named modules' outputs. Eval mode by default (the shape probe: a train-mode
    pass would update BatchNorm running statistics from two examples); ``train=True`` gives the
    features training will see (batch statistics) and then restores every buffer."""
    caps = {n: Capture(False) for n in names}
    buffers = [(b, b.clone()) for b in model.buffers()] if train else []
    try:
        with eval_mode(
            model, [(get_module(model, n), c) for n, c in caps.items()], kind="forward_kwargs", training=train
        ):
            out = task.forward(model, example)
    finally:
        for b, saved in buffers:
            b.copy_(saved)
    return {"__output__": out, **{n: c.calls[-1][2] for n, c in caps.items() if c.calls}}


def _adapter(name: str, s: torch.Tensor, t: torch.Tensor) -> nn.Module:
    """A learned map from the student feature to the teacher's shape (Identity if equal)."""
    if s.shape == t.shape:
        return nn.Identity()
    if s.ndim == 4 and t.ndim == 4 and s.shape[-2:] == t.shape[-2:]:
        return nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)  # 1×1 conv: channels only
    if s.ndim == t.ndim and s.shape[:-1] == t.shape[:-1] and s.ndim != 4:
        return nn.Linear(s.shape[-1], t.shape[-1], bias=False)
    raise NetslimError(
        f"Hint {name!r}: student feature {tuple(s.shape)} and teacher feature {tuple(t.shape)} "
        "can only differ in channels (dim 1 of a feature map, or the last dim)."
    )


def _rows(feat: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """Feature -> (N, channels) rows in the layout the adapter maps (dim 1 of a map, else last)."""
    if isinstance(adapter, nn.Conv2d):
        return feat.movedim(1, -1).reshape(-1, feat.shape[1])
    return feat.reshape(-1, feat.shape[-1])


@torch.no_grad()
def fit_adapter(
    adapter: nn.Module, student_feat: torch.Tensor, teacher_feat: torch.Tensor, ridge: float = 1e-4
) -> nn.Module:
    """Set a bias-free 1×1-conv / Linear adapter to argmin_A ‖A·s − t‖² + λ‖A‖² over all positions
    (λ = ``ridge`` × mean eigenvalue of SᵀS, so rank-deficient features stay solvable)."""
    if not isinstance(adapter, (nn.Conv2d, nn.Linear)):
        return adapter
    s = _rows(student_feat, adapter).double()  # (N, Cs)
    t = _rows(teacher_feat, adapter).double()  # (N, Ct)
    gram = s.T @ s  # (Cs, Cs)
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    a = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), s.T @ t)
    adapter.weight.copy_(a.T.reshape(adapter.weight.shape).to(adapter.weight.dtype))
    return adapter


def init_adapters(
    adapters: dict[str, nn.Module], student: nn.Module, teacher: nn.Module, task: Task, cfg: DistillConfig
) -> None:
    """``adapter_init: lstsq``: fit each learned adapter on ``adapter_samples`` calibration inputs
    (one batch; BatchNorm buffers are left as they were)."""
    if cfg.adapter_init != "lstsq":
        return
    names = [
        s for s in cfg.hints if adapter_key(s) in adapters and any(True for _ in adapters[adapter_key(s)].parameters())
    ]
    if not names:
        return
    inputs = task.calibration_inputs(cfg.adapter_samples, seed=cfg.finetune.seed)
    # The student's features as training sees them (train mode: a pruned model's BatchNorm
    # running statistics can be far from its batch statistics); the teacher runs in eval mode.
    s = _features(student, names, task, inputs, train=True)
    t = _features(teacher, [cfg.hints[n] for n in names], task, inputs)
    for name in names:
        fit_adapter(adapters[adapter_key(name)], s[name], t[cfg.hints[name]])


def check_compatible(student: nn.Module, teacher: nn.Module, task: Task, cfg: DistillConfig) -> dict[str, nn.Module]:
    """Fail before training if outputs or hint features cannot be compared; returns the adapters."""
    example = task.example_inputs(2)
    s = _features(student, cfg.hints, task, example)
    t = _features(teacher, cfg.hints.values(), task, example)
    so, to = s["__output__"], t["__output__"]
    for attr in ("logits", "last_hidden_state"):
        so, to = getattr(so, attr, so), getattr(to, attr, to)
    if isinstance(so, torch.Tensor) and isinstance(to, torch.Tensor):
        check_shapes(so, to, "outputs")
    adapters = {}
    for s_name, t_name in cfg.hints.items():
        for model_name, feats, layer in (("student", s, s_name), ("teacher", t, t_name)):
            if layer not in feats:
                raise NetslimError(f"Hint layer {layer!r} of the {model_name} is not called in a forward pass.")
        if cfg.hint_loss == "mse":
            adapters[adapter_key(s_name)] = _adapter(s_name, s[s_name], t[t_name])
    return adapters


def load_teacher(ref: str, reference=None) -> nn.Module:
    """'reference' -> ``reference()`` (the model before the recipe); a zoo name -> its trained
    checkpoint; else an artifact path."""
    from netslim.core.cache import checkpoint_path
    from netslim.core.serialize import load
    from netslim.models import model_names

    if ref == "reference":
        if reference is None:
            raise NetslimError(
                "teacher 'reference' needs a recipe run (the model before the recipe); "
                "pass an artifact path as 'teacher' instead."
            )
        return reference()
    if ref in model_names() and not Path(ref).suffix:
        path = checkpoint_path(ref)
        if not path.is_file():
            raise NetslimError(f"Teacher {ref!r} has no trained checkpoint at {path}; run `netslim train {ref}`.")
        return load(path)
    if not Path(ref).is_file():
        raise NetslimError(
            f"The 'teacher' parameter of distill must be 'reference', 'current', a zoo model name "
            f"or an existing artifact path; got {ref!r} (no such file)."
        )
    return load(ref)


def distill_from(student: nn.Module, teacher: nn.Module, cfg: DistillConfig, *, task: Task) -> dict[str, Any]:
    """Train ``student`` in place on ``task`` with the ``teacher`` module as ``cfg`` says (the building
    block of the ``distill`` method, whose ``teacher`` option names a model); returns the fit summary."""
    device = next(student.parameters()).device
    teacher = teacher.to(device).eval().requires_grad_(False)
    adapters = {
        k: a.to(device)
        for k, a in check_compatible(student, teacher, task, cfg).items()
        if any(True for _ in a.parameters())
    }
    init_adapters(adapters, student, teacher, task, cfg)
    # Wrap only when there is something to learn besides the student: tasks may rely on
    # the student's own attributes (e.g. a Hugging Face config).
    trained = WithAdapters(student, adapters).to(device) if adapters else student
    return fit(trained, DistillTask(task, teacher, cfg), cfg.finetune)


def fresh_student(cfg: DistillConfig) -> nn.Module:
    """A randomly initialised zoo model (seeded by ``cfg.finetune.seed``) to train from the teacher."""
    from netslim.models import build_model

    torch.manual_seed(cfg.finetune.seed)
    return build_model(cfg.student, **cfg.student_kwargs)


@register(DistillConfig)
def run_distill(model: nn.Module, cfg: DistillConfig, ctx) -> nn.Module:
    teacher = model if cfg.teacher == "current" else load_teacher(cfg.teacher, ctx.reference)
    if cfg.student is not None:
        model = fresh_student(cfg)
    elif cfg.teacher == "current":
        raise NetslimError(
            "teacher 'current' distills the model entering this step into a fresh student; "
            "set 'student' (a zoo model name)."
        )
    model = model.to(ctx.device)
    summary = distill_from(model, teacher, cfg, task=ctx.task)
    ctx.notes[cfg.method] = {k: v for k, v in summary.items()} | {"teacher": cfg.teacher}
    return model


# In Python: distill(model, data, teacher="teacher.safetensors", distill=0.9) (netslim.api.method_function);
# with a teacher module at hand, distill_from(student, teacher, cfg, task=task).
distill = method_function(DistillConfig, "distill")
