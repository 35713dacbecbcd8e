"""Truncated SVD of a weight matrix, plain or data-aware, and the factorized Linear.

``W ≈ A @ B`` with ``A = U_r Σ_r^½`` (m×r) and ``B = Σ_r^½ V_rᵀ`` (r×n): the layer becomes
``x -> B x -> A (B x) + b``. Splitting Σ evenly keeps both factors on the same scale, which
fine-tuning with one learning rate prefers.

Data-aware (SVD-LLM, Wang et al. 2024): with calibration inputs X (n×N) and
``XXᵀ + λI = L Lᵀ`` (Cholesky), ``‖(W − W')X‖_F ≈ ‖(W − W')L‖_F``, so truncating the SVD of
``W L`` and mapping back with ``L⁻¹`` minimises the output error instead of the weight error;
the dropped σ² of ``W L`` are exactly that output error. λ (``damping`` × mean diagonal)
keeps L invertible when inputs are rank-deficient (dead pixels, padding).

Output-aware (two-sided): with G = Σ gᵀg the Gram of the gradients of the model's output
(along random directions) with respect to the layer's output, ``G + λI = R Rᵀ``, the error
that reaches the model's output is ≈ ``‖Rᵀ(W − W')L‖_F`` (Gauss-Newton, Kronecker-factored
as in K-FAC), so the SVD of ``Rᵀ W L`` is truncated instead and mapped back by ``R⁻ᵀ`` and
``L⁻¹``. Its σ² are then estimates of model-output error, comparable across layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from netslim.core.errors import NetslimError, bad_param
from netslim.core.serialize import register_module


class LowRankLinear(nn.Module):
    """``second(first(x))``: (…, in) -> (…, rank) -> (…, out). Dense weight = second.W @ first.W."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> torch.Tensor:
        return self.second.weight @ self.first.weight  # (out, r) @ (r, in) -> (out, in)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


register_module(
    LowRankLinear,
    lambda m: {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "rank": m.rank,
        "bias": m.second.bias is not None,
    },
)


