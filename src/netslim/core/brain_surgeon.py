"""Optimal-brain-surgeon machinery shared by SparseGPT and GPTQ (one solver, two families).

For a Linear layer ``y = W x`` and calibration inputs X (tokens, in), the layer objective
``||W X^T - Ŵ X^T||²`` has the Hessian ``H = 2 X^T X / n`` (in, in). Both methods walk the
input columns left to right, fix column j (pruned to 0 and/or rounded to a grid) and push
the error onto the not-yet-fixed columns through the upper Cholesky factor U of ``H^-1``
(Frantar & Alistarh 2022, 2023):

    err = (w_j - q_j) / U[j, j];   W[:, j+1:] -= err ⊗ U[j, j+1:]

Updates inside a block of columns are applied eagerly, updates to later blocks lazily in
one matmul per block (the "lazy batch" trick: the same result, far fewer passes over W).

* :class:`HessianAccumulator` -- running ``2 X^T X / n`` (or its diagonal only, for Wanda)
  from forward hooks, one matmul shared by layers that read the same input tensor;
* :func:`inverse_cholesky` -- damping, dead inputs, more damping when H is singular;
* :func:`obs_solve` -- the column loop with adaptive N:M / unstructured mask selection and
  an optional quantizer callback (joint sparsity + quantization in one pass).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import torch

from .errors import NetslimError, bad_param

log = logging.getLogger(__name__)

# (position in processing order, column (R,), working block (R, b), position in block) -> rounded column (R,)
Quantizer = Callable[[int, torch.Tensor, torch.Tensor, int], torch.Tensor]


class HessianAccumulator:
    """Running ``H = 2/n Σ x xᵀ`` over calibration tokens (``diag_only``: just its diagonal).

    ``add(x)`` takes the layer input (..., in). Consecutive calls with the *same tensor
    object* (q/k/v or gate/up reading one normalised hidden state) reuse the last product:
    :class:`SharedInput` holds that cache for a whole block.
    """

    def __init__(self, columns: int, device: torch.device, diag_only: bool = False):
        shape = (columns,) if diag_only else (columns, columns)
        self.h = torch.zeros(shape, dtype=torch.float32, device=device)
        self.n = 0
        self.diag_only = diag_only

    def add_product(self, xtx: torch.Tensor, tokens: int) -> None:
        # Running mean keeps H at the scale of one token however many are seen (fp32-safe).
        total = self.n + tokens
        self.h.mul_(self.n / total).add_(xtx, alpha=2.0 / total)
        self.n = total

    def value(self) -> torch.Tensor:
        return self.h


class SharedInput:
    """Computes ``XᵀX`` (or ``Σ x²``) once per distinct input tensor of a forward pass."""

    def __init__(self) -> None:
        self._last: tuple[torch.Tensor, bool, torch.Tensor] | None = None

    def product(self, x: torch.Tensor, diag_only: bool) -> tuple[torch.Tensor, int]:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()  # (tokens, in)
        if self._last is not None and self._last[0] is x and self._last[1] == diag_only:
            return self._last[2], x2.shape[0]
        prod = x2.pow(2).sum(0) if diag_only else x2.T @ x2  # (in,) or (in, in)
        self._last = (x, diag_only, prod)
        return prod, x2.shape[0]

    def clear(self) -> None:
        self._last = None


def inverse_cholesky(
    h: torch.Tensor, w: torch.Tensor, damp: float = 0.01, max_tries: int = 6
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + λI)^-1`` with λ = ``damp`` · mean(diag H).

    Dead inputs (diag H == 0: the column never saw a non-zero activation) get H[j, j] = 1
    and W[:, j] = 0 in place: their weights cannot affect the output on this data. When H
    is still not positive definite, λ grows ×10 per try (logged); after ``max_tries`` a
    NetslimError explains what to do. Returns (U (C, C) float32, dead mask (C,), λ used).
    """
    if not torch.isfinite(h).all():
        raise NetslimError(
            "The calibration Hessian has NaN/Inf entries: the block's inputs overflowed; "
            "check the model in float32 and the calibration tokens."
        )
    # float64: C <= a few thousand, and the factorisation must not fail on rounding. At most three
    # (C, C) float64 matrices live at once (H, a factor, the inverse): no identity, no H + λI copy.
    h = h.to(torch.float64, copy=True)
    diag = h.diagonal()  # a view: damping is added in place
    dead = diag == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0
    mean_diag = float(diag.mean())
    lam = damp * mean_diag if damp > 0 else 0.0
    added = 0.0
    for attempt in range(max_tries):
        diag.add_(lam - added)
        added = lam
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            chol = torch.cholesky_inverse(chol)  # H^-1 (the factor is dropped)
            chol, info = torch.linalg.cholesky_ex(chol, upper=True)
            if int(info) == 0 and torch.isfinite(chol).all():
                if attempt:
                    log.warning("Hessian was singular: damping raised to %.3g (x%d of the requested)", lam, 10**attempt)
                return chol.float(), dead, lam
        del chol
        lam = max(lam * 10, 1e-6 * max(mean_diag, 1.0))
    raise NetslimError(
        f"The calibration Hessian stays singular even with damping {lam:.3g} "
        f"(mean diagonal {mean_diag:.3g}): the layer's inputs are (nearly) linearly dependent. "
        "Use more calibration tokens or a larger 'damp'."
    )


