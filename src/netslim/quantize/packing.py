"""Group-wise integer weights: packing into bytes, group parameters, RTN and HQQ rounding.

The packed weight-only format (shared by RTN, HQQ and GPTQ — "one format, one Linear"):

* ``codes``: unsigned integers in ``[0, 2^bits - 1]``, shape ``(rows, cols)``, packed
  ``8 // bits`` per byte along the last dim, low bits first (:func:`pack`);

:func:`pack` is one little-endian bit stream per row: code ``j`` occupies stream bits
``[j*bits, (j+1)*bits)``, byte ``k`` holds stream bits ``[8k, 8k+8)``. For 2, 4 and 8 bits
that is exactly "``8 // bits`` codes per byte, low bits first"; 3, 5, 6 and 7 bits (used by
the static int8 modules for mixed-precision widths) straddle bytes the same way. The
weight-only Linear keeps to :data:`PACK_BITS`.
* ``scale``, ``zero``: fp16, shape ``(rows, cols // group_size)``;
* ``w = (code - zero) * scale`` for each group of ``group_size`` consecutive columns.

Symmetric schemes are the special case ``zero = 2^(bits-1)``; HQQ's zero is any float.
Scales and zeros are rounded to fp16 *before* codes are chosen, so the codes are optimal
for the stored parameters (GPTQ must do the same: use :func:`round_params`).
"""

from __future__ import annotations

import torch

from netslim.core.errors import NetslimError, bad_param

PACK_BITS = (2, 4, 8)  # widths that pack a whole number of codes into one byte
PARAM_DTYPE = torch.float16


def check_pack_bits(bits: int, owner: str = "weight-only quantization") -> int:
    if isinstance(bits, bool) or bits not in PACK_BITS:
        raise bad_param(owner, "bits", f"one of {', '.join(map(str, PACK_BITS))}", bits)
    return bits


def check_group(cols: int, group_size: int | None, owner: str = "weight-only quantization") -> int:
    """The effective group size (``None``: one group per row, i.e. per channel)."""
    if group_size is None:
        return cols
    if not isinstance(group_size, int) or group_size < 1 or cols % group_size:
        divisors = [g for g in (16, 32, 64, 128, 256) if cols % g == 0]
        allowed = ", ".join(map(str, divisors)) if divisors else "none of 16/32/64/128/256"
        raise bad_param(
            owner, "group_size", f"a divisor of in_features={cols} ({allowed}) or None (per channel)", group_size
        )
    return group_size


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``(R, C)`` codes in ``[0, 2^bits)`` -> ``(R, C * bits / 8)`` uint8 (any width 2..8)."""
    check_stream_bits(bits)
    if (codes.shape[-1] * bits) % 8:
        raise NetslimError(
            f"Cannot pack {codes.shape[-1]} {bits}-bit codes into whole bytes: columns x bits must be a multiple of 8."
        )
    if 8 % bits:
        return _pack_stream(codes, bits)
    per = 8 // bits
    c = codes.to(torch.uint8).reshape(*codes.shape[:-1], -1, per)  # (R, C/per, per)
    out = torch.zeros(c.shape[:-1], dtype=torch.uint8, device=codes.device)
    for i in range(per):
        out |= c[..., i] << (bits * i)
    return out


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``(R, B)`` uint8 -> ``(R, B * 8 / bits)`` uint8 codes."""
    if 8 % bits:
        return _unpack_stream(packed, bits)
    per = 8 // bits
    if per == 1:
        return packed
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per)]  # per x (R, B)
    return torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], -1)


STREAM_BITS = (2, 3, 4, 5, 6, 7, 8)


def check_stream_bits(bits: int, owner: str = "pack") -> int:
    if isinstance(bits, bool) or bits not in STREAM_BITS:
        raise bad_param(owner, "bits", f"one of {', '.join(map(str, STREAM_BITS))}", bits)
    return bits


