"""The one record every benchmark script writes: what ran, where, when, on what, and what it measured.

A record is a JSON object::

    {"schema": "netslim-bench/1", "name": "quantize_resnet20_int8",
     "command": "benchmarks/quantize.py resnet20 --only minmax", "argv": [...],
     "started_utc": "2026-12-07T20:15:58Z", "finished_utc": "...", "wall_s": 95.2,
     "git": {"commit": "ac637af...", "dirty": true},
     "machine": {"cpu": "AMD EPYC ...", "logical_cpus": 2, "usable_cpus": 2, "physical_cores": 1,
                 "flags": {"avx512_vnni": true, "amx_int8": false, ...}, "ram_gib": 24.0, ...},
     "load_avg": {"before": [1.02, 1.5, 1.7], "after": [2.1, 1.7, 1.8]},
     "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.23.0", ...},
     "threads": {"torch": 2, "OMP_NUM_THREADS": "1"},
     "metrics": {...what the script measured...}}

Use::

    from record import finish, start, write          # scripts run as benchmarks/NAME.py
    rec = start("quantize_resnet20")                  # load average before, machine, commit, command
    ...                                               # the benchmark
    write(RESULTS / "quantize_resnet20.json", finish(rec, metrics))   # load after, wall time; atomic
    update(RESULTS / "lowrank_distill.json", "svd_lenet300", finish(rec, metrics))  # one key of a shared file

Records written before this helper existed spell the machine load eight ways (``load_avg`` as a
number or a list, ``load_avg_at_measure``, ``load_avg_start_end``, ``load_before`` / ``load_after``,
``load_average_start`` / ``_end``, ``loadavg_1m_end``, ``loadavg_at_measure``,
``loadavg_before_after``); :func:`load_average` reads all of them, :func:`describe` the rest of
what BENCHMARKS.md quotes (date, command, machine). This module imports neither torch nor netslim:
``compose.py`` reads records with it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCHEMA = "netslim-bench/1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# CPU features the figures depend on (int8 / bf16 kernels, AMX tiles); reported present or absent.
FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
VERSIONED = ("torch", "transformers", "compressed-tensors", "numpy", "safetensors", "onnxruntime", "netslim")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ---------------------------------------------------------------------------------- detection
def _cpuinfo() -> list[dict[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        blocks.append(entry)
    return blocks


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_memory_gib() -> float | None:
    """The cgroup v2 memory limit of this process, if one is set (a container's real RAM)."""
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return None if raw == "max" else round(int(raw) / 2**30, 1)


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, the ISA flags that matter here, RAM, OS; detected, never typed in."""
    cpus = _cpuinfo()
    first = cpus[0] if cpus else {}
    flags = set(first.get("flags", "").split())
    cores = {(c.get("physical id"), c.get("core id")) for c in cpus if "core id" in c}
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": first.get("model name") or platform.processor() or platform.machine(),
        "logical_cpus": len(cpus) or os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": len(cores) or None,
        "flags": {f: f in flags for f in FLAGS} if flags else {},
        "ram_gib": _ram_gib(),
        "cgroup_memory_gib": _cgroup_memory_gib(),
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")  # never imported here: only reported when the benchmark uses it
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages the figures depend on (no imports)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.__version__  # the local build tag (+cpu) the wheel metadata may lack
    return out


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """The commit the run started from and whether tracked files differed from it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _command(argv: list[str]) -> str:
    """``argv`` as a shell line, the script path relative to the repository when it lies inside."""
    if argv:
        try:
            argv = [str(Path(argv[0]).resolve().relative_to(ROOT)), *argv[1:]]
        except ValueError:
            pass
    return shlex.join(argv)


# ---------------------------------------------------------------------------------- writing
def start(name: str, argv: list[str] | None = None) -> dict[str, Any]:
    """A new record for ``name``: command, start time, load average before, commit, machine, versions."""
    argv = list(sys.argv if argv is None else argv)
    return {
        "schema": SCHEMA,
        "name": name,
        "command": _command(argv),
        "argv": argv,
        "started_utc": _now(),
        "_t0": time.time(),
        "finished_utc": None,
        "wall_s": None,
        "git": git_state(),
        "machine": machine_info(),
        "load_avg": {"before": _loadavg(), "after": None},
        "versions": versions(),
        "threads": {},
        "metrics": {},
    }


def finish(rec: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Close ``rec``: load average after, end time, wall seconds, thread settings, and ``metrics`` (replacing
    earlier ones). May be called again: a script that writes partial results finishes the record each time."""
    rec["load_avg"]["after"] = _loadavg()
    rec["finished_utc"] = _now()
    rec["wall_s"] = round(time.time() - rec.get("_t0", time.time()), 1)
    torch = sys.modules.get("torch")
    rec["threads"] = {
        **({"torch": torch.get_num_threads()} if torch is not None else {}),
        **{k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }
    if metrics is not None:
        rec["metrics"] = dict(metrics)
    return rec


def _atomic_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def write(path: Path, rec: dict[str, Any]) -> Path:
    """Write one record to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    return _atomic_text(path, json.dumps(_jsonable(rec), indent=2, default=str) + "\n")


def update(path: Path, key: str, rec: dict[str, Any]) -> Path:
    """Set ``key`` of the JSON object at ``path`` (a file of keyed records) to ``rec``, atomically."""
    path = Path(path)
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc[key] = _jsonable(rec)
    return _atomic_text(path, json.dumps(doc, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------- reading
def is_record(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA


def body(obj: dict[str, Any]) -> dict[str, Any]:
    """What was measured: a record's ``metrics``, or a pre-schema file as it is."""
    return obj["metrics"] if is_record(obj) else obj


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return [round(float(value), 2)]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return [round(float(v), 2) for v in value]
    return None


def load_average(obj: dict[str, Any]) -> dict[str, list[float] | None]:
    """``{"before": [...], "after": [...]}`` from any spelling a record used (either may be None).

    A single reading taken at the end or at the measurement (``load_avg`` as a number or a list,
    ``*_at_measure``, ``loadavg_1m_end``) counts as ``after``; lists hold the 1-minute value first.
    """
    found: dict[str, list[float] | None] = {"before": None, "after": None}
    for scope in (obj, obj.get("machine") if isinstance(obj.get("machine"), dict) else {}):
        load = scope.get("load_avg")
        if isinstance(load, dict):  # this schema
            found["before"] = found["before"] or _floats(load.get("before"))
            found["after"] = found["after"] or _floats(load.get("after"))
        elif load is not None:
            found["after"] = found["after"] or _floats(load)
        pairs = scope.get("load_avg_start_end") or scope.get("loadavg_before_after")
        if isinstance(pairs, (list, tuple)) and len(pairs) == 2:
            found["before"] = found["before"] or _floats(pairs[0])
            found["after"] = found["after"] or _floats(pairs[1])
        for key in ("load_before", "load_average_start"):
            found["before"] = found["before"] or _floats(scope.get(key))
        for key in ("load_after", "load_average_end", "loadavg_1m_end", "load_avg_at_measure", "loadavg_at_measure"):
            found["after"] = found["after"] or _floats(scope.get(key))
    return found


def describe(obj: dict[str, Any]) -> dict[str, Any]:
    """Date, command, machine, commit and load of a record or a pre-schema result (None where absent)."""
    machine = obj.get("machine")
    if not isinstance(machine, (dict, str)):
        machine = obj.get("environment", {}).get("cpu") if isinstance(obj.get("environment"), dict) else None
    date = obj.get("started_utc") or obj.get("date") or obj.get("started") or obj.get("measured")
    git = obj.get("git") if isinstance(obj.get("git"), dict) else {"commit": obj.get("git_commit"), "dirty": None}
    return {
        "date": str(date)[:10] if date else None,
        "command": obj.get("command"),
        "machine": machine,
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
        "load_avg": load_average(obj),
    }


def read(path: Path) -> Any:
    """A result file: one JSON document, or a list of objects for ``.jsonl`` (one per line)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)
