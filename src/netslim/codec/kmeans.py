"""One-dimensional k-means for weight sharing: Lloyd's iterations and the exact optimum.

In 1-D, an optimal clustering splits the *sorted* values into contiguous runs, so the
exact optimum is a dynamic programme over prefix sums:

    D[t][j] = min_{i < j} D[t-1][i] + SSE(u[i:j]),    SSE from prefix sums in O(1).

The minimising ``i`` is monotone in ``j`` (the cost is Monge), so each row is solved by
divide and conquer in O(m log m); here every recursion level of a row is one vectorised
numpy pass, which makes a row ~log2(m) passes over ~m candidates. Duplicate values are
merged first (weighted), so m = number of distinct values.

Lloyd's algorithm on sorted data is also vectorised: assignments are boundaries
(``searchsorted`` of centroid midpoints) and the update uses the prefix sums, so an
iteration costs O(k log n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Init = Literal["linear", "density", "random"]
Algorithm = Literal["auto", "optimal", "lloyd"]
# "auto" runs the exact DP when k * distinct values is at most this (~1.5 s on one
# core, 16 MB of back-pointers); bigger problems use Lloyd's with the given init.
AUTO_OPTIMAL_LIMIT = 1 << 22


@dataclass(frozen=True)
class Clustering:
    centroids: np.ndarray  # (k',) ascending, k' <= k (fewer when there are fewer distinct values)
    labels: np.ndarray  # (n,) index into centroids
    sse: float  # sum of squared errors
    algorithm: str  # "optimal" or "lloyd"


def init_centroids(x_sorted: np.ndarray, k: int, *, init: Init, seed: int = 0) -> np.ndarray:
    """The paper's initialisations: linear (default), density (CDF quantiles), random (Forgy)."""
    if init == "linear":
        return np.linspace(x_sorted[0], x_sorted[-1], k)
    if init == "density":
        return np.quantile(x_sorted, np.linspace(0, 1, k))
    if init == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(x_sorted, size=k, replace=len(x_sorted) < k))
    raise ValueError(f"init must be linear, density or random; got {init!r}")


def _prefix(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.zeros(1)
    return (
        np.concatenate([z, np.cumsum(w)]),
        np.concatenate([z, np.cumsum(w * x)]),
        np.concatenate([z, np.cumsum(w * x * x)]),
    )


def _sse(p0, p1, p2, i, j):
    """SSE of the run [i, j) of the sorted distinct values, from prefix sums."""
    n = p0[j] - p0[i]
    s = p1[j] - p1[i]
    return np.maximum((p2[j] - p2[i]) - s * s / np.maximum(n, 1e-300), 0.0)


def lloyd(x_sorted: np.ndarray, init: np.ndarray, *, max_iter: int = 300) -> np.ndarray:
    """Lloyd's iterations on sorted values; empty clusters keep their centroid."""
    p0, p1, _ = _prefix(x_sorted, np.ones_like(x_sorted))
    c = np.sort(init.astype(np.float64))
    for _ in range(max_iter):
        b = np.searchsorted(x_sorted, (c[1:] + c[:-1]) / 2, side="right")  # (k-1,) run ends
        bounds = np.concatenate([[0], b, [len(x_sorted)]])
        cnt = p0[bounds[1:]] - p0[bounds[:-1]]
        new = np.where(cnt > 0, (p1[bounds[1:]] - p1[bounds[:-1]]) / np.maximum(cnt, 1), c)
        new = np.sort(new)
        if np.array_equal(new, c):
            break
        c = new
    return c


def _dp_row(prev: np.ndarray, prev_arg: np.ndarray, pre: tuple, t: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Row t of the DP (t clusters over the first j values, j = t..m), by vectorised D&C.

    Besides the D&C bounds, opt_t(j) >= opt_{t-1}(j) (one more cluster never moves the
    last run's start left) trims the candidates of the upper recursion levels.
    """
    cur = np.full(m + 1, np.inf)
    arg = np.zeros(m + 1, dtype=np.int32)
    jlo, jhi = np.array([t]), np.array([m])
    ilo, ihi = np.array([t - 1]), np.array([m - 1])
    while len(jlo):
        mid = (jlo + jhi) // 2  # (Q,) one j per open interval
        hi = np.minimum(ihi, mid - 1)
        lo = np.minimum(np.maximum(ilo, prev_arg[mid]), hi)
        span = hi - lo + 1  # (Q,) candidates per interval
        starts = np.cumsum(span) - span
        seg = np.repeat(np.arange(len(mid)), span)  # (C,) interval of each candidate
        i = lo[seg] + np.arange(len(seg)) - starts[seg]  # (C,) candidate split points
        val = prev[i] + _sse(*pre, i, mid[seg])
        best = np.minimum.reduceat(val, starts)  # (Q,)
        first = np.minimum.reduceat(np.where(val <= best[seg], np.arange(len(val)), len(val)), starts)
        opt = i[first]
        cur[mid], arg[mid] = best, opt
        left, right = jlo <= mid - 1, mid + 1 <= jhi
        jlo, jhi, ilo, ihi = (
            np.concatenate([jlo[left], mid[right] + 1]),
            np.concatenate([mid[left] - 1, jhi[right]]),
            np.concatenate([ilo[left], opt[right]]),
            np.concatenate([opt[left], ihi[right]]),
        )
    return cur, arg


def optimal_1d(u: np.ndarray, weights: np.ndarray, *, k: int) -> np.ndarray:
    """Exact k-means of distinct sorted values ``u`` with multiplicities; returns run starts."""
    m = len(u)
    centre = float(np.average(u, weights=weights))  # centring keeps the sums exact-ish
    pre = _prefix(u - centre, weights.astype(np.float64))
    prev = _sse(*pre, np.zeros(m + 1, dtype=np.int64), np.arange(m + 1))
    args = []
    arg = np.zeros(m + 1, dtype=np.int32)  # one run: it starts at 0
    for t in range(2, k + 1):
        prev, arg = _dp_row(prev, arg, pre, t, m)
        args.append(arg)
    starts, j = [], m
    for arg in reversed(args):  # back-track the run boundaries
        j = int(arg[j])
        starts.append(j)
    return np.array([0] + starts[::-1], dtype=np.int64)


def cluster_1d(
    values: np.ndarray, k: int, *, init: Init = "linear", algorithm: Algorithm = "auto", seed: int = 0
) -> Clustering:
    """Cluster ``values`` into at most ``k`` shared values."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        return Clustering(np.zeros(0), np.zeros(0, np.int64), 0.0, "optimal")
    u, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(u) <= k:
        return Clustering(u, inverse.astype(np.int64), 0.0, "optimal")
    use_dp = algorithm == "optimal" or (algorithm == "auto" and k * len(u) <= AUTO_OPTIMAL_LIMIT)
    if use_dp:
        starts = optimal_1d(u, counts, k=k)
        run_of_u = np.searchsorted(starts, np.arange(len(u)), side="right") - 1  # (m,)
        sums = np.bincount(run_of_u, weights=u * counts, minlength=k)
        centroids = sums / np.bincount(run_of_u, weights=counts, minlength=k)
        labels = run_of_u[inverse]
    else:
        centroids = lloyd(np.sort(x), init_centroids(np.sort(x), k, init=init, seed=seed))
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, x, side="left")
    sse = float(((x - centroids[labels]) ** 2).sum())
    return Clustering(centroids, labels.astype(np.int64), sse, "optimal" if use_dp else "lloyd")