def _block_mask(w1: torch.Tensor, d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured prune mask (True = prune) of one column block: the lowest w²/d² (OBS saliency)."""
    sal = (w1 / d).pow(2).reshape(-1)  # (R * b,)
    k = int(round(sal.numel() * sparsity))
    mask = torch.zeros_like(sal, dtype=torch.bool)
    if k:
        mask[torch.topk(sal, k, largest=False).indices] = True
    return mask.view_as(w1)


NM_SELECT = ("diag", "exact")


def _nm_patterns(n: int, m: int, device: torch.device) -> torch.Tensor:
    """Every way to prune ``m - n`` of ``m`` columns: (K, m) bool, True = pruned."""
    pats = list(itertools.combinations(range(m), m - n))
    out = torch.zeros(len(pats), m, dtype=torch.bool, device=device)
    for k, p in enumerate(pats):
        out[k, list(p)] = True
    return out


def _nm_exact(wg: torch.Tensor, ug: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Per row, the N:M pattern whose sequential OBS loss inside the group is lowest.

    ``wg`` (R, m) the group's current weights, ``ug`` (m, m) its block of U, ``patterns``
    (K, m). Pruning column k of the group costs ``(w_k'/U_kk)²`` where ``w_k'`` already holds
    the updates of the group's earlier pruned columns — the exact loss the column loop will
    add, where the diagonal rule (w²/U_kk², picked before any update) ignores those updates.
    Returns the (R, m) prune mask.
    """
    x = wg[:, None, :].expand(-1, patterns.shape[0], -1).clone()  # (R, K, m)
    loss = torch.zeros(x.shape[:2], device=wg.device)  # (R, K)
    pf = patterns.to(wg.dtype)
    for k in range(wg.shape[1]):
        e = x[:, :, k] / ug[k, k] * pf[:, k]  # (R, K): 0 where column k is kept
        loss += e.pow(2)
        x[:, :, k:] -= e[:, :, None] * ug[k, k:]
    return patterns[loss.argmin(dim=1)]


def obs_solve(
    w: torch.Tensor,
    u: torch.Tensor,
    *,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    quantizer: Quantizer | None = None,
    blocksize: int = 128,
    fixed_prune: torch.Tensor | None = None,
    nm_select: str = "diag",
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """SparseGPT / GPTQ column loop on ``w`` (R, C) with ``u`` = upper Cholesky of H^-1 (C, C).

    Masks are chosen adaptively per block of ``blocksize`` columns from the *updated*
    weights: unstructured ``sparsity`` over the block, or ``nm = (n, m)``: n pruned of every
    m consecutive columns, per row (picked when the loop reaches the group; ``nm_select``
    "diag": the m - n lowest w²/U_jj² (SparseGPT's rule), "exact": the pattern with the lowest
    OBS loss inside the group, see :func:`_nm_exact`; without a quantizer). ``quantizer``
    rounds each surviving column. ``fixed_prune`` (R, C) marks weights that must stay zero
    (an earlier pruning step's mask, kept through quantization). Returns (new W (R, C), keep mask (R, C), objective loss
    Σ (w - q)² / U[j,j]² / 2 — the OBS estimate of the added layer error).
    """
    w = w.float().clone()
    rows, cols = w.shape
    keep = torch.ones_like(w, dtype=torch.bool)
    loss = torch.zeros(rows, device=w.device)
    if nm is not None and blocksize % nm[1]:
        raise NetslimError(f"blocksize {blocksize} must be a multiple of m={nm[1]} for N:M masks.")
    if nm_select not in NM_SELECT:
        raise bad_param("obs_solve", "nm_select", f"one of {', '.join(NM_SELECT)}", nm_select)
    patterns = _nm_patterns(*nm, w.device) if nm is not None and nm_select == "exact" else None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()  # (R, b): eager updates here
        u1 = u[i1:i2, i1:i2]  # (b, b)
        err1 = torch.zeros_like(w1)
        d = torch.diag(u1)  # (b,)
        prune1 = (
            _block_mask(w1, d, sparsity) if (nm is None and sparsity > 0) else torch.zeros_like(w1, dtype=torch.bool)
        )
        if fixed_prune is not None:
            prune1 |= fixed_prune[:, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            if nm is not None and i % nm[1] == 0:
                m = nm[1]
                if patterns is not None and quantizer is None and fixed_prune is None:
                    prune1[:, i : i + m] = _nm_exact(w1[:, i : i + m], u1[i : i + m, i : i + m], patterns)
                else:
                    sal = (w1[:, i : i + m] / d[i : i + m]).pow(2)  # (R, m)
                    idx = torch.topk(sal, m - nm[0], dim=1, largest=False).indices
                    prune1[:, i : i + m].scatter_(1, idx, True)
            q = col.masked_fill(prune1[:, i], 0.0)
            if quantizer is not None:
                q = quantizer(i1 + i, q, w1, i).masked_fill(prune1[:, i], 0.0)
            e = (col - q) / d[i]  # (R,)
            loss += e.pow(2) / 2
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]  # eager update inside the block
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        keep[:, i1:i2] = ~prune1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]  # lazy update of later blocks
    if not torch.isfinite(w).all():
        raise NetslimError(
            "The OBS update produced NaN/Inf weights (ill-conditioned Hessian); "
            "raise 'damp' or use more calibration tokens."
        )
    return w, keep, float(loss.sum())


def layer_error(w: torch.Tensor, w_hat: torch.Tensor, *, h: torch.Tensor) -> float:
    """``tr((W - Ŵ) H (W - Ŵ)ᵀ)``: the layer reconstruction error ``2/n ||WXᵀ - ŴXᵀ||²``."""
    d = (w - w_hat).float()
    return float(((d @ h.float()) * d).sum())
