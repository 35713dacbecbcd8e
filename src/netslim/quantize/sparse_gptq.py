"""SparseGPT and GPTQ in one step, in a chosen order: the LLM half of the prune/quantize order study.

Per Linear of each decoder block, with one Hessian ``H = 2XᵀX/n`` from the same calibration
inputs (so the orders differ only in the order of the two decisions):

* ``prune_first`` (SparseGPT -> GPTQ): SparseGPT's OBS pruning (:func:`netslim.core.brain_surgeon.obs_solve`
  with ``sparsity`` or N:M), then GPTQ rounds the survivors with the pruned positions held at
  zero (their code is the group's zero point);
* ``quantize_first`` (GPTQ -> SparseGPT): GPTQ rounds the dense weight, then SparseGPT prunes
  the quantized layer - the OBS update of the survivors is rounded back onto the grid GPTQ
  chose (fixed scales and zero points), so the result is still that layer's codes;
* ``joint``: one OBS pass that prunes and rounds each column (SparseGPT's 50 % + 4-bit
  result: the quantization-aware OBS update).

The result is the packed weight-only format (:class:`~netslim.quantize.weight_only.QuantizedLinear`),
pruned positions at the zero-point code; ``netslim.save`` stores it sparse when smaller
(:mod:`netslim.quantize.sparse_lowbit`). Notes report each order's layer reconstruction
error ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` relative to ``tr(W H Wᵀ)`` - the quantity both methods minimise.
Two separate steps ``gptq`` then ``sparsegpt`` are refused by the recipe checks (nothing
prunes a frozen model); ``order: quantize_first`` is that order.

```yaml
- method: sparsegpt_gptq
  order: prune_first
  sparsity: 0.5
  bits: 4
  group_size: 64
```
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from netslim.api import method_function
from netslim.core.brain_surgeon import inverse_cholesky, layer_error, obs_solve
from netslim.core.config import register
from netslim.core.errors import NetslimError
from netslim.core.layerwise import calibration_for, collect_hessians, compress_blocks_for, weight_2d
from netslim.core.patterns import declare_nm
from netslim.core.surgery import replace_module

from .gptq import GPTQConfig, earlier_zeros, gptq_options, gptq_quantize, group_misfit, packed_layer
from .packing import PARAM_DTYPE, check_group, codes_for

ORDERS = ("prune_first", "quantize_first", "joint")


class SparseGPTQConfig(GPTQConfig):
    """SparseGPT pruning and GPTQ rounding of an LLM's decoder-block Linears, in the given ``order``."""

    method = "sparsegpt_gptq"
    order: Literal["prune_first", "quantize_first", "joint"] = Field(
        "prune_first",
        description="prune_first: SparseGPT -> GPTQ; quantize_first: GPTQ -> SparseGPT on its grid; "
        "joint: one quantization-aware OBS pass",
    )
    sparsity: float = Field(0.5, ge=0, lt=1, description="fraction pruned per layer (unstructured); ignored with n/m")

    @classmethod
    def example(cls) -> SparseGPTQConfig:
        return cls(group_size=None, num_samples=16)

    @model_validator(mode="after")
    def _prunes(self):
        if self.sparsity <= 0 and self.n is None:
            raise ValueError("'sparsity' must be > 0 (or give n and m): without pruning this is the 'gptq' step")
        return self


