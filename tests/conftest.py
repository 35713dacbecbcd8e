"""Shared fixtures: tiny models and a small Fashion-MNIST subset (real data, few rows)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NETSLIM_PROGRESS", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def fmnist_small():
    """A 2000-image training subset (400 val, 2000 test) of the real Fashion-MNIST."""
    from netslim.train.tasks import get_task

    return get_task("fashion-mnist", limit=2000)


@pytest.fixture
def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    from netslim.models import build_model

    return build_model("lenet300")


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    from netslim.models import build_model

    return build_model("lenet5")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty checkpoint cache (NETSLIM_CACHE) for the test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("NETSLIM_CACHE", str(d))
    return d


@pytest.fixture(scope="session")
def fork_ranks():
    """``fork_ranks(worker, out)``: run ``worker(rank, 2, out/"init", out)`` in 2 forked processes
    (one OpenMP thread each, the caller's setting restored): the 2-rank gloo tests' launcher."""
    import os

    import torch.multiprocessing as mp

    def run(worker, out, nprocs: int = 2) -> None:
        env = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            mp.start_processes(worker, args=(nprocs, str(out / "init"), str(out)), nprocs=nprocs, start_method="fork")
        finally:
            if env is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env

    return run
