"""The distillation loss as a task: :class:`DistillTask` wraps any :class:`~netslim.train.tasks.Task`.

Its ``loss`` is ``(1 − distill)·task.loss + distill·soft + hint_weight·Σ hints``, so that
:func:`netslim.train.loop.fit` trains a student with a teacher unchanged. The student's
inputs and outputs are captured with a forward hook while the wrapped task computes its
own loss, so any task (image classification, sentence encoder, causal LM) works
unchanged; the teacher runs on the same inputs in eval mode under ``no_grad``.
Soft loss by output type (``output_loss: auto``): logits (tensor or ``.logits``) ->
Hinton KL at temperature T; ``.last_hidden_state`` -> cosine distance of the
attention-mask mean-pooled embeddings. The ``distill`` step (:mod:`netslim.distill.step`)
builds it from a :class:`~netslim.distill.step.DistillConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from netslim.core.distributed import unwrap
from netslim.core.errors import NetslimError
from netslim.core.hooks import hooked
from netslim.core.surgery import get_module
from netslim.train.tasks import Task

from .losses import attention_transfer_loss, embedding_loss, hint_loss, soft_target_loss

if TYPE_CHECKING:
    from .step import DistillConfig


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


class Capture:
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
        root = Capture(with_inputs=True)
        feats = {s: Capture(False) for s in cfg.hints}
        with hooked([(model, root), *((get_module(student, s), c) for s, c in feats.items())], kind="forward_kwargs"):
            hard = self.inner.loss(model, batch)
        if not root.calls:
            raise NetslimError(f"Task {self.inner.name!r} computed its loss without calling the model.")
        t_feats = {t: Capture(False) for t in cfg.hints.values()}
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
                key = adapter_key(s_name)
                total = total + hint_loss(s, t, adapters[key] if key in adapters else None)
        return total / len(self.cfg.hints)


def adapter_key(name: str) -> str:
    """The :class:`WithAdapters` key of the hint adapter of student module ``name``."""
    return name.replace(".", "__")  # ModuleDict keys cannot contain dots
