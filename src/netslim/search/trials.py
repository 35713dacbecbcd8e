"""Trials: evaluations of candidate policies / architectures, run serially or on Ray.

A trial is ``fn(shared, params, seed) -> dict``: ``shared`` is what every trial of a search
needs (model, data subsets; shipped once to each Ray worker with ``ray.put``), ``params`` the
candidate (JSON data), ``seed`` derived from the search seed and the trial's index
(:func:`trial_seed`), so a trial's result does not depend on where or when it runs.
Results come back ordered by trial index; with a fixed seed a serial and a parallel search
see the same results and so take the same decisions.

Every finished trial is appended to a JSONL log (one line per trial, flushed and fsync'ed).
A search that is started again with the same log skips the trials recorded there: a killed
search resumes where it stopped. A truncated last line (a kill mid-write) is dropped.

A Ray worker (or node) that dies while running a trial loses only that trial: it is submitted
again (``retries`` times; netslim counts them, Ray's own task retries are off), and since a
trial's result depends only on its parameters and seed, the search takes the decisions it would
have taken undisturbed. Beyond ``retries`` the search stops with an error; the finished trials
are in the log and the same search started again resumes after them.

**On a Ray cluster** (``trials: {backend: ray, address: ...}`` in a search step, or
``TrialRunner(address=...)``): start the cluster with ``ray start --head --port 6379`` on one
machine and ``ray start --address HEAD:6379`` on the others, each with the same Python, torch
and netslim installed (``pip install 'netslim[search]'``; the local runtime puts this checkout's
``src`` on the workers' path, a cluster's workers import the netslim they have). Then
``address`` is ``HEAD:6379`` (join as a driver on a cluster machine), ``ray://HEAD:10001`` (Ray
Client from elsewhere) or ``auto`` (the cluster this machine runs). ``workers`` sizes only a
local runtime: on a cluster, the cluster's CPUs decide how many trials run at once (one CPU
each); ``threads`` stays the torch threads inside each trial, everywhere. What trials share
(model, data subsets) is shipped from the driver once per search with ``ray.put``. An address
that does not answer fails at once with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from netslim.core.errors import NetslimError, bad_param
from netslim.core.serialize import atomic_write

log = logging.getLogger(__name__)
TrialFn = Callable[[Any, dict, int], dict]
BACKENDS = ("serial", "ray")


class WorkerLost(Exception):
    """A trial's worker process (or its node) died before returning a result: the trial may run again."""


def trial_seed(search_seed: int, index: int) -> int:
    """A 31-bit seed for trial ``index`` of a search seeded ``search_seed`` (stable across runs)."""
    digest = hashlib.sha256(f"netslim-trial:{search_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def canonical(params: Any) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def run_one(fn: TrialFn, shared: Any, params: dict, seed: int, threads: int) -> dict:
    """Run a trial with fixed intra-op threads and RNG state (the same everywhere it runs)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        out = dict(fn(shared, params, seed))
    finally:
        torch.set_num_threads(old)
        torch.random.set_rng_state(state)
    out.setdefault("seconds", time.perf_counter() - t0)
    return out


@dataclass
class TrialLog:
    """The JSONL record of a search: a header line (the search's fingerprint), then one line per trial."""

    path: Path
    fingerprint: str
    records: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: str) -> TrialLog:
        path = Path(path)
        self = cls(path, fingerprint)
        lines = path.read_text().splitlines() if path.is_file() else []
        good: list[str] = []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # a kill mid-write: drop the partial record
                    log.warning("trial log %s: dropping a truncated last line", path)
                    continue
                raise NetslimError(
                    f"Trial log {str(path)!r}: line {i + 1} is not JSON; remove the file to start the search afresh."
                ) from None
            if i == 0:
                if rec.get("search") != fingerprint:
                    raise NetslimError(
                        f"Trial log {str(path)!r} was written by a different search (its settings differ); "
                        "use another 'trial_log' path or remove the file."
                    )
            else:
                self.records[int(rec["index"])] = rec
            good.append(line)
        if not good:
            good = [json.dumps({"search": fingerprint})]
        if good != lines:  # rewrite without the broken tail (or with the header) before appending
            text = "\n".join(good) + "\n"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return self

    def get(self, index: int, params: dict) -> dict | None:
        rec = self.records.get(index)
        if rec is None:
            return None
        if rec["params"] != json.loads(canonical(params)):
            raise NetslimError(
                f"Trial log {str(self.path)!r}: trial {index} was recorded with other parameters "
                f"({canonical(rec['params'])[:120]}); the search changed. Use another log path."
            )
        return rec["result"]

    def add(self, index: int, params: dict, seed: int, result: dict) -> None:
        rec = {"index": index, "params": json.loads(canonical(params)), "seed": seed, "result": result}
        self.records[index] = rec
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())


