"""Layers whose weights are indices into a small trainable codebook of shared values.

``weight = [0, c_1, ..., c_k][weight_index]``: index 0 is a pruned weight (always exactly
zero, it has no centroid to train), 1..k pick a centroid. Because the weight is a gather
from the codebook, autograd sums the gradients of all weights of a cluster into their
centroid, which is exactly Deep Compression's centroid fine-tuning; pruned weights get
no gradient, and every weight stays on a centroid by construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.conv import Conv2dGeometry, conv_kwargs
from netslim.core.serialize import register_module
from netslim.measure.counts import conv_macs, linear_macs, register_macs


def index_dtype(num_clusters: int) -> torch.dtype:
    """Smallest integer dtype holding 0..num_clusters (uint8 up to 255 clusters)."""
    return torch.uint8 if num_clusters < 256 else torch.int16


class SharedWeight(nn.Module):
    """Mixin state: ``codebook`` (k,) parameter, ``weight_index`` buffer of the weight's shape."""

    num_clusters: int

    def _init_shared(self, shape: tuple[int, ...], num_clusters: int) -> None:
        if not 1 <= num_clusters <= 4096:
            raise ValueError(f"num_clusters must be in [1, 4096]; got {num_clusters}")
        self.num_clusters = num_clusters
        self.codebook = nn.Parameter(torch.zeros(num_clusters))
        self.register_buffer("weight_index", torch.zeros(shape, dtype=index_dtype(num_clusters)))

    def _gather(self) -> torch.Tensor:
        table = torch.cat([self.codebook.new_zeros(1), self.codebook])  # (k+1,) slot 0 = pruned
        flat = self.weight_index.reshape(-1).to(torch.int32)  # (n,) int32: index_select's
        return table.index_select(0, flat).view(self.weight_index.shape)  # backward is a fast index_add

    @property
    def weight(self) -> torch.Tensor:
        """``codebook`` gathered to the weight's shape.

        Without autograd (inference) the dense result is cached until the codebook or the
        indices change, so a shared layer runs as fast as a dense one.
        """
        if torch.is_grad_enabled() and self.codebook.requires_grad:
            return self._gather()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (self.codebook, self.weight_index))
        cache = self.__dict__.get("_dense_cache")
        if cache is None or cache[0] != key:
            cache = (key, self._gather().detach())
            self.__dict__["_dense_cache"] = cache
        return cache[1]

    @property
    def weight_bits(self) -> float:
        """Bits of a fixed-width cluster index (what ``layer_table`` reports)."""
        return float(max(1, math.ceil(math.log2(self.num_clusters))))

    @torch.no_grad()
    def assign(self, codebook: torch.Tensor, index: torch.Tensor) -> None:
        """Set the centroids (k,) and the per-weight indices (0 = pruned, 1..k)."""
        self.codebook.copy_(codebook.to(self.codebook))
        self.weight_index.copy_(index.to(self.weight_index))


class SharedLinear(SharedWeight):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, num_clusters: int = 32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_shared((out_features, in_features), num_clusters)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, num_clusters={self.num_clusters}"
        )


class SharedConv2d(SharedWeight, Conv2dGeometry):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        num_clusters: int = 256,
    ):
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self._init_shared((out_channels, in_channels // groups, *self.kernel_size), num_clusters)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, num_clusters={self.num_clusters}"
        )


def _linear_kwargs(m: SharedLinear) -> dict:
    return {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
        "num_clusters": m.num_clusters,
    }


def _conv_kwargs(m: SharedConv2d) -> dict:
    return conv_kwargs(m) | {"num_clusters": m.num_clusters}


register_module(SharedLinear, _linear_kwargs)
register_module(SharedConv2d, _conv_kwargs)
register_macs(SharedLinear, linear_macs)
register_macs(SharedConv2d, conv_macs)
