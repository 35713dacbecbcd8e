"""What a step handler gets besides the model and its config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class StepContext:
    """Shared by the steps of one run: the task (data + metric), where to write, and notes.

    ``reference`` returns the model as it was before the recipe (a teacher for
    distillation, the reference for fidelity) without keeping a copy unless asked.
    """

    task: Any
    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    reference: Callable[[], nn.Module] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # per-step facts for the report
    info: dict[str, Any] = field(default_factory=dict)  # model/dataset description saved with artifacts

    def skip(self, name: str, reason: str) -> None:
        """Record a module a step left alone, and why (it goes into the report)."""
        self.skipped.append({"name": name, "reason": reason})
