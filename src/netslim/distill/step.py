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

It reuses :func:`netslim.train.loop.fit` through a :class:`DistillTask`, a Task wrapper
whose ``loss`` is ``(1 − distill)·task.loss + distill·soft + hint_weight·Σ hints``. The student's
inputs and outputs are captured with a forward hook while the wrapped task computes its
own loss, so any task (image classification, sentence encoder, causal LM) works
unchanged; the teacher runs on the same inputs in eval mode under ``no_grad``.
Soft loss by output type (``output_loss: auto``): logits (tensor or ``.logits``) ->
Hinton KL at temperature T; ``.last_hidden_state`` -> cosine distance of the
attention-mask mean-pooled embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from netslim.core.config import build_config, register
from netslim.core.distributed import unwrap
from netslim.core.errors import NetslimError
from netslim.core.hooks import eval_mode, hooked
from netslim.core.surgery import get_module
from netslim.train.loop import FinetuneConfig, TrainingStep, finetune_field, fit
from netslim.train.tasks import Task

from .losses import attention_transfer_loss, check_shapes, embedding_loss, hint_loss, soft_target_loss


class WithAdapters(nn.Module):
    """The student plus its learned hint adapters, so that fit's optimizer trains both.

    A wrapper rather than an attribute on the student: adding a child to an
    ``nn.Sequential`` would make it part of the forward pass.
    """

    def __init__(self, student: nn.Module, adapters: dict[str, nn.Module]):
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleDict(adapters)

    def forward(self, *args, **kwargs):
        return self.student(*args, **kwargs)


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


def _pool(out: Any, kwargs: dict) -> torch.Tensor:
    """Sentence embeddings from an encoder output: mask-weighted mean of the last hidden states."""
    h = out.last_hidden_state  # (B, T, D)
    mask = kwargs.get("attention_mask")
    if mask is None:
        return h.mean(1)
    m = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


def output_distance(student: Any, teacher: Any, kwargs: dict, cfg: DistillConfig) -> torch.Tensor:
    """The soft loss between two model outputs of the same kind."""
    kind = cfg.output_loss
    if hasattr(student, "logits") or isinstance(student, torch.Tensor):
        s = student.logits if hasattr(student, "logits") else student
        t = teacher.logits if hasattr(teacher, "logits") else teacher
        if kind in ("auto", "kl"):
            return soft_target_loss(s, t, cfg.distill_temperature)
        return embedding_loss(s, t, kind)
    if hasattr(student, "last_hidden_state"):
        if kind == "kl":
            raise NetslimError(
                "output_loss 'kl' needs logits; this model returns hidden states (use 'cosine' or 'mse')."
            )
        return embedding_loss(_pool(student, kwargs), _pool(teacher, kwargs), "cosine" if kind == "auto" else kind)
    raise NetslimError(
        f"Cannot distill a model whose output is a {type(student).__name__}; "
        "expected logits or an encoder output with last_hidden_state."
    )


class _Capture:
    """A forward hook (kind "forward_kwargs" of :mod:`netslim.core.hooks`) recording a module's
    calls (inputs and output)."""

    def __init__(self, with_inputs: bool):
        self.calls: list[tuple[tuple, dict, Any]] = []
        self.with_inputs = with_inputs

    def __call__(self, module, args, kwargs, out) -> None:
        self.calls.append((args, kwargs, out) if self.with_inputs else ((), {}, out))


