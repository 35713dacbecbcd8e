"""Factorized convolutions: channel SVD, spatial SVD and Tucker-2.

* ``channel``: W (out, in, kh, kw) as an (out, in·kh·kw) matrix ≈ A B: a kh×kw conv with
  ``rank`` outputs (B) then a 1×1 conv (A). Same output positions, so the saving in params
  is also the saving in MACs.
* ``spatial`` (Jaderberg et al. 2014, scheme 2): W as an (out·kw, in·kh) matrix ≈ A B: a
  kh×1 conv with ``rank`` outputs (B) then a 1×kw conv (A). Exact at full rank.
* ``tucker`` (Kim et al. 2016): W ≈ core ×₀ U_out ×₁ U_in: 1×1 (in -> r_in), kh×kw core
  (r_in -> r_out), 1×1 (r_out -> out). HOSVD, optionally refined by HOOI sweeps.

Only ordinary convs are factorized (groups = 1, numeric padding, zero padding mode);
:func:`supported` says why another one is not.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.errors import NetslimError, bad_param
from netslim.core.serialize import register_module

from .svd import check_rank, linalg_threads, svd_factors

Scheme = Literal["channel", "spatial"]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class LowRankConv2d(nn.Module):
    """A conv as ``second(first(x))`` (channel or spatial SVD, see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        rank: int,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        scheme: Scheme = "channel",
    ):
        super().__init__()
        k, s, p, d = (_pair(v) for v in (kernel_size, stride, padding, dilation))
        self.in_channels, self.out_channels, self.rank, self.scheme = in_channels, out_channels, rank, scheme
        self.kernel_size, self.stride, self.padding, self.dilation = k, s, p, d
        if scheme == "channel":
            self.first = nn.Conv2d(in_channels, rank, k, s, p, d, bias=False)
            self.second = nn.Conv2d(rank, out_channels, 1, bias=bias)
        else:  # vertical kh×1 then horizontal 1×kw; each takes its axis' stride/padding/dilation
            self.first = nn.Conv2d(in_channels, rank, (k[0], 1), (s[0], 1), (p[0], 0), (d[0], 1), bias=False)
            self.second = nn.Conv2d(rank, out_channels, (1, k[1]), (1, s[1]), (0, p[1]), (1, d[1]), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def _lowrank_conv_kwargs(m: LowRankConv2d) -> dict:
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "rank": m.rank,
        "stride": list(m.stride),
        "padding": list(m.padding),
        "dilation": list(m.dilation),
        "bias": m.second.bias is not None,
        "scheme": m.scheme,
    }


register_module(LowRankConv2d, _lowrank_conv_kwargs)