class _FixedGrid:
    """obs_solve's quantizer for a grid already chosen: each column rounded with its group's
    (scale, zero); records the codes (a pruned entry arrives as 0.0 and gets the zero point)."""

    def __init__(self, scale: torch.Tensor, zero: torch.Tensor, bits: int, g: int):
        self.scale, self.zero, self.bits, self.g = scale.float(), zero.float(), bits, g
        rows, groups = scale.shape
        self.codes = torch.zeros(rows, groups * g, dtype=torch.uint8, device=scale.device)

    def __call__(self, j: int, col: torch.Tensor, w1: torch.Tensor, i: int) -> torch.Tensor:
        s, z = self.scale[:, j // self.g], self.zero[:, j // self.g]
        q = codes_for(col[:, None], s, z, self.bits)[:, 0]  # (R,)
        self.codes[:, j] = q.to(torch.uint8)
        return (q - z) * s


def sparse_gptq_layer(
    w: torch.Tensor, h: torch.Tensor, cfg: SparseGPTQConfig, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """One layer ``w`` (R, C), ``h`` (C, C) -> (codes uint8, scale fp16, zero fp16, Ŵ) in ``cfg.order``.

    ``keep``: zeros of an earlier pruning step that must stay zero (combined with this step's pruning)."""
    opts = gptq_options(cfg)
    nm, fixed = cfg.nm, None if keep is None else ~keep
    if cfg.order == "joint":
        return gptq_quantize(w, h, sparsity=cfg.sparsity, nm=nm, keep=keep, **opts)
    if cfg.order == "prune_first":
        wp = w.detach().float().clone()
        u, _dead, _lam = inverse_cholesky(h, wp, cfg.damp)
        w_s, kept, _ = obs_solve(
            wp, u, sparsity=0.0 if nm else cfg.sparsity, nm=nm, blocksize=cfg.blocksize, fixed_prune=fixed
        )
        return gptq_quantize(w_s, h, keep=kept, **opts)
    codes, scale, zero, w_q = gptq_quantize(w, h, keep=keep, **opts)  # quantize_first
    g = check_group(w.shape[1], cfg.group_size, cfg.method)
    grid = _FixedGrid(scale, zero, cfg.bits, g)
    u, _dead, _lam = inverse_cholesky(h, w_q, cfg.damp)
    m = nm[1] if nm else 1
    bs = max(cfg.blocksize // m * m, m)  # N:M groups must not straddle a block
    w_hat, _kept, _ = obs_solve(
        w_q, u, sparsity=0.0 if nm else cfg.sparsity, nm=nm, quantizer=grid, blocksize=bs, fixed_prune=fixed
    )
    return grid.codes, scale, zero, w_hat


@register(SparseGPTQConfig)
def run_sparsegpt_gptq(model: nn.Module, cfg: SparseGPTQConfig, ctx) -> nn.Module:
    """Prune and quantize ``model``'s decoder-block Linears in place, in ``cfg.order``."""
    calib = calibration_for(ctx, cfg.method, cfg.num_samples, cfg.seq_len)
    storage_bits = 4 if cfg.bits == 3 else cfg.bits
    done: list[str] = []
    errors: dict[str, float] = {}

    def fn(root, prefix, layers, feed):
        fits = []
        for name, mod in layers:
            full = f"{prefix}.{name}" if prefix else name
            reason = group_misfit(mod, cfg.group_size)
            if reason is None and cfg.nm and weight_2d(mod).shape[1] % cfg.nm[1]:
                reason = f"its {weight_2d(mod).shape[1]} input features are not a multiple of m={cfg.nm[1]}"
            if reason:
                ctx.skip(full, reason)
                continue
            fits.append((name, mod))
        hs = collect_hessians(fits, feed)
        for name, mod in fits:
            w = weight_2d(mod).float()
            keep = earlier_zeros(mod, w)
            codes, scale, zero, w_hat = sparse_gptq_layer(w, hs[name], cfg, keep)
            full = f"{prefix}.{name}" if prefix else name
            base = float(((w @ hs[name]) * w).sum())
            errors[full] = layer_error(w, w_hat, h=hs[name]) / max(base, 1e-30)
            scale, zero = scale.to(PARAM_DTYPE), zero.to(PARAM_DTYPE)
            replace_module(
                root, name, packed_layer(mod, codes, scale, zero, bits=storage_bits, group_size=cfg.group_size)
            )
            done.append(full)

    compress_blocks_for(model, calib, fn, cfg=cfg)
    if not done:
        raise NetslimError(
            f"{cfg.method} changed no layer: none of the selected layers fits group_size="
            f"{cfg.group_size}" + (f" and m={cfg.nm[1]}." if cfg.nm else ".")
        )
    if cfg.nm:
        declare_nm(model, done, *cfg.nm)
    rel = sorted(errors.values())
    ctx.notes[cfg.method] = {
        "order": cfg.order,
        "layers": len(done),
        "bits": cfg.bits,
        "storage_bits": storage_bits,
        "group_size": cfg.group_size,
        "sparsity": None if cfg.nm else cfg.sparsity,
        "nm": list(cfg.nm) if cfg.nm else None,
        "relative_layer_error": {"mean": sum(rel) / len(rel), "median": rel[len(rel) // 2], "max": rel[-1]},
    }
    return model


sparse_gptq = method_function(SparseGPTQConfig, "sparse_gptq")