class DistillTask(Task):
    """``task`` with a loss that adds the teacher's terms (see the module docstring)."""

    def __init__(self, task: Task, teacher: nn.Module, cfg: DistillConfig):
        self.inner, self.teacher, self.cfg = task, teacher, cfg
        self.name, self.metric, self.higher_is_better = task.name, task.metric, task.higher_is_better

    def train_batches(self, epoch, batch_size):
        return self.inner.train_batches(epoch, batch_size)

    def steps_per_epoch(self, batch_size):
        return self.inner.steps_per_epoch(batch_size)

    def evaluate(self, model, split="test"):
        return self.inner.evaluate(model, split)

    def example_inputs(self, batch_size):
        return self.inner.example_inputs(batch_size)

    def calibration_inputs(self, num_samples, seed=0):
        return self.inner.calibration_inputs(num_samples, seed)

    def forward(self, model, inputs):
        return self.inner.forward(model, inputs)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """``model``: the student (or :class:`WithAdapters`), or under torchrun its DDP wrapper (called
        for the forward pass so that gradients are averaged; hooks and adapters are the inner model's)."""
        cfg = self.cfg
        inner = unwrap(model)
        student = inner.student if isinstance(inner, WithAdapters) else inner
        root = _Capture(with_inputs=True)
        feats = {s: _Capture(False) for s in cfg.hints}
        with hooked([(model, root), *((get_module(student, s), c) for s, c in feats.items())], kind="forward_kwargs"):
            hard = self.inner.loss(model, batch)
        if not root.calls:
            raise NetslimError(f"Task {self.inner.name!r} computed its loss without calling the model.")
        t_feats = {t: _Capture(False) for t in cfg.hints.values()}
        # Only the teacher's forward runs without autograd: the distance to the student's
        # output must stay in the graph, or the soft term would add no gradient at all.
        with (
            hooked([(get_module(self.teacher, t), c) for t, c in t_feats.items()], kind="forward_kwargs"),
            torch.no_grad(),
        ):
            t_outs = [self.teacher(*args, **kwargs) for args, kwargs, _ in root.calls]
        soft = sum(output_distance(out, t_out, kwargs, cfg) for (_, kwargs, out), t_out in zip(root.calls, t_outs))
        loss = (1 - cfg.distill) * hard + cfg.distill * soft / len(root.calls)
        if cfg.hints:
            loss = loss + cfg.hint_weight * self._hints(inner, feats, t_feats)
        return loss

    def _hints(self, model, feats, t_feats) -> torch.Tensor:
        adapters = model.adapters if isinstance(model, WithAdapters) else {}
        total = 0.0
        for s_name, t_name in self.cfg.hints.items():
            s, t = feats[s_name].calls[-1][2], t_feats[t_name].calls[-1][2]
            if self.cfg.hint_loss == "attention":
                total = total + attention_transfer_loss(s, t)
            else:
                total = total + hint_loss(s, t, adapters[_key(s_name)] if _key(s_name) in adapters else None)
        return total / len(self.cfg.hints)


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys cannot contain dots


@torch.no_grad()
def _features(model: nn.Module, names, task: Task, example, train: bool = False) -> dict[str, torch.Tensor]:
    """Output and named modules' outputs. Eval mode by default (the shape probe: a train-mode
    pass would update BatchNorm running statistics from two examples); ``train=True`` gives the
    features training will see (batch statistics) and then restores every buffer."""
    caps = {n: _Capture(False) for n in names}
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
    names = [s for s in cfg.hints if _key(s) in adapters and any(True for _ in adapters[_key(s)].parameters())]
    if not names:
        return
    inputs = task.calibration_inputs(cfg.adapter_samples, seed=cfg.finetune.seed)
    # The student's features as training sees them (train mode: a pruned model's BatchNorm
    # running statistics can be far from its batch statistics); the teacher runs in eval mode.
    s = _features(student, names, task, inputs, train=True)
    t = _features(teacher, [cfg.hints[n] for n in names], task, inputs)
    for name in names:
        fit_adapter(adapters[_key(name)], s[name], t[cfg.hints[name]])


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
            adapters[_key(s_name)] = _adapter(s_name, s[s_name], t[t_name])
    return adapters


def load_teacher(ref: str, reference=None) -> nn.Module:
    """'reference' -> ``reference()`` (the model before the recipe); a zoo name -> its trained
    checkpoint; else an artifact path."""
    from netslim.core.serialize import load
    from netslim.models import model_names
    from netslim.train.pretrain import checkpoint_path

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


def distill(
    student: nn.Module, teacher: nn.Module, cfg: DistillConfig | None = None, *, task: Task, **overrides: Any
) -> dict[str, Any]:
    """Train ``student`` in place on ``task`` with ``teacher``; returns the fit summary."""
    cfg = build_config(DistillConfig, cfg, overrides)
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
    summary = distill(model, teacher, cfg, task=ctx.task)
    ctx.notes[cfg.method] = {k: v for k, v in summary.items()} | {"teacher": cfg.teacher}
    return model
