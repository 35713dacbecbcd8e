"""One-shot pruning of LLMs from a calibration set: Wanda, SparseGPT, and magnitude as the reference.

All three prune each Linear of a decoder block to ``sparsity`` (unstructured, compared
within each output row) or to N:M (``n`` kept of every ``m`` consecutive inputs), block by block through :func:`netslim.core.layerwise.compress_blocks`
(calibration activations of one block in memory at a time). Results are
:class:`~netslim.core.masks.Mask` parametrizations with the surviving weights updated
(SparseGPT) or untouched (Wanda, magnitude): ``make_permanent`` / ``sparsify`` follow;
``permanent: true`` bakes the zeros in at once (no mask buffers: the lowest-memory pass,
with ``offload_dir`` + ``offload_blocks`` parking activations and idle blocks on disk).

* magnitude: score ``|W|``; no data.
* Wanda (Sun et al. 2023): score ``|W_ij| · ||X_j||₂`` (per-input activation norm);
  optional OWL (Yin et al. 2023): blocks with more outlier scores (> ``owl_threshold`` ×
  their mean) keep more weights, sparsities spread by ±``owl_lambda`` around the target.
* SparseGPT (Frantar & Alistarh 2023): OBS column loop on ``H = 2XᵀX/n`` with adaptive
  mask selection per column block, surviving weights updated to cancel the error.

```yaml
- method: sparsegpt
  sparsity: 0.5        # or n: 2, m: 4
  num_samples: 128
  seq_len: 512
```
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from netslim.api import method_function
from netslim.core.brain_surgeon import inverse_cholesky, obs_solve
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.core.layerwise import (
    block_linears,
    calibration_for,
    collect_hessians,
    compress_blocks_for,
    is_conv1d,
    planned_linears,
    run_sequential,
    set_weight_2d,
    weight_2d,
)
from netslim.core.patterns import NMFields
from netslim.core.selectors import Selector
from netslim.core.stream_io import register_streaming
from netslim.prune._api import check_fraction
from netslim.prune.criteria import apply_masks, sparsity_report
from netslim.prune.nm import nm_mask

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- configs
class _PatternFields(NMFields):
    """What to prune: ``sparsity`` (unstructured) or ``n`` kept of every ``m`` (N:M)."""

    sparsity: float = Field(0.5, description="fraction pruned per layer, in [0, 1); ignored with n/m")
    n: int | None = Field(None, ge=1, description="N:M: weights kept per group")
    m: int | None = Field(None, ge=2, description="N:M: group size along the input dim")
    include: Selector = None
    exclude: Selector = None
    permanent: bool = Field(
        False,
        description="bake the zeros into the weights (made-permanent state, no mask "
        "buffers: 1 byte per weight less) instead of Mask parametrizations",
    )

    @field_validator("sparsity")
    @classmethod
    def _fraction(cls, v):
        return check_fraction(v)

    keeps_modules: ClassVar[bool] = True  # masks or zeros in place (netslim.recipe.preflight)
    calibrates: ClassVar[bool] = False  # token-id calibration makes a model a decoder stack

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the layers the method visits exist and fit N:M."""
        if model is None:
            return
        tokens = self.calibrates and getattr(task, "calibration_tokens", None) is not None
        layers = planned_linears(model, self.include, self.exclude, token_inputs=tokens)
        if not layers:
            raise NetslimError(
                f"No Linear layer of {type(model).__name__} is selected (include={self.include!r}, "
                f"exclude={self.exclude!r}); nothing to prune."
            )
        _check_nm_fits(layers, self.nm)


class _CalibrationFields(_PatternFields):
    calibrates: ClassVar[bool] = True
    num_samples: int = Field(128, ge=1, description="calibration sequences")
    seq_len: int = Field(512, ge=2, description="tokens per calibration sequence")
    batch_size: int = Field(4, ge=1, description="sequences per forward pass")
    sequential: bool = Field(True, description="next block sees the compressed block's outputs")
    offload_dir: str | None = Field(None, description="keep block activations in files here, not in RAM")
    offload_blocks: bool = Field(False, description="also park every block but the current one in offload_dir")
    device: str | None = Field(None, description="where each block is processed (default: the model's)")


class OneShotMagnitudeConfig(_PatternFields):
    """Magnitude pruning per output row (the reference for Wanda / SparseGPT); needs no data."""

    method = "magnitude_oneshot"


