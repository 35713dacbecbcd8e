"""Observers: watch tensors (weights once, activations over calibration batches) and
choose the clipping range that becomes a scale and zero point.

* ``minmax``     running min / max;
* ``moving_avg`` exponential moving average of per-batch min / max (robust to one odd batch);
* ``percentile`` the p-th / (100-p)-th percentile of the values seen (clips outliers);
* ``mse``        the clipping ratio (grid search) minimising the quantization MSE;
* ``entropy``    TensorRT-style KL-divergence threshold on a histogram (per tensor only).

Bad input fails loudly: empty, NaN/Inf, or an all-constant stream raises NetslimError
instead of producing a NaN or zero scale.
"""

from __future__ import annotations

import math

import torch

from netslim.core.errors import NetslimError, bad_param, unknown_name

from .core import QParams, QScheme, check_finite, qparams_from_range, quantize, to_rows


class Observer:
    """Base: per-row running statistics on the ``(R, N)`` view of what it sees."""

    name = "minmax"

    def __init__(self, scheme: QScheme | None = None):
        self.scheme = scheme or QScheme()
        self.lo: torch.Tensor | None = None  # (R,)
        self.hi: torch.Tensor | None = None  # (R,)
        self._gmin = math.inf
        self._gmax = -math.inf

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        check_finite(x, f"tensor seen by the {self.name} observer")
        rows = to_rows(x.detach(), self.scheme).float()  # (R, N)
        if self.lo is not None and rows.shape[0] != self.lo.shape[0]:
            raise NetslimError(
                f"The {self.name} observer saw {rows.shape[0]} rows after {self.lo.shape[0]}; "
                "per-channel/group observers need the same channel count every batch."
            )
        self._gmin = min(self._gmin, float(rows.min()))
        self._gmax = max(self._gmax, float(rows.max()))
        self._update(rows)

    __call__ = observe

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def _check_ready(self) -> None:
        if self.lo is None:
            raise NetslimError(f"The {self.name} observer has seen no data; run calibration batches first.")
        if self._gmax == self._gmin:
            raise NetslimError(
                f"The {self.name} observer saw only the constant value {self._gmin}: a constant "
                "tensor has no range to quantize (exclude this layer or calibrate with real data)."
            )

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_ready()
        return self.lo, self.hi

    def qparams(self) -> QParams:
        lo, hi = self.range()
        return qparams_from_range(lo, hi, self.scheme)


class MinMaxObserver(Observer):
    name = "minmax"


class MovingAverageObserver(Observer):
    name = "moving_avg"

    def __init__(self, scheme: QScheme | None = None, momentum: float = 0.01):
        super().__init__(scheme)
        if not 0.0 < momentum <= 1.0:
            raise bad_param("MovingAverageObserver", "momentum", "a float in (0, 1]", momentum)
        self.momentum = momentum

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


class _SampleObserver(Observer):
    """Keeps (a bounded, seeded random subset of) the values seen, per row."""

    def __init__(self, scheme: QScheme | None = None, max_samples: int = 1 << 20):
        super().__init__(scheme)
        self.max_samples = max_samples
        self._samples: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(0)

    def _update(self, rows: torch.Tensor) -> None:
        super()._update(rows)
        cap = max(64, self.max_samples // rows.shape[0])  # columns kept per batch
        if rows.shape[1] > cap:
            idx = torch.randperm(rows.shape[1], generator=self._gen)[:cap].to(rows.device)
            rows = rows[:, idx]
        self._samples.append(rows.cpu())
        total = sum(s.shape[1] for s in self._samples)
        if total > 4 * cap:  # keep memory bounded across many calibration batches
            merged = torch.cat(self._samples, dim=1)
            keep = torch.randperm(merged.shape[1], generator=self._gen)[: 2 * cap]
            self._samples = [merged[:, keep]]

    def samples(self) -> torch.Tensor:
        self._check_ready()
        return torch.cat(self._samples, dim=1)  # (R, n)


class PercentileObserver(_SampleObserver):
    name = "percentile"

    def __init__(self, scheme: QScheme | None = None, percentile: float = 99.99, max_samples: int = 1 << 20):
        super().__init__(scheme, max_samples)
        if not 50.0 < percentile <= 100.0:
            raise bad_param("PercentileObserver", "percentile", "a float in (50, 100]", percentile)
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples()
        # torch.quantile refuses > 16M inputs; the sample cap keeps us well below.
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        lo, hi = torch.quantile(s, q, dim=1)
        return lo.to(self.lo.device), hi.to(self.hi.device)


class MSEObserver(_SampleObserver):
    """Per-row grid search over clipping ratios of the min/max range, minimising MSE."""

    name = "mse"

    def __init__(
        self, scheme: QScheme | None = None, grid: int = 40, min_ratio: float = 0.2, max_samples: int = 1 << 20
    ):
        super().__init__(scheme, max_samples)
        if grid < 1:
            raise bad_param("MSEObserver", "grid", "a positive int", grid)
        if not 0.0 < min_ratio <= 1.0:
            raise bad_param("MSEObserver", "min_ratio", "a float in (0, 1]", min_ratio)
        self.grid, self.min_ratio = grid, min_ratio

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples()  # (R, n)
        lo0, hi0 = self.lo.cpu(), self.hi.cpu()
        rows_scheme = QScheme(self.scheme.bits, self.scheme.symmetric, "channel", 0)
        best_err = torch.full_like(lo0, math.inf)
        best_lo, best_hi = lo0.clone(), hi0.clone()
        for ratio in torch.linspace(1.0, self.min_ratio, self.grid).tolist():
            qp = qparams_from_range(lo0 * ratio, hi0 * ratio, rows_scheme)
            err = _row_mse(s, qp)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo0 * ratio, best_lo)
            best_hi = torch.where(better, hi0 * ratio, best_hi)
        return best_lo.to(self.lo.device), best_hi.to(self.hi.device)


