"""The geometry of a convolution, for modules that run as a Conv2d but store their weight
another way (a shared codebook, CSR): its attributes, its ``forward`` and its constructor
arguments as JSON (what ``register_module``'s ``to_kwargs`` writes)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


def conv_kwargs(m: Any) -> dict[str, Any]:
    """The constructor arguments of ``m``'s convolution geometry (``nn.Conv1d`` / ``nn.Conv2d``
    or a :class:`Conv2dGeometry`): channels, kernel, stride, padding, dilation, groups, bias.
    (``m`` is duck-typed: nn.Module types its attributes as Tensor | Module.)"""
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
    }


class Conv2dGeometry(nn.Module):
    """Mixin of a Conv2d-shaped module whose subclass provides ``weight`` (out, in/groups, kh, kw)
    and ``bias``: nn.Conv2d's geometry attributes and its forward."""

    in_channels: int
    out_channels: int
    groups: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: str | tuple[int, int]
    weight: torch.Tensor
    bias: nn.Parameter | None

    def _init_geometry(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
    ) -> None:
        """Set the geometry as nn.Conv2d does (ints become pairs; a padding string stays one)."""
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W')
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
