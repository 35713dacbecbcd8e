import json

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.search.cem import cem_search, policy_accuracy
from netslim.search.channels import ChannelSpace
from netslim.search.trials import TrialRunner, _check_reachable, trial_seed

X = torch.randn(1, 1, 28, 28)


def noisy(shared, params, seed):
    """A trial whose result depends on its seed and the torch RNG (seeded per trial)."""
    return {"value": params["x"] * shared["scale"] + float(torch.rand(1)), "seed": seed}


def test_seeds_are_per_index_and_results_ordered(tmp_path):
    r = TrialRunner(noisy, {"scale": 2}, seed=5)
    a = r.run([{"x": 1}, {"x": 2}])
    b = r.run([{"x": 3}])
    assert [x["seed"] for x in a + b] == [trial_seed(5, i) for i in range(3)]
    again = TrialRunner(noisy, {"scale": 2}, seed=5).run([{"x": 1}, {"x": 2}, {"x": 3}])
    assert [x["value"] for x in again] == [x["value"] for x in a + b]
    assert trial_seed(5, 0) != trial_seed(6, 0)


def test_log_resumes_and_drops_a_truncated_line(tmp_path):
    log = tmp_path / "t.jsonl"
    calls = []

    def counted(shared, params, seed):
        calls.append(params["x"])
        return noisy(shared, params, seed)

    full = TrialRunner(counted, {"scale": 1}, seed=1, log_path=log, fingerprint="f").run([{"x": i} for i in range(6)])
    lines = log.read_text().splitlines()
    assert len(lines) == 7  # header + 6 trials
    log.write_text("\n".join(lines[:4]) + "\n" + lines[4][: len(lines[4]) // 2])  # killed mid-write
    calls.clear()
    r = TrialRunner(counted, {"scale": 1}, seed=1, log_path=log, fingerprint="f")
    again = r.run([{"x": i} for i in range(6)])
    assert [x["value"] for x in again] == [x["value"] for x in full]
    assert calls == [3, 4, 5] and r.resumed == 3
    assert all(json.loads(line) for line in log.read_text().splitlines())


def test_log_of_another_search_is_refused(tmp_path):
    log = tmp_path / "t.jsonl"
    TrialRunner(noisy, {"scale": 1}, log_path=log, fingerprint="a").run([{"x": 1}])
    with pytest.raises(NetslimError, match="different search"):
        TrialRunner(noisy, {"scale": 1}, log_path=log, fingerprint="b")
    with pytest.raises(NetslimError, match="trial 0 was recorded with other parameters"):
        TrialRunner(noisy, {"scale": 1}, log_path=log, fingerprint="a").run([{"x": 2}])


def test_bad_backend_and_unreachable_address():
    with pytest.raises(NetslimError, match="'backend'.*serial, ray"):
        TrialRunner(noisy, None, backend="dask")
    with pytest.raises(NetslimError, match="cannot be reached"):
        _check_reachable("127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(NetslimError, match="'address'"):
        _check_reachable("not an address")


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    from netslim.search.trials import import_ray

    with pytest.raises(NetslimError, match=r"netslim\[search\]"):
        import_ray()


def _cem(space, val, log, **kw):
    runner = TrialRunner(policy_accuracy, {"space": space, "val": val}, seed=3, log_path=log, fingerprint="cem", **kw)
    return cem_search(space, runner, 0.5 * space.dense_cost(), generations=3, population=4, seed=3), runner


def test_cem_resume_from_truncated_log_gives_the_same_result(tiny_resnet, val_subset, tmp_path):
    space = ChannelSpace(tiny_resnet, X, options=(0.0, 0.25, 0.5, 0.75))
    log = tmp_path / "cem.jsonl"
    first, _ = _cem(space, val_subset, log)
    assert space.cost(first.best) <= 0.5 * space.dense_cost()
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:7]) + "\n" + lines[7][:10])
    again, runner = _cem(space, val_subset, log)
    assert runner.resumed == 6
    assert again.best == first.best and again.best_reward == first.best_reward
    assert [h["rewards"] for h in again.history] == [h["rewards"] for h in first.history]
