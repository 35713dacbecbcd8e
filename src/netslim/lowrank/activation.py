"""Rank pruning that accounts for the nonlinearity: the ``activation_rank`` step.

Method (output-space PCA with a post-activation stopping rule; cf. Zhang et al. 2015,
"Accelerating very deep convolutional networks", who also reconstruct responses after
the nonlinearity; in Python :func:`activation_rank`, ``fn(model, data=None, **options) -> model``,
and its building block :func:`prune_ranks` on given calibration inputs):

1. Run calibration data and collect each selected Linear's outputs Z (N×m, bias included).
2. Eigenvectors U of the covariance of Z (descending): the directions the layer actually
   uses; and, as a second candidate basis, those of the activated outputs act(Z), which
   rank a direction the activation erases (e.g. always below zero before a ReLU) last.
3. Projecting onto the top k gives Ẑ = (Z − μ) U_k U_kᵀ + μ, i.e. the rank-k layer
   ``x -> U_k (U_kᵀ W x) + U_k U_kᵀ (b − μ) + μ`` (a :class:`LowRankLinear`).
4. Keep the smallest k whose *activated* output stays within ``tolerance``:
   ‖act(Ẑ) − act(Z)‖_F ≤ tolerance × ‖act(Z)‖_F (binary search over k), in whichever of
   the two bases needs fewer directions.

Why after the activation: a ReLU discards whatever happens below zero, so a direction
that only moves pre-activations that stay negative costs nothing, and the rank needed
for the activated output is often lower than for the pre-activation (the error measured
before the activation would keep it). Layers are processed in forward order, each on
the outputs of the already-pruned layers before it, so errors do not silently compound.
A layer stays dense when no rank below its break-even rank (where two factors stop
saving parameters) meets the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from netslim.api import method_function
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError
from netslim.core.hooks import eval_mode
from netslim.core.selectors import Selector, select
from netslim.core.surgery import get_module, replace_module

from .calib import _chunks, _run
from .svd import LowRankLinear, linalg_threads

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "identity": lambda z: z}


class ActivationRankConfig(MethodConfig):
    """Cut each Linear to the smallest rank whose post-activation output stays within a tolerance.

    Select only layers that ``activation`` follows (e.g. exclude a classifier's last layer).
    """

    method = "activation_rank"
    tolerance: float = Field(0.02, gt=0, lt=1, description="allowed ‖act(Ẑ) − act(Z)‖ / ‖act(Z)‖ per layer")
    activation: Literal["relu", "gelu", "identity"] = Field(
        "relu", description="the nonlinearity that follows the selected layers"
    )
    calibration_samples: int = Field(256, ge=1)
    include: Selector = None
    exclude: Selector = None

    def preflight(self, model, task) -> None:
        """Before a recipe runs: the selectors resolve to Linear layers."""
        if model is not None:
            select(model, self.include, self.exclude, types=(nn.Linear,))


@torch.no_grad()
def layer_outputs(model: nn.Module, name: str, inputs: Any, batch_size: int = 64) -> torch.Tensor:
    """The outputs of layer ``name`` over ``inputs`` as rows (N, m), float64; token padding dropped."""
    rows: list[torch.Tensor] = []
    mask: list[torch.Tensor | None] = [None]

    def hook(m, args, out):
        z = out.detach()
        if mask[0] is not None and z.ndim == 3 and tuple(z.shape[:2]) == tuple(mask[0].shape):
            z = z[mask[0].to(z.device).bool()]  # (tokens, m)
        rows.append(z.reshape(-1, z.shape[-1]).double())

    with eval_mode(model, [(get_module(model, name), hook)]):
        for batch in _chunks(inputs, batch_size):
            mask[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
            _run(model, batch)
    if not rows:
        raise NetslimError(f"activation_rank: layer {name!r} is not called in a forward pass; exclude it.")
    return torch.cat(rows)


def _principal(zc: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of zcᵀzc (m, m), columns by descending eigenvalue."""
    with linalg_threads(zc.device):
        return torch.linalg.eigh(zc.T @ zc)[1].flip(-1)


def activated_errors(
    z: torch.Tensor,
    basis: str = "pre",
) -> tuple[torch.Tensor, torch.Tensor, Callable[..., float]]:
    """``(U, mean, error)`` for outputs ``z`` (N, m): ``error(k, activation)`` is the relative
    post-activation error of projecting the outputs onto the first k columns of U.

    ``basis``: "pre" takes U from the outputs' covariance; "relu" / "gelu" from the covariance
    of the activated outputs (what the next layer receives), which ranks a direction that
    the activation erases (always below zero for a ReLU) last instead of by its raw variance.
    """
    mu = z.mean(0)  # (m,)
    zc = z - mu  # (N, m)
    if basis == "pre":
        U = _principal(zc)
    else:
        a = ACTIVATIONS[basis](z)
        U = _principal(a - a.mean(0))
    coords = zc @ U  # (N, m): coordinates in that basis

    def error(k: int, activation: str = "relu") -> float:
        act = ACTIVATIONS[activation]
        ref = act(z)
        approx = coords[:, :k] @ U[:, :k].T + mu  # (N, m)
        return float((act(approx) - ref).norm() / ref.norm().clamp_min(1e-300))

    return U, mu, error


def smallest_rank(error, max_rank: int, tolerance: float) -> int | None:
    """Smallest k in [1, max_rank] with ``error(k) <= tolerance`` (binary search; the error is
    non-increasing in k for the identity and, in practice, after a ReLU/GELU), else None."""
    if max_rank < 1 or error(max_rank) > tolerance:
        return None
    lo, hi = 1, max_rank
    while lo < hi:
        mid = (lo + hi) // 2
        if error(mid) <= tolerance:
            hi = mid
        else:
            lo = mid + 1
    return lo


def project_linear(layer: nn.Linear, U: torch.Tensor, mu: torch.Tensor, rank: int) -> LowRankLinear:
    """The rank-``rank`` layer ``x -> U_k (U_kᵀ W x) + U_k U_kᵀ (b − μ) + μ``."""
    w = layer.weight.detach().double()  # (m, n)
    b = (
        layer.bias.detach().double()
        if layer.bias is not None
        else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    )
    Uk = U[:, :rank].to(w.device)  # (m, k)
    mu = mu.to(w.device)
    out = LowRankLinear(layer.in_features, layer.out_features, rank, bias=True).to(w.device, layer.weight.dtype)
    with torch.no_grad():
        out.first.weight.copy_(Uk.T @ w)  # (k, n)
        out.second.weight.copy_(Uk)  # (m, k)
        out.second.bias.copy_(Uk @ (Uk.T @ (b - mu)) + mu)  # (m,)
    return out


def prune_ranks(model: nn.Module, cfg: ActivationRankConfig, calibration: Any, skip=None) -> dict[str, Any]:
    """Apply ``cfg`` to ``model`` in place; returns per-layer notes (rank, error)."""
    skip = skip or (lambda name, reason: None)
    notes: dict[str, Any] = {}
    for name in select(model, cfg.include, cfg.exclude, types=(nn.Linear,)):
        layer = get_module(model, name)
        m, n = layer.weight.shape
        # Two factors (k×n, m×k) plus the bias save parameters only below m·n / (m + n).
        max_rank = min(m, n, (m * n - 1) // (m + n))
        z = layer_outputs(model, name, calibration)
        # Directions from the pre-activation covariance and from the activated one; keep
        # whichever meets the tolerance at the lower rank (never worse than plain PCA).
        best = None
        for basis in ("pre",) if cfg.activation == "identity" else (cfg.activation, "pre"):
            U, mu, error = activated_errors(z, basis)
            k = smallest_rank(lambda r, error=error: error(r, cfg.activation), max_rank, cfg.tolerance)
            if k is not None and (best is None or k < best[0]):
                best = (k, basis, U, mu, error)
        if best is None:
            skip(
                name,
                f"no rank <= {max_rank} (break-even) keeps the {cfg.activation} output within "
                f"tolerance {cfg.tolerance}",
            )
            continue
        k, basis, U, mu, error = best
        replace_module(model, name, project_linear(layer, U, mu, k))
        notes[name] = {
            "rank": k,
            "max_rank": min(m, n),
            "basis": basis,
            "error": round(error(k, cfg.activation), 6),
            "error_before_activation": round(error(k, "identity"), 6),
        }
    return notes


@register(ActivationRankConfig)
def run_activation_rank(model: nn.Module, cfg: ActivationRankConfig, ctx) -> nn.Module:
    calibration = ctx.task.calibration_inputs(cfg.calibration_samples, seed=ctx.seed)
    ctx.notes[cfg.method] = prune_ranks(model, cfg, calibration, skip=ctx.skip)
    return model


activation_rank = method_function(ActivationRankConfig, "activation_rank")  # activation_rank(model, x, tolerance=0.02)