class _OWLFields(_CalibrationFields):
    owl: bool = Field(False, description="OWL non-uniform per-block sparsity from outlier ratios (unstructured)")
    owl_threshold: float = Field(5.0, gt=0, description="outlier: Wanda score > threshold x block mean")
    owl_lambda: float = Field(0.08, ge=0, lt=0.5, description="max deviation of a block's sparsity")
    owl_samples: int = Field(16, ge=1, description="calibration sequences of the OWL statistics pass")


class WandaConfig(_OWLFields):
    """Wanda: prune the lowest |W|·||X||₂ per output row (or per N:M group)."""

    method = "wanda"


class SparseGPTConfig(_OWLFields):
    """SparseGPT: OBS pruning with weight updates; ``damp`` x mean(diag H) is added to H."""

    method = "sparsegpt"
    damp: float = Field(0.01, ge=0, description="relative Hessian damping")
    blocksize: int = Field(128, ge=1, description="columns per lazy-update block (mask selection unit)")
    nm_select: Literal["diag", "exact"] = Field(
        "diag",
        description="N:M pattern per group: 'diag' = SparseGPT's lowest w²/[H⁻¹]_jj², "
        "'exact' = lowest OBS loss of the whole pattern inside the group",
    )


# ------------------------------------------------------------------ per-layer math
def row_mask(scores: torch.Tensor, sparsity: float, *, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep-mask (out, in): the lowest ``round(sparsity * in)`` scores of each row pruned, or N:M."""
    if nm is not None:
        return nm_mask(scores, *nm)
    k = int(round(sparsity * scores.shape[1]))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        idx = torch.topk(scores, k, dim=1, largest=False).indices  # (out, k): least important (topk: 10x a sort)
        keep.scatter_(1, idx, False)
    return keep


def magnitude_mask(w: torch.Tensor, sparsity: float, *, nm: tuple[int, int] | None = None) -> torch.Tensor:
    return row_mask(w.abs().float(), sparsity, nm=nm)


def wanda_mask(
    w: torch.Tensor, sq_norms: torch.Tensor, *, sparsity: float = 0.5, nm: tuple[int, int] | None = None
) -> torch.Tensor:
    """``w`` (out, in), ``sq_norms`` (in,) = Σ x_j² (any positive multiple) -> keep-mask."""
    return row_mask(wanda_scores(w, sq_norms), sparsity, nm=nm)


def wanda_scores(w: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    return w.abs().float() * sq_norms.float().clamp_min(0).sqrt()[None, :]  # (out, in)


def sparsegpt_prune(
    w: torch.Tensor,
    h: torch.Tensor,
    *,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    damp: float = 0.01,
    blocksize: int = 128,
    nm_select: str = "diag",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer: ``w`` (out, in), ``h`` (in, in) -> (new weight, keep-mask)."""
    w = w.detach().float().clone()
    u, _dead, _lam = inverse_cholesky(h, w, damp)
    w_new, keep, _loss = obs_solve(w, u, sparsity=sparsity, nm=nm, blocksize=blocksize, nm_select=nm_select)
    return w_new, keep


def _check_nm_fits(layers: list[tuple[str, nn.Module]], nm: tuple[int, int] | None) -> None:
    if nm is None:
        return
    for name, mod in layers:
        cols = weight_2d(mod).shape[1]
        if cols % nm[1]:
            raise NetslimError(
                f"N:M needs the input width to be a multiple of m={nm[1]}; {name} has {cols}. "
                f"Exclude it (exclude: [{name!r}]) or pick another m."
            )


def _masks_for(root: nn.Module, masks: dict[str, torch.Tensor], permanent: bool = False) -> None:
    """Attach (out, in) keep-masks, transposed for Conv1D layers (weight stored (in, out)).

    ``permanent``: zero the pruned weights in place instead (no parametrization, no mask kept).
    """
    if permanent:
        for name, keep in masks.items():
            mod = root.get_submodule(name)
            set_weight_2d(mod, weight_2d(mod) * keep.to(mod.weight.dtype))
        return
    fixed = {}
    for name, keep in masks.items():
        mod = root.get_submodule(name)
        fixed[name] = keep.T if is_conv1d(mod) else keep
    apply_masks(root, fixed)


# ------------------------------------------------------------------------ drivers
def _run(
    model: nn.Module, calib: Any, cfg: _CalibrationFields, fn, sparsities: list[float] | None = None, stream: Any = None
) -> None:
    counter = iter(range(10**9))

    def per_block(root, prefix, layers, feed):
        i = next(counter)
        _check_nm_fits(layers, cfg.nm)
        fn(root, layers, feed, cfg.sparsity if sparsities is None else sparsities[i])

    compress_blocks_for(model, calib, per_block, cfg=cfg, stream=stream)


def _wanda(model: nn.Module, calib: Any, cfg: WandaConfig, stream: Any = None) -> None:
    """Wanda-prune ``model`` in place on calibration inputs (token ids (N, L) for an LLM).
    ``stream``: the model's tensors are on disk (:class:`netslim.core.stream_io.BlockStream`)."""
    sparsities = owl_sparsities(model, calib, cfg=cfg, stream=stream) if cfg.owl and cfg.nm is None else None

    def fn(root, layers, feed, sparsity):
        norms = collect_hessians(layers, feed, diag_only=True)
        _masks_for(
            root,
            {n: wanda_mask(weight_2d(m), norms[n], sparsity=sparsity, nm=cfg.nm) for n, m in layers},
            cfg.permanent,
        )

    _run(model, calib, cfg, fn, sparsities, stream)


def _sparsegpt(model: nn.Module, calib: Any, cfg: SparseGPTConfig, stream: Any = None) -> None:
    """SparseGPT-prune ``model`` in place on calibration inputs (token ids (N, L) for an LLM).
    ``stream``: the model's tensors are on disk (:class:`netslim.core.stream_io.BlockStream`)."""
    sparsities = owl_sparsities(model, calib, cfg=cfg, stream=stream) if cfg.owl and cfg.nm is None else None

    def fn(root, layers, feed, sparsity):
        hs = collect_hessians(layers, feed)
        masks = {}
        for name, mod in layers:
            w = weight_2d(mod).float().clone()
            u, _dead, _lam = inverse_cholesky(hs[name], w, cfg.damp)
            w_new, keep, _loss = obs_solve(
                w, u, sparsity=sparsity, nm=cfg.nm, blocksize=cfg.blocksize, nm_select=cfg.nm_select
            )
            set_weight_2d(mod, w_new)  # pruned entries are exact zeros already
            masks[name] = keep
        if not cfg.permanent:  # permanent: the zeros written above are the whole result
            _masks_for(root, masks)

    _run(model, calib, cfg, fn, sparsities, stream)


def _magnitude_oneshot(model: nn.Module, cfg: OneShotMagnitudeConfig, stream: Any = None) -> None:
    """Per-row magnitude pruning of the same layers (decoder blocks of an LLM; every Linear otherwise).
    ``stream``: the model's tensors are on disk; each block is read, pruned, written, released."""
    if stream is not None:
        _stream_magnitude(model, cfg, stream)
        return
    try:
        from netslim.core.layerwise import decoder_blocks

        prefix, blocks = decoder_blocks(model)
        roots = [(blocks[i], f"{prefix}.{i}") for i in range(len(blocks))]
    except NetslimError:
        if type(model).__module__.startswith("transformers."):
            raise
        roots = [(model, "")]
    done = 0
    for root, prefix in roots:
        layers = [
            (full[len(prefix) + 1 :] if prefix else full, m)
            for full, m in block_linears(root, prefix, cfg.include, cfg.exclude)
        ]
        _check_nm_fits(layers, cfg.nm)
        if layers:
            _masks_for(
                root, {n: magnitude_mask(weight_2d(m), cfg.sparsity, nm=cfg.nm) for n, m in layers}, cfg.permanent
            )
            done += len(layers)
    if not done:
        raise NetslimError(
            f"magnitude_oneshot: no Linear layer selected (include={cfg.include!r}, exclude={cfg.exclude!r})."
        )


def _stream_magnitude(model: nn.Module, cfg: OneShotMagnitudeConfig, stream: Any) -> None:
    """magnitude_oneshot over a streamed model: one block in memory at a time."""
    from netslim.core.layerwise import decoder_blocks

    prefix, blocks = decoder_blocks(model)
    per_block = {
        f"{prefix}.{i}": block_linears(b, f"{prefix}.{i}", cfg.include, cfg.exclude) for i, b in enumerate(blocks)
    }
    names = [full for layers in per_block.values() for full, _ in layers]
    if not names:
        raise NetslimError(
            f"magnitude_oneshot: no Linear layer selected (include={cfg.include!r}, exclude={cfg.exclude!r})."
        )
    _check_nm_fits([(n, m) for layers in per_block.values() for n, m in layers], cfg.nm)

    def prune(unit: str, root: nn.Module, members: list[str]) -> None:
        layers = [(full[len(unit) + 1 :], root.get_submodule(full[len(unit) + 1 :])) for full in members]
        _masks_for(root, {n: magnitude_mask(weight_2d(m), cfg.sparsity, nm=cfg.nm) for n, m in layers}, cfg.permanent)

    stream.each_unit(names, prune)


def owl_sparsities(model: nn.Module, calib: Any, *, cfg: _OWLFields, stream: Any = None) -> list[float]:
    """OWL per-block sparsities: more outliers -> denser; mean = ``cfg.sparsity`` (dense statistics pass)."""
    ratios: list[float] = []

    def stats(i, name, block, feed):
        layers = [(full[len(name) + 1 :], m) for full, m in block_linears(block, name, cfg.include, cfg.exclude)]
        norms = collect_hessians(layers, feed, diag_only=True)
        scores = torch.cat([wanda_scores(weight_2d(m), norms[n]).flatten() for n, m in layers])
        ratios.append(float((scores > cfg.owl_threshold * scores.mean()).float().mean()))

    if not (isinstance(calib, torch.Tensor) and calib.dtype == torch.long):
        raise NetslimError("OWL needs a decoder-stack LLM with token-id calibration inputs.")
    run_sequential(
        model,
        calib[: cfg.owl_samples],
        stats,
        batch_size=cfg.batch_size,
        device=cfg.device,
        desc="owl statistics",
        stream=None if stream is None else stream.reader(),
    )
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = (r - r.min()) / (r.max() - r.min()).clamp_min(1e-12) * (2 * cfg.owl_lambda)  # in [0, 2λ]
    density = spread - spread.mean() + (1 - cfg.sparsity)
    out = (1 - density).clamp(0.0, 0.99).tolist()
    log.info("OWL outlier ratios %s -> sparsities %s", [round(x, 4) for x in ratios], [round(x, 3) for x in out])
    return out


# ------------------------------------------------------------------------ handlers
def _report(model: nn.Module, cfg: MethodConfig, ctx: Any) -> None:
    ctx.notes[cfg.method] = sparsity_report(model)["global"]


@register(WandaConfig)
def run_wanda(model: nn.Module, cfg: WandaConfig, ctx) -> nn.Module:
    _wanda(model, calibration_for(ctx, cfg.method, cfg.num_samples, cfg.seq_len), cfg)
    _report(model, cfg, ctx)
    return model


@register(SparseGPTConfig)
def run_sparsegpt(model: nn.Module, cfg: SparseGPTConfig, ctx) -> nn.Module:
    _sparsegpt(model, calibration_for(ctx, cfg.method, cfg.num_samples, cfg.seq_len), cfg)
    _report(model, cfg, ctx)
    return model


@register(OneShotMagnitudeConfig)
def run_magnitude_oneshot(model: nn.Module, cfg: OneShotMagnitudeConfig, ctx) -> nn.Module:
    with torch.no_grad():
        _magnitude_oneshot(model, cfg)
    _report(model, cfg, ctx)
    return model


# The methods in plain Python (netslim.api.method_function): fn(model, data=None, **options) -> model.
wanda = method_function(WandaConfig, "wanda")
sparsegpt = method_function(SparseGPTConfig, "sparsegpt")
magnitude_oneshot = method_function(OneShotMagnitudeConfig, "magnitude_oneshot")


# ---------------------------------------------------------- streamed (model on disk)
@register_streaming(WandaConfig, solver="diag")
def _stream_wanda(sm, cfg: WandaConfig, ctx, stream):
    _wanda(sm.model, calibration_for(ctx, cfg.method, cfg.num_samples, cfg.seq_len), cfg, stream=stream)


@register_streaming(SparseGPTConfig, solver="hessian")
def _stream_sparsegpt(sm, cfg: SparseGPTConfig, ctx, stream):
    _sparsegpt(sm.model, calibration_for(ctx, cfg.method, cfg.num_samples, cfg.seq_len), cfg, stream=stream)


@register_streaming(OneShotMagnitudeConfig)
def _stream_magnitude_oneshot(sm, cfg: OneShotMagnitudeConfig, ctx, stream):
    with torch.no_grad():
        _magnitude_oneshot(sm.model, cfg, stream=stream)
