"""Cheap trial-time evaluation: accuracy on a fixed subset and a short fine-tune.

Trials ship these tensors (not a whole :class:`~netslim.train.tasks.Task`, whose training
split is ~170 MB) to their workers, so a subset is the unit of data here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.hooks import eval_mode


@dataclass(frozen=True)
class Subset:
    """Inputs and labels held in memory (a validation or training subset)."""

    x: torch.Tensor  # (N, C, H, W)
    y: torch.Tensor  # (N,)

    @classmethod
    def from_task(cls, task: Any, split: str, limit: int, seed: int = 0) -> Subset:
        x, y = task.splits[split]
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:limit]
        return cls(x[idx].contiguous(), y[idx].contiguous())

    def __len__(self) -> int:
        return len(self.y)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def accuracy(model: nn.Module, data: Subset, batch_size: int = 500) -> float:
    dev = _device(model)
    correct = 0
    with eval_mode(model):
        for i in range(0, len(data), batch_size):
            out = model(data.x[i : i + batch_size].to(dev))
            correct += int((out.argmax(1) == data.y[i : i + batch_size].to(dev)).sum())
    return correct / max(len(data), 1)


def short_finetune(
    model: nn.Module,
    data: Subset,
    *,
    steps: int,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """``steps`` SGD steps (cosine LR) on batches drawn from ``data`` with ``seed``; in place."""
    if steps <= 0:
        return model
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    dev = _device(model)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(step / steps * torch.pi)).item())
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(data.x[idx].to(dev)), data.y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model
