import numpy as np
import pytest

from netslim.core.errors import NetslimError
from netslim.core.serialize import load, save
from netslim.models import build_model
from netslim.search.nas import NASConfig, NASSpace, evolve, nas_search, proxy_trial
from netslim.search.options import TrialOptions
from netslim.search.report import pareto
from netslim.search.trials import TrialRunner

TINY = {
    "resnet": {"depth": [8], "width": [4, 6, 8]},
    "mbnet": {"width_mult": [0.35], "expansion": [2], "kernel": [3, 5], "depth": [1]},
}


def test_pareto_is_exactly_the_non_dominated_set():
    rng = np.random.default_rng(0)
    pts = [{"cost": float(c), "accuracy": float(a)} for c, a in rng.random((40, 2))]
    front = pareto(pts)
    for p in pts:
        dominated = any(q["cost"] <= p["cost"] and q["accuracy"] >= p["accuracy"] and q != p for q in pts)
        assert (p in front) == (not dominated)


def test_space_errors_and_mutation_stays_in_space():
    with pytest.raises(NetslimError, match="resnet.width is empty"):
        NASSpace({"resnet": {"depth": [8], "width": []}})
    with pytest.raises(NetslimError, match="space is empty"):
        NASSpace({})
    with pytest.raises(ValueError, match="Unknown family .vit."):
        NASConfig(families={"vit": {"depth": [1]}})
    space = NASSpace(TINY)
    rng = np.random.default_rng(1)
    for _ in range(50):
        g = space.mutate(space.sample(rng), rng)
        assert all(g[k] in v for k, v in TINY[g["family"]].items())


def test_mbnet_default_is_the_zoo_layout_and_reloads(tmp_path):
    from netslim.measure.counts import count_params

    m = build_model("mbnet", width_mult=0.5, expansion=4, kernel=5, depth=1)
    assert count_params(build_model("mbnet")) == count_params(build_model("mobilenetv2"))
    path = save(m, tmp_path / "m.safetensors")
    assert count_params(load(path)) == count_params(m)


def test_evolution_is_deterministic_and_resumable(fmnist_small, tmp_path):
    from netslim.search.evaluate import Subset

    shared = {
        "train": Subset.from_task(fmnist_small, "train", 64),
        "val": Subset.from_task(fmnist_small, "val", 32),
        "steps": 2,
        "lr": 0.05,
        "batch_size": 16,
    }
    space = NASSpace(TINY)
    runs = []
    for _ in range(2):
        r = TrialRunner(proxy_trial, shared, seed=2, log_path=tmp_path / "nas.jsonl", fingerprint="n")
        runs.append((evolve(space, r, population=3, generations=2, seed=2), r.resumed))
    (a, _), (b, resumed) = runs
    assert [p["genotype"] for p in a] == [p["genotype"] for p in b]
    assert [p["accuracy"] for p in a] == [p["accuracy"] for p in b]
    assert resumed == len(a)  # the second run re-ran nothing
    assert all(p["macs"] > 0 and p["params"] > 0 for p in a)


def test_nas_max_cost_unreachable(fmnist_small):
    cfg = NASConfig(
        families={"resnet": {"depth": [8], "width": [4]}},
        population=2,
        generations=1,
        train_samples=16,
        train_steps=1,
        val_samples=16,
        max_cost=10,
        trials=TrialOptions(log=None),
    )
    with pytest.raises(NetslimError, match="No searched architecture meets max_cost"):
        nas_search(fmnist_small, cfg, seed=0)
