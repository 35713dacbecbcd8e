"""Distillation losses: pure functions of student and teacher tensors.

The teacher side is always detached here, so whatever the caller passes, gradients flow
only into the student.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.errors import NetslimError, bad_param


def check_shapes(student: torch.Tensor, teacher: torch.Tensor, what: str = "outputs") -> None:
    """Student and teacher tensors must have the same shape to be compared."""
    if student.shape != teacher.shape:
        raise NetslimError(
            f"Teacher and student {what} do not match: teacher {tuple(teacher.shape)}, "
            f"student {tuple(student.shape)}; distill between models with the same output size "
            "(or add an adapter for features)."
        )


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise bad_param("kd_loss", "temperature", "a float > 0", temperature)


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Hinton et al. (2015): T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over rows.

    The T² factor keeps the soft-target gradients on the same scale as the hard-label
    ones when T changes. Logits (…, C) are flattened to rows of C classes.
    """
    check_shapes(student_logits, teacher_logits, "logits")
    _check_temperature(temperature)
    c = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, c) / temperature, dim=-1)  # (N, C)
    t = F.log_softmax(teacher_logits.detach().float().reshape(-1, c) / temperature, dim=-1)  # (N, C)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """α · soft-target loss + (1 − α) · cross-entropy with ``targets`` (α = 0: plain CE)."""
    if not 0 <= alpha <= 1:
        raise bad_param("kd_loss", "alpha", "a float in [0, 1]", alpha)
    if targets is None and alpha < 1:
        raise NetslimError("kd_loss needs 'targets' (hard labels) when alpha < 1.")
    soft = soft_target_loss(student_logits, teacher_logits, temperature) if alpha > 0 else 0.0
    hard = F.cross_entropy(student_logits, targets) if alpha < 1 else 0.0
    return alpha * soft + (1 - alpha) * hard


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, adapter: nn.Module | None = None) -> torch.Tensor:
    """FitNets (Romero et al. 2015): MSE between ``adapter(student)`` and the teacher feature."""
    s = adapter(student_feat) if adapter is not None else student_feat
    check_shapes(s, teacher_feat, "features (after the adapter)")
    return F.mse_loss(s.float(), teacher_feat.detach().float())


def embedding_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: Literal["cosine", "mse"] = "cosine"
) -> torch.Tensor:
    """Encoder outputs (…, D): mean (1 − cosine similarity) or mean squared error."""
    check_shapes(student, teacher, "embeddings")
    t = teacher.detach().float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.float(), t, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student.float(), t)
    raise bad_param("embedding_loss", "kind", "one of 'cosine', 'mse'", kind)


def attention_map(feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017): (B, C, H, W) -> L2-normalised Σ_c |a_c|^p, shape (B, H·W)."""
    if feat.ndim != 4:
        raise NetslimError(f"attention_map needs a (B, C, H, W) feature map; got shape {tuple(feat.shape)}.")
    a = feat.float().abs().pow(p).sum(1).flatten(1)  # (B, H·W)
    return F.normalize(a, dim=1)


def attention_transfer_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Mean squared distance of the attention maps; channel counts may differ, H×W may not."""
    s, t = attention_map(student_feat, p), attention_map(teacher_feat.detach(), p)
    check_shapes(s, t, "attention maps (batch × H·W)")
    return (s - t).pow(2).sum(1).mean()


def attention_kl(student_probs: torch.Tensor, teacher_probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Transformer attention transfer (MiniLM, Wang et al. 2020): KL(teacher ‖ student) of
    attention distributions (B, heads, T, T), averaged over batch, heads and queries."""
    check_shapes(student_probs, teacher_probs, "attention probabilities")
    t = teacher_probs.detach().float()
    s = student_probs.float()
    kl = (t * ((t + eps).log() - (s + eps).log())).sum(-1)  # (B, heads, T)
    return kl.mean()
