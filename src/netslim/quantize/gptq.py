"""GPTQ (Frantar et al. 2023): Hessian-aware rounding of LLM weights, block by block.

Each Linear of a decoder block is rounded column by column to a 2/3/4/8-bit group-wise
grid; the rounding error of a column is pushed onto the columns not yet rounded through
the inverse Hessian of the layer objective (:func:`netslim.core.brain_surgeon.obs_solve`). The
result is written in the one packed weight-only format (:class:`QuantizedLinear`, the
same as RTN / HQQ): codes, fp16 scale and zero per group of ``group_size`` consecutive
inputs. 3-bit codes are stored in 4-bit slots (the packing holds 2/4/8 bits per code).

* ``act_order``: columns with the largest Hessian diagonal go first (they get the most
  freedom to absorb error). Group parameters are then computed up front from the
  original weights ("static groups"), so groups stay consecutive columns as the format
  requires; without it, each group's parameters come from the *updated* weights when
  the loop reaches it (the reference behaviour).
* ``scale_rounding``: the fp16 scale of the packed format is rounded to the ``"nearest"``
  fp16 (default) or ``"up"`` (the RTN default: no group clips). GPTQ's codes are clamped
  and its error feedback absorbs the clip of an extreme code (< 0.05 % of the range), so
  nearest gives the lower layer error (block 0 of SmolLM2: 6.5752 vs 6.5807 rounded up).
* ``clip_search``: each group's range is shrunk by the factor (1.0 ... 0.8) with the
  smallest |w - q|^2.4 (GPTQ's "mse" option).
* ``sparsity`` / ``n``, ``m``: SparseGPT pruning and GPTQ rounding in one pass (N:M turns
  ``act_order`` off: its groups are consecutive original columns).

```yaml
- method: gptq
  bits: 4
  group_size: 64
  act_order: true
```
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from netslim.api import method_function
from netslim.core.brain_surgeon import inverse_cholesky, obs_solve
from netslim.core.config import register
from netslim.core.errors import NetslimError, bad_param
from netslim.core.layerwise import (
    calibration_for,
    collect_hessians,
    compress_blocks_for,
    is_conv1d,
    planned_linears,
    weight_2d,
)
from netslim.core.masks import get_mask
from netslim.core.patterns import NMFields
from netslim.core.selectors import Selector
from netslim.core.stream_io import register_streaming
from netslim.core.surgery import replace_module

from .packing import PARAM_DTYPE, check_group, codes_for, minmax_params
from .weight_only import QuantizedLinear

log = logging.getLogger(__name__)

CLIP_GRID = torch.linspace(1.0, 0.8, 11).tolist()
CLIP_NORM = 2.4  # GPTQ's error norm for the range search: between mean-square and max error


class GPTQConfig(NMFields):
    """GPTQ weight-only quantization of an LLM's decoder-block Linears into packed codes."""

    method = "gptq"
    freezes = True  # packed buffers are not trainable
    bits: Literal[2, 3, 4, 8] = 4
    group_size: int | None = Field(128, description="divisor of in_features (32, 64, 128) or None (per channel)")
    symmetric: bool = False
    act_order: bool = True
    clip_search: bool = False
    scale_rounding: Literal["nearest", "up"] = "nearest"
    damp: float = Field(0.01, ge=0, description="relative Hessian damping")
    blocksize: int = Field(128, ge=1, description="columns per lazy-update block")
    sparsity: float = Field(0.0, ge=0, lt=1, description="joint SparseGPT pruning in the same pass")
    n: int | None = Field(None, ge=1)
    m: int | None = Field(None, ge=2)
    num_samples: int = Field(128, ge=1)
    seq_len: int = Field(512, ge=2)
    batch_size: int = Field(4, ge=1)
    sequential: bool = True
    offload_dir: str | None = None
    offload_blocks: bool = Field(False, description="also park every block but the current one in offload_dir")
    device: str | None = None
    include: Selector = None
    exclude: Selector = None

    @classmethod
    def example(cls) -> GPTQConfig:
        return cls(group_size=None, num_samples=16)  # per channel: fits every zoo model's Linear

    @field_validator("group_size")
    @classmethod
    def _pow2(cls, v):
        if v is not None and (v < 8 or v & (v - 1)):
            raise ValueError("must be a power of two >= 8 (32, 64, 128 usual) or None for per channel")
        return v

    def preflight(self, model, task) -> list[dict] | None:
        """Before a recipe runs: the model is a supported decoder stack (Hugging Face models), some
        selected layer fits ``group_size`` (and N:M); returns the layers that will be skipped."""
        if model is None:
            return None
        tokens = getattr(task, "calibration_tokens", None) is not None
        layers = planned_linears(model, self.include, self.exclude, token_inputs=tokens)
        if not layers:
            raise NetslimError(
                f"No Linear layer of {type(model).__name__} is selected (gptq takes those of "
                "the decoder blocks, then include / exclude); nothing to quantize."
            )
        skipped = [{"name": n, "reason": why} for n, m in layers if (why := group_misfit(m, self.group_size))]
        if len(skipped) == len(layers):
            widths = sorted({weight_2d(m).shape[1] for _, m in layers})
            hint = (
                ""
                if tokens
                else (
                    " (gptq is for the Linear layers of an LLM's decoder blocks; for a CNN, "
                    "ptq_int8 or weight_only fit)"
                )
            )
            raise NetslimError(
                f"The 'group_size' parameter of gptq fits no selected layer: group_size "
                f"{self.group_size} divides none of the input widths {widths[:8]} of the "
                f"{len(layers)} layers; use {_common_group(widths)}{hint}."
            )
        if self.m is not None:
            bad = [n for n, m in layers if not group_misfit(m, self.group_size) and weight_2d(m).shape[1] % self.m]
            if bad:
                raise bad_param(
                    "gptq",
                    "m",
                    f"a divisor of every selected layer's input width ({bad[0]} has "
                    f"{weight_2d(model.get_submodule(bad[0])).shape[1]})",
                    self.m,
                )
        return skipped