class TrialRunner:
    """Runs batches of trials; numbering is global over the search (``self.next_index``).

    ``backend``: "serial" (default, no extra dependency) or "ray" (``netslim[search]``);
    ``address``: None starts a local Ray runtime with ``workers`` CPUs, otherwise the
    cluster address given to ``ray.init`` (see the module docstring). ``threads``: intra-op
    threads inside each trial (the same in both backends so that floating-point results agree
    bit for bit). ``retries``: how many times a trial whose worker died is submitted again.
    ``resumed`` / ``retried`` count the trials read back from the log / run again.
    """

    def __init__(
        self,
        fn: TrialFn,
        shared: Any,
        *,
        seed: int = 0,
        backend: str = "serial",
        address: str | None = None,
        workers: int = 2,
        threads: int = 1,
        retries: int = 2,
        log_path: str | os.PathLike | None = None,
        fingerprint: Any = None,
    ):
        if backend not in BACKENDS:
            raise bad_param("TrialRunner", "backend", f"one of {', '.join(BACKENDS)}", backend)
        if workers < 1:
            raise bad_param("TrialRunner", "workers", "an int >= 1", workers)
        if retries < 0:
            raise bad_param("TrialRunner", "retries", "an int >= 0", retries)
        self.fn, self.shared, self.seed = fn, shared, seed
        self.backend, self.address, self.workers, self.threads = backend, address, workers, threads
        self.retries = retries
        self.next_index = 0
        self.log = TrialLog.open(log_path, canonical(fingerprint)) if log_path else None
        self.resumed = 0
        self.retried = 0
        self._ray = None
        self._shared_ref = None
        self._remote = None

    def set_shared(self, shared: Any) -> None:
        """Replace what every later trial receives (e.g. NetAdapt's current model)."""
        self.shared = shared
        self._shared_ref = None

    def run(self, candidates: Sequence[dict]) -> list[dict]:
        """Results of ``candidates`` (in order); recorded trials are read back, not re-run."""
        first = self.next_index
        self.next_index += len(candidates)
        indices = range(first, first + len(candidates))
        results: dict[int, dict] = {}
        todo = []
        for i, p in zip(indices, candidates):
            rec = self.log.get(i, p) if self.log else None
            if rec is not None:
                results[i] = rec
                self.resumed += 1
            else:
                todo.append((i, p))
        if todo:
            results.update(self._run_serial(todo) if self.backend == "serial" else self._run_pool(todo))
        return [results[i] for i in indices]

    def _run_serial(self, todo: list[tuple[int, dict]]) -> dict[int, dict]:
        out = {}
        for i, p in todo:
            out[i] = run_one(self.fn, self.shared, p, trial_seed(self.seed, i), self.threads)
            self._record(i, p, out[i])
        return out

    def _record(self, index: int, params: dict, result: dict) -> None:
        if self.log:
            self.log.add(index, params, trial_seed(self.seed, index), result)

    def _run_pool(self, todo: list[tuple[int, dict]]) -> dict[int, dict]:
        """Every trial of ``todo`` on the worker pool, each recorded as soon as it finishes (a kill of
        the search loses only the running ones); a trial whose worker died is submitted again."""
        pool = self._pool()
        attempts = dict.fromkeys((i for i, _ in todo), 0)
        pending = {pool.submit(i, p): (i, p) for i, p in todo}
        done: dict[int, dict] = {}
        while pending:
            handle, outcome = pool.next_done(list(pending))
            i, p = pending.pop(handle)
            if isinstance(outcome, WorkerLost):
                attempts[i] += 1
                if attempts[i] > self.retries:
                    kept = (
                        f"the {len(self.log.records)} finished trials are recorded in {str(self.log.path)!r}: "
                        "start the same search again to resume after them"
                        if self.log
                        else "no trial log keeps the finished ones (set 'log' to make the search resumable)"
                    )
                    raise NetslimError(
                        f"Trial {i}: its worker died {attempts[i]} times ({outcome}); {kept}, or raise 'retries'."
                    )
                log.warning(
                    "trial %d: its worker died (%s); running it again (%d/%d)", i, outcome, attempts[i], self.retries
                )
                self.retried += 1
                pending[pool.submit(i, p)] = (i, p)
                continue
            done[i] = outcome
            self._record(i, p, outcome)
        return done

    def _pool(self) -> RayPool:
        ray = self._ensure_ray()
        if self._shared_ref is None:
            self._shared_ref = ray.put(self.shared)
        return RayPool(ray, self._remote, self.fn, self._shared_ref, self.seed, self.threads)

    def _ensure_ray(self):
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if not ray.is_initialized():
            init_ray(ray, self.address, self.workers)
        self._ray = ray
        # Ray's own retries are off: netslim resubmits a lost trial itself (counted, logged, bounded).
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_one)
        return ray

    def close(self) -> None:
        """Free the shared object; the Ray runtime stays up for later searches in this process."""
        self._shared_ref = None


