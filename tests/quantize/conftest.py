"""Fixtures shared by the quantization tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def _randomize_bn(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine terms away from the identity (seeded), so BN folding is tested."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture
def randomize_bn():
    """The function ``randomize_bn(model) -> model`` (in place)."""
    return _randomize_bn