def group_misfit(module: nn.Module, group_size: int | None) -> str | None:
    """Why gptq leaves ``module`` in float (its input width is no multiple of ``group_size``), or None."""
    cols = weight_2d(module).shape[1]
    if group_size is not None and cols % group_size:
        return f"group_size {group_size} does not divide its {cols} input features"
    return None


def _common_group(widths: list[int]) -> str:
    """The largest usable group size dividing every width, or per channel (None)."""
    g = math.gcd(*widths) if widths else 0
    g &= -g  # its largest power-of-two divisor
    return f"group_size {g} (divides every width)" if g >= 8 else "group_size null (per channel)"


# ------------------------------------------------------------------ group parameters
def group_params(
    groups: torch.Tensor, bits: int, symmetric: bool, clip_search: bool, nearest_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, g) weights -> fp16-exact (scale, zero) (G,), min-max or with the clipping search."""
    best = minmax_params(groups, bits, symmetric, nearest_scale=nearest_scale)
    if not clip_search:
        return best
    best_err = _grid_err(groups, *best, bits)
    for p in CLIP_GRID[1:]:
        s, z = minmax_params(groups * p, bits, symmetric, nearest_scale=nearest_scale)  # range [p*lo, p*hi]
        e = _grid_err(groups, s, z, bits)
        better = e < best_err
        best = (torch.where(better, s, best[0]), torch.where(better, z, best[1]))
        best_err = torch.where(better, e, best_err)
    return best


def _grid_err(groups, scale, zero, bits):
    q = codes_for(groups, scale, zero, bits)
    return ((q - zero[:, None]) * scale[:, None] - groups).abs().pow(CLIP_NORM).sum(1)


class _Rounder:
    """The quantizer callback of :func:`obs_solve`; records codes and group parameters."""

    def __init__(
        self,
        w: torch.Tensor,
        bits: int,
        g: int,
        symmetric: bool,
        clip: bool,
        perm: torch.Tensor | None,
        static: bool,
        nearest: bool,
    ):
        rows, cols = w.shape
        self.bits, self.g, self.symmetric, self.clip, self.nearest = bits, g, symmetric, clip, nearest
        self.perm = perm.tolist() if perm is not None else None
        self.codes = torch.zeros(rows, cols, dtype=torch.uint8, device=w.device)
        self.scale = torch.ones(rows, cols // g, device=w.device)
        self.zero = torch.zeros(rows, cols // g, device=w.device)
        self.static = static
        if static:  # every group's parameters from the original weights, up front
            s, z = group_params(w.float().reshape(-1, g), bits, symmetric, clip, nearest)  # (R * C/g,)
            self.scale, self.zero = s.view(rows, -1), z.view(rows, -1)

    def __call__(self, j: int, col: torch.Tensor, w1: torch.Tensor, i: int) -> torch.Tensor:
        c = self.perm[j] if self.perm is not None else j  # original column index
        grp = c // self.g
        if not self.static and c % self.g == 0:  # entering a group: params of updated weights
            s, z = group_params(w1[:, i : i + self.g], self.bits, self.symmetric, self.clip, self.nearest)
            self.scale[:, grp], self.zero[:, grp] = s, z
        s, z = self.scale[:, grp], self.zero[:, grp]
        q = codes_for(col[:, None], s, z, self.bits)[:, 0]  # (R,)
        self.codes[:, c] = q.to(torch.uint8)
        return (q - z) * s


def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    act_order: bool = True,
    clip_search: bool = False,
    damp: float = 0.01,
    blocksize: int = 128,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    keep: torch.Tensor | None = None,
    scale_rounding: str = "nearest",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on one layer: ``w`` (R, C), ``h`` (C, C) -> (codes uint8 (R, C), scale, zero fp16 (R, C/g), Ŵ (R, C)).

    ``keep`` (R, C): an existing sparsity mask whose zeros must stay zero. ``scale_rounding``:
    ``"nearest"`` or ``"up"`` (fp16 rounding of each group's scale, see the module doc).
    """
    if scale_rounding not in ("nearest", "up"):
        raise bad_param("gptq", "scale_rounding", "'nearest' or 'up'", scale_rounding)
    rows, cols = w.shape
    g = check_group(cols, group_size, "gptq")
    w = w.detach().float().clone()
    w[:, torch.diag(h) == 0] = 0  # dead inputs: any value is exact on this data; 0 keeps the grid small
    act_order = act_order and nm is None  # N:M groups are consecutive *original* columns: no permutation
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else None
    static = act_order or g > blocksize
    bs = blocksize if static else max(g, blocksize // g * g)  # a dynamic group must sit inside one block
    rounder = _Rounder(w, bits, g, symmetric, clip_search, perm, static, scale_rounding == "nearest")
    hp = h if perm is None else h[perm][:, perm]
    wp = w if perm is None else w[:, perm]
    fixed = None if keep is None else ~(keep if perm is None else keep[:, perm])
    u, _dead, _lam = inverse_cholesky(hp, wp, damp)
    w_hat, _keep, _loss = obs_solve(wp, u, sparsity=sparsity, nm=nm, quantizer=rounder, blocksize=bs, fixed_prune=fixed)
    if perm is not None:
        w_hat = w_hat[:, torch.argsort(perm)]
    return rounder.codes, rounder.scale.to(PARAM_DTYPE), rounder.zero.to(PARAM_DTYPE), w_hat


def gptq_options(cfg: GPTQConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`gptq_quantize` a GPTQ config sets, but for the pruning
    ones (``sparsity``, ``nm``, ``keep``)."""
    return {
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "symmetric": cfg.symmetric,
        "act_order": cfg.act_order,
        "clip_search": cfg.clip_search,
        "damp": cfg.damp,
        "blocksize": cfg.blocksize,
        "scale_rounding": cfg.scale_rounding,
    }


def earlier_zeros(mod: nn.Module, w: torch.Tensor) -> torch.Tensor | None:
    """Keep-mask (out, in) of an earlier pruning step - its Mask, or the zeros it made permanent
    in ``w`` (the layer's (out, in) weight) - or None."""
    keep = get_mask(mod)
    if keep is not None:
        return keep.T if is_conv1d(mod) else keep  # transformers' Conv1D stores (in, out)
    return (w != 0) if bool((w == 0).any()) else None


def packed_layer(
    mod: nn.Module, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, bits: int, group_size: int | None
) -> QuantizedLinear:
    """The QuantizedLinear that replaces ``mod`` with these codes (out, in): ``mod``'s bias, on its device."""
    bias = None if getattr(mod, "bias", None) is None else mod.bias.detach()
    new = QuantizedLinear.from_codes(codes, scale, zero, bits=bits, group_size=group_size, bias=bias)
    return new.to(mod.weight.device)


def _gptq(model: nn.Module, calib: Any, cfg: GPTQConfig, ctx: Any, stream: Any = None) -> None:
    """Quantize ``model`` in place with GPTQ on calibration inputs (token ids (N, L) for an LLM);
    skipped layers and the notes go to ``ctx``. ``stream``: the model's tensors are on disk
    (:class:`netslim.core.stream_io.BlockStream`)."""
    storage_bits = 4 if cfg.bits == 3 else cfg.bits
    done: list[str] = []

    def fn(root, prefix, layers, feed):
        fits = []
        for name, mod in layers:
            reason = group_misfit(mod, cfg.group_size)
            if reason:
                log.info("gptq: skipping %s.%s: %s", prefix, name, reason)
                ctx.skip(f"{prefix}.{name}" if prefix else name, reason)
                continue
            fits.append((name, mod))
        hs = collect_hessians(fits, feed)
        for name, mod in fits:
            w = weight_2d(mod)
            keep = earlier_zeros(mod, w)
            codes, scale, zero, _w = gptq_quantize(
                w, hs[name], sparsity=cfg.sparsity, nm=cfg.nm, keep=keep, **gptq_options(cfg)
            )
            replace_module(
                root, name, packed_layer(mod, codes, scale, zero, bits=storage_bits, group_size=cfg.group_size)
            )
            done.append(f"{prefix}.{name}" if prefix else name)

    compress_blocks_for(model, calib, fn, cfg=cfg, desc="gptq", stream=stream)
    if not done:
        raise NetslimError(f"gptq quantized no layer: none of the selected layers fits group_size={cfg.group_size}.")
    ctx.notes[cfg.method] = {
        "layers": len(done),
        "bits": cfg.bits,
        "storage_bits": storage_bits,
        "group_size": cfg.group_size,
        "act_order": cfg.act_order,
    }


@register(GPTQConfig)
def run_gptq(model: nn.Module, cfg: GPTQConfig, ctx) -> nn.Module:
    _gptq(model, calibration_for(ctx, cfg.method, cfg.num_samples, cfg.seq_len), cfg, ctx)
    return model


@register_streaming(GPTQConfig, solver="hessian")
def _stream_gptq(sm, cfg: GPTQConfig, ctx, stream):
    _gptq(sm.model, calibration_for(ctx, cfg.method, cfg.num_samples, cfg.seq_len), cfg, ctx, stream=stream)


gptq = method_function(GPTQConfig, "gptq")