@contextlib.contextmanager
def linalg_threads(device: torch.device) -> Iterator[None]:
    """One CPU thread for the decompositions (no effect on other devices).

    Why: the layers here are small (<= a few thousand columns), where threaded LAPACK
    gains little, and on a shared machine its spinning threads collapse: a 300×784
    float64 SVD took 0.06 s on one thread and 10-24 s on two busy cores (2026-11-23).
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_rank(rank: int, shape: tuple[int, int], where: str) -> None:
    """A rank must be an int in [1, min(m, n)] for a (m, n) matrix."""
    top = min(shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= top:
        raise bad_param(
            f"the factorization of {where} (weight matrix {shape[0]}x{shape[1]})", "rank", f"an int in [1, {top}]", rank
        )


def whitening_factor(gram: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """Lower-triangular L with L Lᵀ = gram + λI, λ = damping × mean(diag(gram)).

    Retries with 10× more damping (up to 4 times) when the Cholesky fails numerically.
    """
    return damped_cholesky(gram, damping)[0]


def damped_cholesky(gram: torch.Tensor, damping: float = 0.01) -> tuple[torch.Tensor, float]:
    """:func:`whitening_factor` and the λ it used: ``(L, λ)`` with L Lᵀ = gram + λI."""
    g = gram.double()  # (n, n)
    scale = float(torch.diagonal(g).mean()) or 1.0
    lam = max(damping, 1e-8) * scale
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    for _ in range(5):
        with linalg_threads(g.device):
            L, info = torch.linalg.cholesky_ex(g + lam * eye)
        if int(info) == 0:
            return L, lam
        lam *= 10
    raise NetslimError(
        f"Cannot whiten calibration inputs: their Gram matrix is not positive definite "
        f"even with damping {lam / scale:.3g}; increase 'damping'."
    )


def _weighted(weight: torch.Tensor, whitening: torch.Tensor | None, out_whitening: torch.Tensor | None) -> torch.Tensor:
    """``Rᵀ W L`` (float64) with whichever factors are given."""
    w = weight.detach().double()  # (m, n)
    if whitening is not None:
        w = w @ whitening.to(w.device).double()
    if out_whitening is not None:
        w = out_whitening.to(w.device).double().T @ w
    return w


def spectrum(
    weight: torch.Tensor, whitening: torch.Tensor | None = None, out_whitening: torch.Tensor | None = None
) -> torch.Tensor:
    """Singular values (descending, float64) of ``W``, ``W L`` (data-aware) or ``Rᵀ W L``
    (output-aware)."""
    w = _weighted(weight, whitening, out_whitening)
    with linalg_threads(w.device):
        return torch.linalg.svdvals(w)


def svd_factors(
    weight: torch.Tensor, rank: int, whitening: torch.Tensor | None = None, out_whitening: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B`` the best rank-``rank`` approximation of ``weight`` (m×n).

    With ``whitening`` (L from :func:`whitening_factor`) best means least ‖(W − AB)L‖_F;
    with ``out_whitening`` (R, lower-triangular, R Rᵀ = output-gradient Gram + λI) as well,
    least ‖Rᵀ(W − AB)L‖_F. Computed in float64; returned in the weight's dtype.
    """
    check_rank(rank, tuple(weight.shape), "a weight")
    w = weight.detach().double()  # (m, n)
    target = _weighted(w, whitening, out_whitening)
    with linalg_threads(w.device):
        U, S, Vh = torch.linalg.svd(target, full_matrices=False)  # (m, k), (k,), (k, n)
    root = S[:rank].sqrt()
    A = U[:, :rank] * root  # (m, r)
    B = root[:, None] * Vh[:rank]  # (r, n)
    if out_whitening is not None:
        # R⁻ᵀ A without forming the inverse: solve Rᵀ Z = A (Rᵀ is upper-triangular).
        with linalg_threads(w.device):
            A = torch.linalg.solve_triangular(out_whitening.to(w.device).double().T, A, upper=True)
    if whitening is not None:
        # B L⁻¹ without forming the inverse: solve Lᵀ Z = Bᵀ, B' = Zᵀ.
        with linalg_threads(w.device):
            B = torch.linalg.solve_triangular(whitening.to(w.device).double().T, B.T, upper=True).T
    if whitening is not None or out_whitening is not None:
        # Rebalance each rank-1 term so that ‖A[:, i]‖ = ‖B[i]‖, as in plain SVD. Without it,
        # L's scale (~√N × input std) ends up in A and 1/L's in B, and SGD fine-tuning of the
        # lopsided pair diverged (LeNet-300 2x: 89.4 % -> 77.6 % after one epoch).
        c = (B.norm(dim=1) / A.norm(dim=0).clamp_min(1e-300)).sqrt()  # (r,)
        A, B = A * c, B / c[:, None]
    return A.to(weight.dtype), B.to(weight.dtype)


def factorize_linear(
    layer: nn.Linear,
    rank: int,
    *,
    whitening: torch.Tensor | None = None,
    out_whitening: torch.Tensor | None = None,
    name: str = "Linear",
) -> LowRankLinear:
    """A :class:`LowRankLinear` of rank ``rank`` approximating ``layer`` (full rank: exact)."""
    if not isinstance(layer, nn.Linear):
        raise NetslimError(f"factorize_linear needs an nn.Linear; {name!r} is a {type(layer).__name__}.")
    check_rank(rank, tuple(layer.weight.shape), repr(name))
    A, B = svd_factors(layer.weight, rank, whitening, out_whitening)
    w = layer.weight
    with torch.device(w.device):
        out = LowRankLinear(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
    out = out.to(w.dtype)
    with torch.no_grad():
        out.first.weight.copy_(B)
        out.second.weight.copy_(A)
        if layer.bias is not None:
            out.second.bias.copy_(layer.bias)
    return out
