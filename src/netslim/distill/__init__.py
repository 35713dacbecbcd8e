"""Knowledge distillation: pure loss functions and the ``distill`` step."""

from .losses import (
    attention_kl,
    attention_map,
    attention_transfer_loss,
    embedding_loss,
    hint_loss,
    kd_loss,
    soft_target_loss,
)
from .step import DistillConfig, distill, load_teacher
from .task import DistillTask

__all__ = [
    "DistillConfig",
    "DistillTask",
    "attention_kl",
    "attention_map",
    "attention_transfer_loss",
    "distill",
    "embedding_loss",
    "hint_loss",
    "kd_loss",
    "load_teacher",
    "soft_target_loss",
]