def _row_mse(s: torch.Tensor, qp: QParams) -> torch.Tensor:
    q = quantize(s, qp).float()
    deq = (q - qp.zero_point.reshape(-1, 1)) * qp.scale.reshape(-1, 1)
    return (deq - s).pow(2).mean(dim=1)


class EntropyObserver(_SampleObserver):
    """KL-divergence calibration (TensorRT): the |x| threshold whose quantized histogram
    stays closest to the float one. Per-tensor only (a histogram per channel is too noisy)."""

    name = "entropy"

    def __init__(self, scheme: QScheme | None = None, bins: int = 2048, max_samples: int = 1 << 20):
        super().__init__(scheme, max_samples)
        if self.scheme.granularity != "tensor":
            raise bad_param("EntropyObserver", "granularity", "'tensor'", self.scheme.granularity)
        self.bins = bins

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples().reshape(-1).abs()
        amax = float(s.max())
        hist = torch.histc(s, bins=self.bins, min=0.0, max=amax).double()  # (bins,)
        levels = 2 ** (self.scheme.bits - (1 if self.scheme.symmetric or float(self.lo.min()) < 0 else 0))
        best_t, best_kl = amax, math.inf
        for i in range(max(levels, self.bins // 16), self.bins + 1, max(1, self.bins // 128)):
            kl = _kl_for_threshold(hist, i, levels)
            if kl < best_kl:
                best_kl, best_t = kl, amax * i / self.bins
        t = torch.tensor(best_t)
        return torch.maximum(self.lo.cpu(), -t).to(self.lo.device), torch.minimum(self.hi.cpu(), t).to(self.hi.device)


def _kl_for_threshold(hist: torch.Tensor, i: int, levels: int) -> float:
    p = hist[:i].clone()
    p[-1] += hist[i:].sum()  # clipped outliers pile into the last bin
    nonzero = hist[:i] > 0
    # Merge the i bins into `levels` quantization bins, then spread each back evenly over
    # its non-empty source bins: q is what the quantized tensor's histogram looks like.
    edges = torch.linspace(0, i, levels + 1).round().long()
    q = torch.zeros_like(p)
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        if b <= a:
            continue
        nz = nonzero[a:b]
        count = int(nz.sum())
        if count:
            q[a:b][nz] = hist[a:b].sum() / count
    p, q = p / p.sum(), q / q.sum().clamp_min(1e-30)
    mask = p > 0
    q = q.clamp_min(1e-12)
    return float((p[mask] * (p[mask] / q[mask]).log()).sum())


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_avg": MovingAverageObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, scheme: QScheme | None = None, **kwargs) -> Observer:
    """An observer by name (``minmax``, ``moving_avg``, ``percentile``, ``mse``, ``entropy``)."""
    if name not in OBSERVERS:
        raise unknown_name("observer", name, OBSERVERS)
    return OBSERVERS[name](scheme, **kwargs)