def _pack_stream(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Widths that do not divide 8: expand to single bits, regroup by 8 (low bit first)."""
    shifts = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    stream = (codes.to(torch.uint8).unsqueeze(-1) >> shifts) & 1  # (R, C, bits)
    octets = stream.reshape(*codes.shape[:-1], -1, 8)  # (R, C*bits/8, 8)
    weights = 1 << torch.arange(8, device=codes.device, dtype=torch.int32)
    return (octets.to(torch.int32) * weights).sum(-1).to(torch.uint8)


def _unpack_stream(packed: torch.Tensor, bits: int) -> torch.Tensor:
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    stream = (packed.unsqueeze(-1) >> shifts) & 1  # (R, B, 8)
    groups = stream.reshape(*packed.shape[:-1], -1, bits)  # (R, B*8/bits, bits)
    weights = 1 << torch.arange(bits, device=packed.device, dtype=torch.int32)
    return (groups.to(torch.int32) * weights).sum(-1).to(torch.uint8)


def round_params(
    scale: torch.Tensor, zero: torch.Tensor, *, nearest_scale: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero as they will be stored (fp16), back in float32. Scale stays > 0.

    By default the scale is rounded *up* to the next fp16, so no group's extremes clip.
    ``nearest_scale=True`` rounds it to the nearest fp16 instead (smaller average error; a
    group's extreme code may then clip by < 0.05 % of its range — for callers whose codes are
    clamped anyway, e.g. GPTQ, whose error feedback absorbs it).
    """
    tiny = torch.finfo(PARAM_DTYPE).tiny
    s16 = scale.float().clamp_min(tiny).to(PARAM_DTYPE)
    if not nearest_scale:  # round up, never down: a smaller stored scale would clip the group's extremes
        s16 = torch.where(s16.float() < scale, torch.nextafter(s16, torch.full_like(s16, float("inf"))), s16)
    return s16.float(), zero.to(PARAM_DTYPE).float()


def minmax_params(
    groups: torch.Tensor, bits: int, symmetric: bool, *, nearest_scale: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest parameters of each group: ``groups`` (G, g) -> scale, zero (G,).

    ``nearest_scale``: see :func:`round_params` (default: the scale is rounded up to fp16).
    """
    qmax = 2**bits - 1
    lo = groups.amin(dim=1).clamp_max(0)
    hi = groups.amax(dim=1).clamp_min(0)
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = amax / (qmax / 2)  # half-width of the range, as in core.qparams_from_range
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        scale = (hi - lo) / qmax
        zero = None
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero group: any scale is exact
    if zero is None:
        zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return round_params(scale, zero, nearest_scale=nearest_scale)


def codes_for(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest codes for given per-group parameters: (G, g) -> (G, g) float codes."""
    return torch.clamp(torch.round(groups / scale[:, None] + zero[:, None]), 0, 2**bits - 1)


def hqq_params(
    groups: torch.Tensor,
    bits: int,
    symmetric: bool,
    iters: int = 20,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HQQ (Badri & Shaji 2023): half-quadratic splitting for a sparsity-promoting l_p error.

    Minimises ``|W - dequant(quant(W))|_p^p`` (p < 1: a few large errors are cheaper than many
    small ones) by alternating (1) a generalised soft-threshold on the error ``W_e`` and
    (2) a closed-form update of the zero point (asymmetric; HQQ's choice, the scale fixed
    at min-max) or of the scale (symmetric: the zero is fixed by definition). ``beta``
    grows by ``kappa`` each step. Returns fp16-rounded (scale, zero) of the best iterate.
    """
    w = groups.float()  # (G, g)
    scale, zero = minmax_params(w, bits, symmetric)
    best = (scale, zero)
    best_err = _group_abs_err(w, scale, zero, bits)  # (G,)
    for _ in range(iters):
        q = codes_for(w, scale, zero, bits)
        err = w - (q - zero[:, None]) * scale[:, None]
        w_e = _shrink_lp(err, beta, lp_norm)  # the error the l_p term tolerates
        target = w - w_e
        if symmetric:  # least squares scale for fixed codes: <target, q-z> / <q-z, q-z>
            d = q - zero[:, None]
            scale = ((target * d).sum(1) / (d * d).sum(1).clamp_min(1e-12)).where((d * d).sum(1) > 0, scale)
        else:  # zero = mean(q - target / scale)
            zero = (q - target / scale[:, None]).mean(dim=1)
        scale, zero = round_params(scale.abs(), zero)
        e = _group_abs_err(w, scale, zero, bits)
        better = e < best_err
        best = (torch.where(better, scale, best[0]), torch.where(better, zero, best[1]))
        best_err = torch.where(better, e, best_err)
        beta *= kappa
    return best


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Proximal operator of the l_p (p <= 1) penalty: generalised soft thresholding."""
    if p == 1:
        return torch.sign(x) * torch.relu(x.abs() - 1.0 / beta)
    return torch.sign(x) * torch.relu(x.abs() - (1.0 / beta) * (x.abs() + 1e-8).pow(p - 1))


def _group_abs_err(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    q = codes_for(w, scale, zero, bits)
    return (w - (q - zero[:, None]) * scale[:, None]).abs().mean(dim=1)


def quantize_groups(
    weight: torch.Tensor,
    bits: int,
    group_size: int | None,
    *,
    symmetric: bool = False,
    method: str = "rtn",
    iters: int = 20,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight`` (R, C) -> (codes uint8 (R, C), scale fp16 (R, C/g), zero fp16 (R, C/g))."""
    check_pack_bits(bits)
    rows, cols = weight.shape
    g = check_group(cols, group_size)
    if not torch.isfinite(weight).all():
        raise NetslimError("Cannot quantize a weight with NaN or Inf values.")
    groups = weight.detach().float().reshape(-1, g)  # (R * C/g, g)
    if method == "rtn":
        scale, zero = minmax_params(groups, bits, symmetric)
    elif method == "hqq":
        scale, zero = hqq_params(groups, bits, symmetric, iters=iters)
    else:
        raise bad_param("quantize_groups", "method", "one of rtn, hqq", method)
    codes = codes_for(groups, scale, zero, bits).to(torch.uint8).reshape(rows, cols)
    return codes, scale.reshape(rows, -1).to(PARAM_DTYPE), zero.reshape(rows, -1).to(PARAM_DTYPE)


def dequantize_groups(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(R, C) codes + (R, C/g) params -> (R, C) weight in ``dtype``."""
    rows, cols = codes.shape
    g = cols // scale.shape[1]
    # why float32 math: (code - zero) * scale in bf16/fp16 would add a second rounding.
    work = torch.float64 if dtype == torch.float64 else torch.float32
    c = codes.to(work).reshape(rows, -1, g)  # (R, C/g, g)
    w = (c - zero.to(work).unsqueeze(-1)) * scale.to(work).unsqueeze(-1)
    return w.reshape(rows, cols).to(dtype)
