"""Knowledge distillation: pure loss functions and the ``distill`` step.

The method: :func:`distill` [distill] (``fn(model, data=None, **options) -> model``, made by
:func:`netslim.api.method_function`; its notes on ``netslim.report_of(model)``). The rest are
building blocks: :func:`distill_from` (train a student from a teacher module), the losses,
:class:`DistillTask`, :func:`load_teacher`.
"""

from .losses import (
    attention_kl,
    attention_map,
    attention_transfer_loss,
    embedding_loss,
    hint_loss,
    kd_loss,
    soft_target_loss,
)
from .step import DistillConfig, distill, distill_from, load_teacher
from .task import DistillTask

__all__ = [
    "DistillConfig",
    "DistillTask",
    "attention_kl",
    "attention_map",
    "attention_transfer_loss",
    "distill",
    "distill_from",
    "embedding_loss",
    "hint_loss",
    "kd_loss",
    "load_teacher",
    "soft_target_loss",
]