class RayPool:
    """Trials as Ray tasks: ``submit`` -> an object ref; ``next_done`` -> the first finished ref and
    its result, or :class:`WorkerLost` when its worker or node died (an error raised by the trial
    itself propagates)."""

    def __init__(self, ray, remote, fn: TrialFn, shared_ref, seed: int, threads: int):
        self.ray, self.remote, self.fn, self.shared_ref = ray, remote, fn, shared_ref
        self.seed, self.threads = seed, threads
        ex = ray.exceptions
        # A dead worker, node or raylet, an OOM kill, a lost result: the trial itself did not fail.
        self.lost = tuple(
            getattr(ex, n)
            for n in (
                "WorkerCrashedError",
                "NodeDiedError",
                "LocalRayletDiedError",
                "OutOfMemoryError",
                "ObjectLostError",
            )
            if hasattr(ex, n)
        )

    def submit(self, index: int, params: dict):
        return self.remote.remote(self.fn, self.shared_ref, params, trial_seed(self.seed, index), self.threads)

    def next_done(self, handles: list) -> tuple[Any, dict | WorkerLost]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        try:
            return ready[0], self.ray.get(ready[0])
        except self.lost as e:
            return ready[0], WorkerLost(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip())


def import_ray():
    try:
        import ray
    except ImportError:
        raise NetslimError(
            "backend 'ray' needs the optional extra: pip install 'netslim[search]' (or use backend: serial)."
        ) from None
    return ray


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast with a clear message instead of Ray's long connection retries."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise bad_param("TrialRunner", "address", "'auto', 'local', 'HOST:PORT' or 'ray://HOST:PORT'", address)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise NetslimError(
            f"Ray cluster address {address!r} cannot be reached ({e.strerror or e}); "
            "check the address or leave 'address' unset for a local runtime."
        ) from None


def init_ray(ray, address: str | None, workers: int) -> None:
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    if address is None or address == "local":
        kwargs["num_cpus"] = workers
        # Workers import netslim from this checkout: give them the same sys.path.
        import netslim

        src = str(Path(netslim.__file__).resolve().parents[1])
        kwargs["runtime_env"] = {
            "env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
        }
    else:
        _check_reachable(address)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as e:
        raise NetslimError(f"Could not start or join Ray at {address or 'local'!r}: {e}") from None
