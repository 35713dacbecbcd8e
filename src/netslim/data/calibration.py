"""Calibration sets: N samples of a task's training data, reproducible by seed."""

from __future__ import annotations

import torch

from netslim.core.errors import bad_param


def take_samples(inputs: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` rows of ``inputs`` drawn without replacement (first dim is the sample dim)."""
    if not 0 < n <= len(inputs):
        raise bad_param("calibration set", "num_samples", f"an int in [1, {len(inputs)}]", n)
    idx = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))[:n]
    return inputs[idx.sort().values]