class TuckerConv2d(nn.Module):
    """Tucker-2 conv: 1×1 (in -> r_in), k×k core (r_in -> r_out), 1×1 (r_out -> out)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        ranks,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
    ):
        super().__init__()
        r_in, r_out = int(ranks[0]), int(ranks[1])
        self.in_channels, self.out_channels, self.ranks = in_channels, out_channels, (r_in, r_out)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.first = nn.Conv2d(in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(r_in, r_out, self.kernel_size, self.stride, self.padding, self.dilation, bias=False)
        self.last = nn.Conv2d(r_out, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))


register_module(
    TuckerConv2d,
    lambda m: {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "ranks": list(m.ranks),
        "stride": list(m.stride),
        "padding": list(m.padding),
        "dilation": list(m.dilation),
        "bias": m.last.bias is not None,
    },
)


def supported(conv: nn.Conv2d) -> str | None:
    """None if ``conv`` can be factorized, else the reason it cannot."""
    if conv.groups != 1:
        return f"grouped/depthwise conv (groups={conv.groups}) has no channel matrix to factorize"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (string padding) is not supported"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported"
    return None


def conv_matrix(weight: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """The matrix whose SVD gives the factorization (rows: output side, cols: input side)."""
    out_c, in_c, kh, kw = weight.shape
    if scheme == "channel":
        return weight.reshape(out_c, in_c * kh * kw)  # (out, in·kh·kw)
    # M[(o, x), (i, y)] = W[o, i, y, x]
    return weight.permute(0, 3, 1, 2).reshape(out_c * kw, in_c * kh)  # (out·kw, in·kh)


def factorize_conv(
    conv: nn.Conv2d,
    rank: int,
    *,
    scheme: Scheme = "channel",
    whitening: torch.Tensor | None = None,
    out_whitening: torch.Tensor | None = None,
    name: str = "Conv2d",
) -> LowRankConv2d:
    """A :class:`LowRankConv2d` of rank ``rank`` approximating ``conv`` (full rank: exact).

    ``whitening`` (channel scheme only) is L for the conv's unfolded input patches,
    ``out_whitening`` R for its output channels (see :func:`netslim.lowrank.svd.svd_factors`).
    """
    if not isinstance(conv, nn.Conv2d):
        raise NetslimError(f"factorize_conv needs an nn.Conv2d; {name!r} is a {type(conv).__name__}.")
    if scheme not in ("channel", "spatial"):
        raise bad_param("factorize_conv", "scheme", "one of 'channel', 'spatial'", scheme)
    why = supported(conv)
    if why:
        raise NetslimError(f"Cannot factorize {name!r}: {why}.")
    if (whitening is not None or out_whitening is not None) and scheme != "channel":
        raise NetslimError("Data-aware factorization of convs needs scheme 'channel'; got 'spatial'.")
    w = conv.weight  # (out, in, kh, kw)
    out_c, in_c, kh, kw = w.shape
    mat = conv_matrix(w, scheme)
    check_rank(rank, tuple(mat.shape), f"{name!r} ({scheme} scheme)")
    A, B = svd_factors(mat, rank, whitening, out_whitening)  # (rows, r), (r, cols)
    with torch.device(w.device):
        out = LowRankConv2d(
            in_c,
            out_c,
            (kh, kw),
            rank,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
            scheme=scheme,
        )
    out = out.to(w.dtype)
    with torch.no_grad():
        if scheme == "channel":
            out.first.weight.copy_(B.reshape(rank, in_c, kh, kw))
            out.second.weight.copy_(A.reshape(out_c, rank, 1, 1))
        else:
            out.first.weight.copy_(B.reshape(rank, in_c, kh, 1))
            out.second.weight.copy_(A.reshape(out_c, kw, rank).permute(0, 2, 1).reshape(out_c, rank, 1, kw))
        if conv.bias is not None:
            out.second.bias.copy_(conv.bias)
    return out


# --------------------------------------------------------------------------- Tucker-2
def _top_left(mat: torch.Tensor, r: int) -> torch.Tensor:
    with linalg_threads(mat.device):
        return torch.linalg.svd(mat, full_matrices=False)[0][:, :r]  # (rows, r)


def tucker_factors(
    weight: torch.Tensor,
    ranks: tuple[int, int],
    iters: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_out, core, U_in)`` with W ≈ core ×₀ U_out ×₁ U_in (float64).

    HOSVD (leading singular vectors of the mode-0 and mode-1 unfoldings), then ``iters``
    HOOI sweeps, each of which cannot increase the error.
    """
    w = weight.detach().double()  # (out, in, kh, kw)
    out_c, in_c, kh, kw = w.shape
    r_in, r_out = ranks
    U_out = _top_left(w.reshape(out_c, -1), r_out)  # (out, r_out)
    U_in = _top_left(w.transpose(0, 1).reshape(in_c, -1), r_in)  # (in, r_in)
    for _ in range(iters):
        # Fix U_in, best U_out for the partially projected tensor; then the reverse.
        p_in = torch.einsum("oiyx,ir->oryx", w, U_in)  # (out, r_in, kh, kw)
        U_out = _top_left(p_in.reshape(out_c, -1), r_out)
        p_out = torch.einsum("oiyx,or->iryx", w, U_out)  # (in, r_out, kh, kw)
        U_in = _top_left(p_out.reshape(in_c, -1), r_in)
    core = torch.einsum("oiyx,or,is->rsyx", w, U_out, U_in)  # (r_out, r_in, kh, kw)
    return U_out, core, U_in


def tucker2(conv: nn.Conv2d, ranks: tuple[int, int], *, iters: int = 0, name: str = "Conv2d") -> TuckerConv2d:
    """A :class:`TuckerConv2d` with ``ranks = (r_in, r_out)`` (full ranks: exact)."""
    if not isinstance(conv, nn.Conv2d):
        raise NetslimError(f"tucker2 needs an nn.Conv2d; {name!r} is a {type(conv).__name__}.")
    why = supported(conv)
    if why:
        raise NetslimError(f"Cannot factorize {name!r}: {why}.")
    w = conv.weight
    out_c, in_c, kh, kw = w.shape
    if len(ranks) != 2:
        raise bad_param(f"the Tucker-2 factorization of {name!r}", "ranks", "a pair (r_in, r_out)", ranks)
    r_in, r_out = ranks
    check_rank(r_in, (in_c, out_c * kh * kw), f"{name!r} (Tucker-2 input mode; r_in)")
    check_rank(r_out, (out_c, in_c * kh * kw), f"{name!r} (Tucker-2 output mode; r_out)")
    U_out, core, U_in = tucker_factors(w, (r_in, r_out), iters)
    with torch.device(w.device):
        out = TuckerConv2d(
            in_c, out_c, (kh, kw), (r_in, r_out), conv.stride, conv.padding, conv.dilation, bias=conv.bias is not None
        )
    out = out.to(w.dtype)
    with torch.no_grad():
        out.first.weight.copy_(U_in.T.reshape(r_in, in_c, 1, 1).to(w.dtype))
        out.core.weight.copy_(core.to(w.dtype))
        out.last.weight.copy_(U_out.reshape(out_c, r_out, 1, 1).to(w.dtype))
        if conv.bias is not None:
            out.last.bias.copy_(conv.bias)
    return out


def tucker_energy_ranks(weight: torch.Tensor, energy: float) -> tuple[int, int]:
    """(r_in, r_out): smallest ranks keeping ``energy`` of each unfolding's Σσ²."""
    from .rank import energy_rank

    w = weight.detach().double()
    out_c, in_c = w.shape[:2]
    with linalg_threads(w.device):
        r_out = energy_rank(torch.linalg.svdvals(w.reshape(out_c, -1)), energy)
        r_in = energy_rank(torch.linalg.svdvals(w.transpose(0, 1).reshape(in_c, -1)), energy)
    return r_in, r_out


def unfold_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Input patches of a conv as rows: (B, in, H, W) -> (B·L, in·kh·kw), L = output positions."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (B, in·kh·kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])
