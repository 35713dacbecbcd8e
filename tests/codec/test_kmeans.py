"""1-D k-means: the DP is exactly optimal (brute force) and never worse than Lloyd's."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netslim.codec.kmeans import cluster_1d


def brute_force_sse(x: np.ndarray, k: int) -> float:
    u = np.sort(x)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(u)), k - 1):
        b = [0, *cuts, len(u)]
        best = min(best, sum(((u[i:j] - u[i:j].mean()) ** 2).sum() for i, j in zip(b[:-1], b[1:])))
    return best


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.integers(-6, 6), min_size=1, max_size=9),
    k=st.integers(1, 6),
    scale=st.sampled_from([1.0, 1e-3, 37.5]),
)
def test_dp_matches_brute_force(values, k, scale):
    x = np.array(values, dtype=np.float64) * scale
    res = cluster_1d(x, k, algorithm="optimal")
    distinct = len(np.unique(x))
    expected = 0.0 if distinct <= k else brute_force_sse(x, k)
    assert res.sse == pytest.approx(expected, abs=1e-9 * scale * scale)
    assert len(res.centroids) <= k
    assert res.sse == pytest.approx(((x - res.centroids[res.labels]) ** 2).sum())


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 3000),
    k=st.sampled_from([2, 4, 16, 32]),
    seed=st.integers(0, 2**31),
    dist=st.sampled_from(["normal", "laplace", "bimodal"]),
)
def test_dp_never_worse_than_lloyd(n, k, seed, dist):
    rng = np.random.default_rng(seed)
    x = {
        "normal": rng.normal(size=n),
        "laplace": rng.laplace(size=n),
        "bimodal": np.concatenate([rng.normal(-1, 0.1, n // 2), rng.normal(1, 0.1, n - n // 2)]),
    }[dist]
    best = cluster_1d(x, k, algorithm="optimal").sse
    for init in ("linear", "density", "random"):
        lloyd = cluster_1d(x, k, algorithm="lloyd", init=init, seed=seed)
        assert best <= lloyd.sse * (1 + 1e-9) + 1e-12
        # Lloyd's labels point at the nearest centroid
        d = np.abs(x[:, None] - lloyd.centroids[None, :])
        assert np.allclose(d[np.arange(n), lloyd.labels], d.min(1))


def test_auto_uses_the_dp_on_small_problems_and_lloyd_on_huge_ones():
    rng = np.random.default_rng(0)
    assert cluster_1d(rng.normal(size=5000), 32).algorithm == "optimal"
    assert cluster_1d(rng.normal(size=300_000), 256).algorithm == "lloyd"
