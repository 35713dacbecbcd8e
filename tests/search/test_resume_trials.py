"""Searches survive dead workers (issue 19, part 5).

Without Ray: :class:`TrialRunner`'s pool loop driven by an in-process pool whose "worker" dies
on chosen trials (results also come back out of submission order). With Ray (slow): a real worker
process SIGKILLs itself mid-search. Either way the search ends with the best policy and the
history of an undisturbed serial search; a trial whose worker dies more often than ``retries``
stops the search with one clear error, and the same search started again resumes from its log.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.search.cem import cem_search, policy_accuracy
from netslim.search.channels import ChannelSpace
from netslim.search.trials import TrialRunner, WorkerLost, run_one, trial_seed

X = torch.randn(1, 1, 28, 28)
SEED = 11
SEARCH = {"generations": 2, "population": 4, "seed": SEED}


class DyingPool:
    """Trials run in this process; the worker of trial ``i`` dies on its first ``deaths[i]`` attempts.
    Finished trials are handed back last-submitted first (not in submission order)."""

    def __init__(self, runner: TrialRunner, deaths: dict[int, int]):
        self.runner, self.deaths, self.jobs, self.attempts = runner, deaths, {}, []

    def submit(self, index: int, params: dict) -> int:
        handle = len(self.attempts)
        self.attempts.append(index)
        self.jobs[handle] = (index, params)
        return handle

    def next_done(self, handles: list) -> tuple[int, dict | WorkerLost]:
        handle = max(handles)
        index, params = self.jobs.pop(handle)
        if self.deaths.get(index, 0):
            self.deaths[index] -= 1
            return handle, WorkerLost("WorkerCrashedError: the worker died (simulated SIGKILL)")
        r = self.runner
        return handle, run_one(r.fn, r.shared, params, trial_seed(r.seed, index), r.threads)


class DyingRunner(TrialRunner):
    """A 'ray' runner whose workers are a :class:`DyingPool` (no Ray needed)."""

    def __init__(self, *args, deaths: dict[int, int], **kwargs):
        super().__init__(*args, backend="ray", **kwargs)
        self.pool = DyingPool(self, deaths)

    def _pool(self) -> DyingPool:
        return self.pool


@pytest.fixture
def space(tiny_resnet):
    return ChannelSpace(tiny_resnet, X, options=(0.0, 0.25, 0.5, 0.75))


def _search(space, runner):
    return cem_search(space, runner, 0.5 * space.dense_cost(), **SEARCH)


def _logged(path: Path) -> list[int]:
    return [json.loads(line)["index"] for line in path.read_text().splitlines()[1:]]


def test_a_dead_worker_costs_one_rerun_and_changes_no_decision(space, val_subset, tmp_path):
    shared = {"space": space, "val": val_subset}
    serial = _search(space, TrialRunner(policy_accuracy, shared, seed=SEED))
    runner = DyingRunner(
        policy_accuracy, shared, seed=SEED, deaths={2: 1, 5: 2}, log_path=tmp_path / "t.jsonl", fingerprint="f"
    )
    got = _search(space, runner)
    assert got.best == serial.best and got.best_reward == serial.best_reward
    assert [h["rewards"] for h in got.history] == [h["rewards"] for h in serial.history]
    assert runner.retried == 3 and runner.pool.attempts.count(5) == 3
    assert sorted(_logged(tmp_path / "t.jsonl")) == list(range(8))  # each trial recorded once


def test_a_worker_dying_too_often_stops_the_search_and_the_log_resumes_it(space, val_subset, tmp_path):
    shared, log = {"space": space, "val": val_subset}, tmp_path / "t.jsonl"
    serial = _search(space, TrialRunner(policy_accuracy, shared, seed=SEED))
    runner = DyingRunner(policy_accuracy, shared, seed=SEED, deaths={6: 3}, retries=2, log_path=log, fingerprint="f")
    # generation 2 (trials 4-7) hands back trial 7, then trial 6 three times: 4 and 5 never finish
    with pytest.raises(
        NetslimError,
        match=r"Trial 6: its worker died 3 times \(WorkerCrashedError.*\); the 5 "
        r"finished trials are recorded in '.*t\.jsonl': start the same "
        r"search again to resume after them, or raise 'retries'\.",
    ):
        _search(space, runner)
    assert sorted(_logged(log)) == [0, 1, 2, 3, 7]
    again = DyingRunner(policy_accuracy, shared, seed=SEED, deaths={}, log_path=log, fingerprint="f")
    got = _search(space, again)
    assert got.best == serial.best and [h["rewards"] for h in got.history] == [h["rewards"] for h in serial.history]
    assert again.resumed == 5 and again.pool.attempts == [4, 5, 6]


def test_retries_must_be_a_count():
    with pytest.raises(NetslimError, match="'retries' parameter of TrialRunner must be an int >= 0; got -1"):
        TrialRunner(policy_accuracy, None, retries=-1)


# ------------------------------------------------------------------------------- Ray
def killer(shared, params, seed):
    """policy_accuracy, except that the worker running trial ``shared['victim']`` SIGKILLs itself
    the first time (a marker file says it did)."""
    marker = Path(shared["marker"])
    if seed == trial_seed(SEED, shared["victim"]) and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return policy_accuracy(shared, params, seed)


@pytest.mark.slow
def test_a_ray_worker_killed_mid_search_and_the_search_ends_as_undisturbed(space, val_subset, tmp_path):
    ray = pytest.importorskip("ray")
    cloudpickle = pytest.importorskip("ray.cloudpickle")

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests
    shared = {"space": space, "val": val_subset}
    serial = _search(space, TrialRunner(policy_accuracy, shared, seed=SEED))
    marker = tmp_path / "killed"
    runner = TrialRunner(
        killer,
        {**shared, "victim": 5, "marker": str(marker)},
        seed=SEED,
        backend="ray",
        workers=2,
        log_path=tmp_path / "ray.jsonl",
        fingerprint="f",
    )
    try:
        got = _search(space, runner)
    finally:
        ray.shutdown()
    assert marker.exists()  # a worker did die
    assert got.best == serial.best and [h["rewards"] for h in got.history] == [h["rewards"] for h in serial.history]
    assert runner.retried == 1 and sorted(_logged(tmp_path / "ray.jsonl")) == list(range(8))
