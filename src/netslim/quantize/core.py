"""Affine quantization: integer ranges, quantization parameters, (fake-)quantize, dequantize.

Every granularity is handled through one 2-D view of the tensor, ``(R, N)``: R rows each
with its own scale / zero point.

* ``tensor``:  R = 1 (the whole tensor is one row);
* ``channel``: R = size of ``axis`` (the axis is moved to the front, the rest flattened);
* ``group``:   the tensor is viewed as ``(shape[0], -1)`` and each row is cut into groups of
  ``group_size`` consecutive values along the last dim, R = numel / group_size.

Codes follow ``x ~ (q - zero_point) * scale``. Symmetric schemes use the signed range
``[-2^(b-1), 2^(b-1) - 1]`` with zero point 0, asymmetric ones the unsigned ``[0, 2^b - 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from netslim.core.errors import NetslimError, bad_param

Granularity = Literal["tensor", "channel", "group"]
ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8)
GRANULARITIES = ("tensor", "channel", "group")


def check_bits(bits: int, owner: str = "quantizer") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise bad_param(owner, "bits", f"one of {', '.join(map(str, ALLOWED_BITS))}", bits)
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide code (signed when symmetric)."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass(frozen=True)
class QScheme:
    """How a tensor is quantized: width, symmetry and granularity (no data)."""

    bits: int = 8
    symmetric: bool = False
    granularity: Granularity = "tensor"
    axis: int = 0  # channel axis (granularity "channel")
    group_size: int | None = None  # granularity "group"

    def __post_init__(self) -> None:
        check_bits(self.bits, "QScheme")
        if self.granularity not in GRANULARITIES:
            raise bad_param("QScheme", "granularity", f"one of {', '.join(GRANULARITIES)}", self.granularity)
        if self.granularity == "group" and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise bad_param("QScheme", "group_size", "a positive int when granularity is 'group'", self.group_size)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]


def to_rows(x: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """The ``(R, N)`` view of ``x`` for ``scheme`` (see the module docstring)."""
    if x.numel() == 0:
        raise NetslimError("Cannot quantize an empty tensor (numel == 0).")
    if scheme.granularity == "tensor":
        return x.reshape(1, -1)
    if scheme.granularity == "channel":
        if not -x.dim() <= scheme.axis < x.dim():
            raise bad_param("QScheme", "axis", f"a valid dim of a {x.dim()}-D tensor", scheme.axis)
        return x.movedim(scheme.axis, 0).reshape(x.shape[scheme.axis], -1)
    cols = x.reshape(x.shape[0], -1).shape[1] if x.dim() > 1 else x.numel()
    g = scheme.group_size
    if cols % g:
        divisors = [d for d in (16, 32, 64, 128, 256) if cols % d == 0]
        raise bad_param(
            "QScheme",
            "group_size",
            f"a divisor of the row length {cols} (e.g. {', '.join(map(str, divisors)) or 'none of 16..256'})",
            g,
        )
    return x.reshape(-1, g)


def from_rows(rows: torch.Tensor, like: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """Inverse of :func:`to_rows` for a tensor shaped like ``like``."""
    if scheme.granularity == "channel":
        moved = list(like.movedim(scheme.axis, 0).shape)
        return rows.reshape(moved).movedim(0, scheme.axis)
    return rows.reshape(like.shape)


@dataclass
class QParams:
    """Per-row scale (float32) and zero point (float32 holding integers, or any float for HQQ)."""

    scale: torch.Tensor  # (R,)
    zero_point: torch.Tensor  # (R,)
    scheme: QScheme


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    if x.numel() == 0:
        raise NetslimError(f"Cannot quantize an empty {what} (numel == 0).")
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise NetslimError(f"Cannot quantize a {what} with non-finite values ({n_nan} NaN, {n_inf} Inf).")


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, scheme: QScheme) -> QParams:
    """Scale and zero point mapping ``[lo, hi]`` (per row) onto the integer range.

    The range is widened to include 0 so that zero (padding, ReLU, pruned weights) is
    exact. Rows whose range is {0} (e.g. a pruned channel) get scale 1: any scale codes
    them exactly, and a tiny scale would blow up other values reusing the parameters.
    """
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise NetslimError("Cannot derive quantization parameters from a non-finite range.")
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        amax = torch.maximum(-lo, hi)
        # why (qmax - qmin) / 2: the signed range is [-2^(b-1), 2^(b-1)-1]; as torch does,
        # use its half-width so -amax and +amax both land (almost) inside it.
        scale = amax / ((qmax - qmin) / 2)
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero = None
    degenerate = scale <= torch.finfo(torch.float32).tiny
    scale = torch.where(degenerate, torch.ones_like(scale), scale)
    if zero is None:
        zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return QParams(scale, zero, scheme)


def _bcast(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return p.to(rows.device).reshape(-1, 1)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integer codes of ``x`` (int32, same shape as ``x``)."""
    rows = to_rows(x, qp.scheme).float()  # (R, N)
    # why x * (1/scale) and not x / scale: torch's fake_quantize kernels multiply by the
    # inverse, and ties must round the same way for the two to agree bit for bit.
    inv = 1.0 / _bcast(qp.scale, rows)
    q = torch.clamp(torch.round(rows * inv) + _bcast(qp.zero_point, rows), qp.scheme.qmin, qp.scheme.qmax)
    return from_rows(q, x, qp.scheme).to(torch.int32)


def dequantize(q: torch.Tensor, qp: QParams, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    rows = to_rows(q, qp.scheme).float()
    x = (rows - _bcast(qp.zero_point, rows)) * _bcast(qp.scale, rows)
    return from_rows(x, q, qp.scheme).to(dtype)


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``dequantize(quantize(x))`` in one pass, same dtype as ``x`` (no gradient rule)."""
    rows = to_rows(x, qp.scheme).float()
    inv = 1.0 / _bcast(qp.scale, rows)
    z = _bcast(qp.zero_point, rows)
    q = torch.clamp(torch.round(rows * inv) + z, qp.scheme.qmin, qp.scheme.qmax)
    return from_rows((q - z) * _bcast(qp.scale, rows), x, qp.scheme).to(x.dtype)


def quant_error(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Per-row mean squared error of fake quantization, shape (R,)."""
    rows = to_rows(x, qp.scheme).float()
    err = to_rows(fake_quantize(x, qp), qp.scheme).float() - rows
    return err.pow(2).mean(dim=1)


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``y`` against the reference ``x`` (dB)."""
    noise = (x.float() - y.float()).pow(2).mean()
    signal = x.float().pow(2).mean()
    return float(10 * torch.log10(signal / noise.clamp_min(1e-30)))
