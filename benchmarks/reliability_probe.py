"""Reliability probe (issue 23): hostile and broken inputs through the real CLI.

Every input runs as its own ``.venv/bin/netslim ...`` process, in a new session, with a
wall-clock timeout (a hang is killed and counted), an address-space limit (RLIMIT_AS, a safety
net: a blow-up fails inside the limit instead of taking the machine) and its peak RSS read from
``os.wait4``. Each outcome is one of:

* ``clean_error``: exit 2 and stderr exactly one line ``netslim: error: ...``;
* ``success_identical`` / ``success_different``: exit 0 on a damaged artifact, and the file then
  loads (in a forked, limited child) with a state dict bit-identical to / different from the
  original (``different_unverified`` when the command had ``--no-verify``, which skips the
  checksums by design: flipped weight bytes then load as different weights, flipped index bytes
  must still be rejected); ``success`` for other inputs;
* ``traceback`` (a Python traceback on stderr), ``segfault`` (SIGSEGV / SIGBUS), ``hang``
  (killed at the timeout), ``other`` (anything else: another exit code, several lines, ...).

Categories: CLI usage errors; hostile / broken recipes; corrupted artifacts of every format
(flips in the length prefix, header, description, integrity record and data; cuts; crafted
huge shapes and sizes with valid checksums; bad CSR indices); bad ``--out``; resume with
changed inputs; corrupt ``state.json``; the user's own bad models and data (the kinds of
tests/test_cli_inputs.py). Per category: inputs, outcome counts, inputs that behaved as
expected, the largest peak RSS of a rejected input (absolute and above the RSS of a bare
``netslim bogus``, the interpreter + torch baseline) and whether errors came before any work
(``--out`` not created, or left as it was).

The inputs reuse the generators of tests/test_fuzz.py and tests/test_cli_inputs.py (so the
probe needs the ``test`` extra: pytest, hypothesis).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reliability_probe.py            # ~10 min, 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reliability_probe.py --quick    # a subset, ~1-2 min
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
NETSLIM = str(Path(sys.executable).parent / "netslim")
AS_LIMIT = 8 << 30  # address space per command (the machine has more; a blow-up stops here)
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "NETSLIM_PROGRESS": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]
    expect: str = "error"  # "error" | "ok" | "error_or_identical" | "no_crash"
    out: Path | None = None  # must not be created (or must stay as it was) when the command fails
    artifact: tuple[str, Path] | None = None  # (format, path): a success is checked for identical weights
    timeout: float = 60.0
    result: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------- running
def _snapshot(path: Path | None):
    if path is None or not (path.exists() or path.is_symlink()):
        return None
    if path.is_file():
        return ("file", path.stat().st_size, path.read_bytes()[:4096])
    return sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.rglob("*")
        if p.is_file() and p.name != ".netslim.lock"
    )  # the lock is no work


# Commands start from a small spawner process, not from this one: Linux charges a child the
# peak RSS of the memory it was forked (or vforked) from until it execs, so a command spawned
# from the probe (torch, transformers loaded: ~300 MB) would report the probe's RSS as its own.
# The spawner (python -S, ~10 MB) forks, limits the address space, execs, and reports wait4's
# ru_maxrss; a command still running at its timeout has its process group killed.
SPAWNER = r"""
import json, os, resource, signal, sys, time
killed = []
def on_timeout(signum, frame):
    killed.append(True)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
signal.signal(signal.SIGALRM, on_timeout)
for line in sys.stdin:
    job = json.loads(line)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_WRONLY)
    killed.clear()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.dup2(null, 1)
            os.dup2(err, 2)
            os.chdir(job["cwd"])
            resource.setrlimit(resource.RLIMIT_AS, (job["as_limit"], job["as_limit"]))
            os.execve(job["argv"][0], job["argv"], job["env"])
        finally:
            os._exit(127)
    os.close(err)
    os.close(null)
    signal.setitimer(signal.ITIMER_REAL, job["timeout"])
    _, status, usage = os.wait4(pid, 0)  # retried after the alarm's handler (PEP 475)
    signal.setitimer(signal.ITIMER_REAL, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "killed": bool(killed),
                      "wall_s": round(time.perf_counter() - start, 2), "maxrss_kb": usage.ru_maxrss}), flush=True)
"""
_spawners = threading.local()
_all_spawners: list[subprocess.Popen] = []


def _spawn(argv: list[str], stderr: Path, cwd: Path, timeout: float) -> dict:
    sp = getattr(_spawners, "proc", None)
    if sp is None or sp.poll() is not None:
        sp = _spawners.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", SPAWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        _all_spawners.append(sp)
    job = {"argv": argv, "stderr": str(stderr), "cwd": str(cwd), "timeout": timeout, "as_limit": AS_LIMIT, "env": ENV}
    sp.stdin.write(json.dumps(job) + "\n")
    sp.stdin.flush()
    return json.loads(sp.stdout.readline())


def execute(case: Case, workdir: Path) -> dict:
    """Run the command; rc, signal, wall time, peak RSS and stderr (its first 64 KiB)."""
    before = _snapshot(case.out)
    err_path = workdir / "stderr" / f"{case.category}.{case.name}.txt"
    err_path.parent.mkdir(exist_ok=True)
    r = _spawn([NETSLIM, *case.argv], err_path, workdir, case.timeout)
    size = err_path.stat().st_size
    with open(err_path, "rb") as f:
        stderr = f.read(1 << 16).decode("utf-8", "replace")
    return {
        "rc": r["rc"],
        "killed": r["killed"],
        "wall_s": r["wall_s"],
        "peak_rss_mb": round(r["maxrss_kb"] / 1024, 1),
        "stderr": stderr,
        "stderr_bytes": size,
        "out_untouched": before == _snapshot(case.out),
    }


def classify(r: dict) -> str:
    if r["killed"]:
        return "hang"
    if r["rc"] in (-signal.SIGSEGV, -signal.SIGBUS):
        return "segfault"
    if "Traceback (most recent call last)" in r["stderr"]:
        return "traceback"
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    if r["rc"] == 2 and len(lines) == 1 and lines[0].startswith("netslim: error: ") and r["stderr_bytes"] < 4000:
        return "clean_error"
    if r["rc"] == 0:
        return "success"
    return "other"


def as_expected(case: Case, outcome: str) -> bool:
    if case.expect == "ok":
        return outcome.startswith("success") and outcome != "success_different"
    if case.expect == "error":
        return outcome == "clean_error"
    if case.expect == "error_or_identical":
        return outcome in ("clean_error", "success_identical")
    return outcome in ("clean_error", "success_identical", "different_unverified")  # no_crash (--no-verify)


def run_all(cases: list[Case], workdir: Path, jobs: int) -> None:
    def one(case: Case):
        case.result = execute(case, workdir)
        case.result["outcome"] = classify(case.result)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, cases))


def check_identity(cases: list[Case], pristine: dict[str, Path]) -> None:
    """Damaged artifacts the CLI accepted: identical weights, or silently different?"""
    import test_fuzz as fz

    todo = [c for c in cases if c.artifact and c.result["outcome"] == "success"]
    if not todo:
        return
    worker = fz.Worker(pristine)
    try:
        for c in todo:
            fmt, path = c.artifact
            got = worker.load(path, fmt, verify=True)
            if got["load"] == "rejected":  # accepted by a --no-verify command: load it as that did
                got = worker.load(path, fmt, verify=False)
            different = "different_unverified" if "--no-verify" in c.argv else "success_different"
            c.result["outcome"] = {"same": "success_identical", "different": different}.get(got["load"], "success")
            c.result["reload"] = got["load"]
    finally:
        worker.close()


# ------------------------------------------------------------------------------- inputs
RECIPE_OK = "name: probe\nmeasure: {batch_size: 4, repeats: 1}\nsteps:\n  - method: evaluate\n"
RECIPE_PRUNE = (
    "name: probe\nmeasure: {batch_size: 4, repeats: 1}\nsteps:\n  - method: magnitude\n"
    "    sparsity: 0.5\n  - method: evaluate\n"
)
STEPS_HEAD = "name: probe\nmeasure: {batch_size: 4, repeats: 1}\nsteps:\n  - method: magnitude\n    sparsity: 0.5\n"


def make_artifacts(d: Path) -> dict[str, Path]:
    """The six formats of the fuzz suite, saved with their model and dataset (so eval runs)."""
    import test_fuzz as fz

    import netslim
    from netslim.codec import export_nsz

    out = {}
    for fmt, build in fz.BUILDERS.items():
        model = "lenet5" if fmt in ("static8", "nsz") else "lenet300"
        info = {"model": model, "dataset": "fashion-mnist"}
        if fmt == "nsz":
            out[fmt] = export_nsz(build(), d / "nsz.nsz", info)
        else:
            out[fmt] = netslim.save(build(), d / f"{fmt}.safetensors", info)
    return out


def usage_cases(d: Path, art: Path, quick: bool) -> list[Case]:
    out = d / "out_usage"
    rows = [
        ("unknown_command", ["bogus"]),
        ("eval_no_argument", ["eval"]),
        ("compress_no_argument", ["compress"]),
        ("inspect_no_argument", ["inspect"]),
        ("limit_not_a_number", ["eval", art, "--limit", "abc"]),
        ("limit_negative", ["eval", art, "--limit", "-5"]),
        ("limit_zero", ["eval", art, "--limit", "0"]),
        ("limit_float", ["eval", art, "--limit", "1e3"]),
        ("limit_30_digits", ["eval", art, "--limit", "9" * 30]),
        ("limit_without_value", ["eval", art, "--limit"]),
        ("unknown_option", ["eval", art, "--frobnicate"]),
        ("split_bogus", ["eval", art, "--split", "bogus"]),
        ("batch_size_zero", ["bench", art, "--batch-size", "0"]),
        ("repeats_negative", ["bench", art, "--repeats", "-1"]),
        ("threads_zero", ["bench", art, "--threads", "0"]),
        ("epochs_negative", ["train", "lenet300", "--epochs", "-1", "--out", str(out / "m.safetensors")]),
        ("lr_nan", ["train", "lenet300", "--lr", "nan", "--out", str(out / "m.safetensors")]),
        ("seed_negative", ["train", "lenet300", "--seed", "-1", "--out", str(out / "m.safetensors")]),
        ("task_bogus", ["compress", str(d / "ok.yaml"), "--model", art, "--task", "bogus", "--out", str(out)]),
        (
            "compress_limit_negative",
            ["compress", str(d / "ok.yaml"), "--model", art, "--limit", "-5", "--out", str(out)],
        ),
        ("artifact_missing", ["eval", str(d / "nothing.safetensors")]),
        ("artifact_is_a_directory", ["inspect", str(d)]),
        ("recipes_extra_argument", ["recipes", "extra"]),
        ("recipe_name_unknown", ["compress", "no_such_recipe", "--model", art, "--out", str(out)]),
    ]
    cases = [Case("cli_usage", n, [str(a) for a in argv], out=out) for n, argv in rows]
    cases += [
        Case("cli_usage", "control_help", ["--help"], "ok"),
        Case("cli_usage", "control_no_arguments", [], "ok"),
        Case("cli_usage", "control_recipes", ["recipes"], "ok"),
    ]
    return cases[:4] + cases[-1:] if quick else cases


def recipe_texts() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, expectation)."""
    import test_fuzz as fz

    ok = RECIPE_OK.encode()
    step = "  - method: {}\n"
    texts = {
        "latin1": ("name: caf\xe9\n" + RECIPE_OK[12:]).encode("latin-1"),
        "utf16_bom": RECIPE_OK.encode("utf-16"),
        "utf16_no_bom": RECIPE_OK.encode("utf-16-le"),
        "utf32": RECIPE_OK.encode("utf-32"),
        "binary_garbage": random.Random(1).randbytes(512),
        "empty": b"",
        "only_a_comment": b"# nothing\n",
        "null_document": b"null\n",
        "a_list": b"- method: evaluate\n",
        "two_documents": ok + b"---\n" + ok,
        "control_character": ok.replace(b"probe", b"pro\x07be"),
        "billion_laughs_9x9": fz._billion_laughs(9, 9).encode() + ok,
        "billion_laughs_wide": fz._billion_laughs(40, 6).encode() + ok,
        "recursive_alias": b"loop: &a [*a]\n" + ok,
        "deep_flow_nesting_100k": fz._nested(100_000, True).encode() + ok,
        "deep_block_nesting_1000": fz._nested(1000, False).encode() + ok,
        "duplicate_top_level_key": ok + b"name: again\n",
        "duplicate_key_in_step": (STEPS_HEAD + "    sparsity: 0.9\n").encode(),
        "epochs_1e12": (STEPS_HEAD + step.format("finetune") + "    epochs: 1000000000000\n").encode(),
        "sparsity_1e400": RECIPE_PRUNE.replace("0.5", "1e400").encode(),
        "seed_1e100": ok + b"seed: " + b"1" + b"0" * 100 + b"\n",
        "number_100k_digits": ok + b"seed: " + b"9" * 100_000 + b"\n",
        "file_2mib": ok + b"#" + b"x" * (2 << 20) + b"\n",
        "python_tag": b"name: !!python/object/apply:os.system ['true']\n" + ok[12:],
        "unknown_method": (STEPS_HEAD + step.format("frobnicate")).encode(),
        "unknown_field": (STEPS_HEAD + "    sparsityy: 0.9\n").encode(),
        "steps_empty": b"name: probe\nsteps: []\n",
        "steps_a_string": b"name: probe\nsteps: evaluate\n",
        "non_string_key": (STEPS_HEAD + "    1: 2\n").encode(),
        "data_limit_negative": ok + b"data: {limit: -5}\n",
        "data_limit_zero": ok + b"data: {limit: 0}\n",
        "measure_batch_zero": ok.replace(b"batch_size: 4", b"batch_size: 0"),
        "bad_regex_selector": (STEPS_HEAD + "    include: 're:fc(1'\n" + step.format("evaluate")).encode(),
        "selector_matches_nothing": (STEPS_HEAD + "    include: fc9\n" + step.format("evaluate")).encode(),
        "nm_not_divisible": (STEPS_HEAD + step.format("nm") + "    n: 2\n    m: 64\n").encode(),
        "schedule_after_the_run": (
            STEPS_HEAD + step.format("gradual") + "    epochs: 1\n    start_step: 5000\n    end_step: 6000\n"
        ).encode(),
        "rigl_end_after_the_run": (STEPS_HEAD + step.format("rigl") + "    epochs: 1\n    end_step: 10000\n").encode(),
        "prune_after_share": (
            b"name: probe\nsteps:\n  - method: share\n    bits: 4\n  - method: magnitude\n    sparsity: 0.5\n"
        ),
    }
    expect = {
        "control_utf8_bom": (b"\xef\xbb\xbf" + ok, "ok"),
        "control_ok": (ok, "ok"),
        "control_anchors": (b"name: &n probe\ndescription: *n\n" + ok[ok.index(b"measure") :], "ok"),
    }
    return {**{k: (v, "error") for k, v in texts.items()}, **expect}


def recipe_cases(d: Path, art: Path, quick: bool) -> list[Case]:
    cases = []
    keep = ("billion_laughs_9x9", "utf16_bom", "nm_not_divisible", "non_string_key", "control_ok")
    for name, (text, expect) in recipe_texts().items():
        if quick and name not in keep:
            continue
        path = d / "recipes" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text)
        out = d / "out_recipes" / name
        cases.append(
            Case(
                "recipes",
                name,
                ["compress", str(path), "--model", str(art), "--limit", "64", "--out", str(out)],
                expect,
                out=out,
            )
        )
    return cases


def _crafted(fmt: str, src: Path, dst: Path) -> dict[str, Path]:
    """Files with *valid* checksums that lie: sizes, types, nesting, CSR indices."""
    import test_fuzz as fz
    from safetensors.torch import load_file

    out = {}
    desc, tensors = fz._raw_description(src), load_file(str(src))
    big = max(tensors, key=lambda k: tensors[k].numel())
    out["huge_shape_in_header"] = fz._rewrite_header(src.read_bytes(), (sorted(tensors).index(big), "shape", [2**40]))
    mods = desc["modules"]
    crafts = {
        "nested_info_10k": lambda d: d["info"].update(deep=fz._nested(10_000, True)),
        "arch_kwargs_huge": lambda d: d["arch"]["kwargs"].update(num_classes=10**12),
        "module_type_os_system": lambda d: d["modules"].update(fc1={"type": "os.system", "kwargs": {}}),
    }
    if mods:
        first = sorted(mods)[0]
        size_key = next((k for k in ("in_features", "in_channels") if k in mods[first]["kwargs"]), None)
        if size_key:
            crafts[f"module_{size_key}_1e9"] = lambda d: d["modules"][first]["kwargs"].update({size_key: 10**9})
    if fmt == "static8":
        crafts["conv_padding_475552"] = lambda d: d["modules"]["conv2"]["kwargs"].update(padding=[0, 475552])
    for name, mutate in crafts.items():
        d = json.loads(json.dumps(desc))
        mutate(d)
        out[name] = fz._write_crafted(src, dst / f"{fmt}.{name}.safetensors", d, tensors)
    if fmt == "sparse":
        for name, edit in {
            "col_idx_out_of_range": ("fc1.col_idx", "set", 5, 784),
            "col_idx_negative": ("fc1.col_idx", "set", 9, -1),
            "crow_not_monotonic": ("fc2.crow", "swap", 40, 0),
            "crow_truncated": ("fc1.crow", "truncate", 150, 0),
            "crow_shifted": ("fc2.crow", "shift", 0, 7),
        }.items():
            t = dict(tensors)
            t[edit[0]] = fz._edit_index(t[edit[0]], edit)
            out[name] = fz._write_crafted(src, dst / f"{fmt}.{name}.safetensors", desc, t)
    return out


def artifact_cases(d: Path, arts: dict[str, Path], quick: bool) -> list[Case]:
    import test_fuzz as fz

    rng = random.Random(23)
    folder = d / "damaged"
    folder.mkdir(exist_ok=True)
    cases = []
    for fmt, src in arts.items():
        data = src.read_bytes()
        damaged: dict[str, bytes | Path] = {}
        regions = ("head", "any") if fmt == "nsz" else ("length", "header", "description", "integrity", "data")
        per_region = 1 if quick else (6 if fmt == "nsz" else 4)
        for region in regions:
            for i in range(per_region):
                damaged[f"flip_{region}_{i}"] = fz.damage(
                    data, fmt, ("flip", region, rng.randrange(2**32), rng.randrange(1, 256))
                )
        for i in range(1 if quick else 4):
            damaged[f"cut_{i}"] = data[: rng.randrange(len(data))]
        damaged["append_garbage"] = data + b"\x00garbage"
        if fmt != "nsz" and not quick:
            damaged.update(_crafted(fmt, src, folder))
        for i, (name, content) in enumerate(damaged.items()):
            path = content if isinstance(content, Path) else folder / f"{fmt}.{name}{src.suffix}"
            if not isinstance(content, Path):
                path.write_bytes(content)
            command = (
                ["eval", str(path), "--limit", "32"]
                if i % 3 == 0 or fmt in ("sparse", "static8")
                else ["inspect", str(path)]
            )
            cases.append(
                Case("artifacts", f"{fmt}.{name}.{command[0]}", command, "error_or_identical", artifact=(fmt, path))
            )
            if fmt in ("sparse", "static8", "dyn8", "int4") and name.startswith(("flip_data", "col_idx", "crow")):
                cases.append(
                    Case(
                        "artifacts",
                        f"{fmt}.{name}.eval_no_verify",
                        ["eval", str(path), "--limit", "32", "--no-verify"],
                        "no_crash",
                        artifact=(fmt, path),
                    )
                )
        cases.append(Case("artifacts", f"{fmt}.control_pristine", ["eval", str(src), "--limit", "32"], "ok"))
    return cases


def out_cases(d: Path, art: Path, quick: bool) -> list[Case]:
    recipe = str(d / "ok.yaml")
    existing = d / "existing_file.txt"
    existing.write_text("keep me\n")
    (d / "a_file").write_text("x")
    rows = {
        "existing_file": existing,
        "under_proc": Path("/proc/netslim_probe/out"),
        "proc_self_status": Path("/proc/self/status"),
        "dev_null": Path("/dev/null"),
        "under_a_file": d / "a_file" / "sub",
    }
    cases = [
        Case(
            "out_dir",
            name,
            ["compress", recipe, "--model", str(art), "--limit", "64", "--out", str(out)],
            out=None if str(out).startswith(("/proc", "/dev")) else out,
        )
        for name, out in rows.items()
    ]
    cases.append(
        Case(
            "out_dir",
            "control_fresh",
            ["compress", recipe, "--model", str(art), "--limit", "64", "--out", str(d / "out_fresh")],
            "ok",
        )
    )
    return cases[:2] + cases[-1:] if quick else cases


def locked_out_cases(d: Path, art: Path, workdir: Path) -> list[Case]:
    """A run into an OUT that another process holds locked, and two runs started together."""
    out = d / "out_locked"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(out / '.netslim.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(300)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        holder.stdout.readline()
        case = Case(
            "out_dir",
            "locked_by_another_process",
            ["compress", str(d / "ok.yaml"), "--model", str(art), "--limit", "64", "--out", str(out)],
            out=out,
        )
        case.result = execute(case, workdir)
        case.result["outcome"] = classify(case.result)
    finally:
        holder.kill()
        holder.wait()
    slow = d / "slow.yaml"
    slow.write_text(STEPS_HEAD + "  - method: finetune\n    epochs: 1\n  - method: evaluate\n")
    together = d / "out_together"
    pair = [
        Case(
            "out_dir",
            f"two_runs_at_once_{i}",
            ["compress", str(slow), "--model", str(art), "--limit", "1024", "--out", str(together)],
            "error_or_ok",
        )
        for i in (1, 2)
    ]
    run_all(pair, workdir, 2)
    first_ok = next((c for c in pair if c.result["outcome"] == "success"), pair[0])
    for c in pair:  # exactly one of the two runs, the other fails at once
        c.expect = "ok" if c is first_ok else "error"
    return [case, *pair]


def resume_cases(d: Path, art: Path, other_art: Path, workdir: Path, quick: bool) -> list[Case]:
    """A finished run (magnitude + evaluate, --limit 64), then resumes with changed inputs, and
    corrupt state.json files; each on its own copy of the finished folder."""
    base_out = d / "out_finished"
    recipe = d / "prune.yaml"
    setup = Case(
        "resume", "setup", ["compress", str(recipe), "--model", str(art), "--limit", "64", "--out", str(base_out)], "ok"
    )
    setup.result = execute(setup, workdir)
    changed = d / "prune_changed.yaml"
    changed.write_text(RECIPE_PRUNE.replace("0.5", "0.7"))
    args = ["--model", str(art), "--limit", "64"]
    rows = [
        ("resume", "changed_limit", [str(recipe), "--model", str(art), "--limit", "128", "--resume"], "error"),
        ("resume", "changed_recipe", [str(changed), *args, "--resume"], "error"),
        ("resume", "changed_model", [str(recipe), "--model", str(other_art), "--limit", "64", "--resume"], "error"),
        ("resume", "fresh_run_into_a_finished_out", [str(recipe), *args], "error"),
        ("resume", "control_same_inputs", [str(recipe), *args, "--resume"], "ok"),
        (
            "resume",
            "control_changed_limit_with_force",
            [str(recipe), "--model", str(art), "--limit", "128", "--resume", "--force"],
            "ok",
        ),
    ]
    states = {
        "garbage_bytes": random.Random(2).randbytes(300),
        "truncated": b'{"steps": [{"name": "magn',
        "empty": b"",
        "a_list": b"[]",
        "wrong_types": b'{"steps": "x", "fingerprint": 5}',
        "deep_nesting": b"[" * 100_000 + b"]" * 100_000,
        "nan_and_huge": b'{"steps": [NaN, 1e999]}',
        "not_utf8": b'{"steps": "\xff\xfe"}',
    }
    rows += [("state_json", f"corrupt_{k}", [str(recipe), *args, "--resume"], "error") for k in states]
    if quick:
        rows = [r for r in rows if r[1] in ("changed_limit", "control_same_inputs", "corrupt_garbage_bytes")]
    cases = []
    for category, name, argv, expect in rows:
        out = d / f"out_{category}_{name}"
        if setup.result.get("rc") == 0:
            shutil.copytree(base_out, out)
        if name.startswith("corrupt_"):
            (out / "state.json").write_bytes(states[name[len("corrupt_") :]])
        cases.append(
            Case(category, name, ["compress", *argv, "--out", str(out)], expect, out=out if expect == "error" else None)
        )
    return cases


def user_input_cases(d: Path, quick: bool) -> list[Case]:
    import test_cli_inputs as ci
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bars
    d = d / "user"
    d.mkdir()
    ci._models(d)
    ci._data(d)
    outs = d / "out_user"
    rows = [(n, line, "error") for n, line, *_ in ci.CASES] + [(n, line, "ok") for n, line in ci.CONTROLS]
    if quick:
        rows = rows[:3] + rows[-1:]
    return [
        Case(
            "user_inputs",
            n,
            shlex.split(line.format(d=d, out=outs / n)),
            expect,
            out=outs / n if expect == "error" else None,
            timeout=120,
        )
        for n, line, expect in rows
    ]


# ------------------------------------------------------------------------------- summary


COLUMNS = {
    "clean_error": "clean error (exit 2, one line)",
    "success_identical": "loaded, identical model",
    "success": "success (controls)",
    "different_unverified": "different weights under --no-verify (documented)",
    "success_different": "silently different weights",
    "traceback": "traceback",
    "segfault": "segfault",
    "hang": "hang",
    "other": "other",
}


def summarize(cases: list[Case], baseline_mb: float) -> dict:
    cats: dict[str, dict] = {}
    for c in cases:
        s = cats.setdefault(
            c.category,
            {
                "inputs": 0,
                "outcomes": {k: 0 for k in COLUMNS},
                "as_expected": 0,
                "max_peak_rss_mb_rejected": 0.0,
                "errors_before_work": [0, 0],
                "unexpected": [],
            },
        )
        r, outcome = c.result, c.result["outcome"]
        s["inputs"] += 1
        s["outcomes"][outcome] += 1
        ok = as_expected(c, outcome)
        s["as_expected"] += ok
        if outcome == "clean_error":
            s["max_peak_rss_mb_rejected"] = max(s["max_peak_rss_mb_rejected"], r["peak_rss_mb"])
            if c.out is not None:
                s["errors_before_work"][0] += r["out_untouched"]
                s["errors_before_work"][1] += 1
        if not ok:
            first = (r["stderr"].strip().splitlines() or [""])[-1 if outcome == "traceback" else 0]
            s["unexpected"].append(
                {"name": c.name, "outcome": outcome, "rc": r["rc"], "wall_s": r["wall_s"], "stderr": first[:300]}
            )
    for s in cats.values():
        s["max_peak_rss_over_baseline_mb"] = round(max(0.0, s["max_peak_rss_mb_rejected"] - baseline_mb), 1)
        s["outcomes"] = {k: v for k, v in s["outcomes"].items() if v}
        s["errors_before_work"] = "{}/{}".format(*s["errors_before_work"])
    return cats


def kind(case: dict) -> str:
    """The input's kind: its name without the running number (``sparse.flip_data_3.eval`` -> ``flip_data``)."""
    name = case["name"]
    if case["category"] == "artifacts":
        name = name.split(".", 1)[1].rsplit(".", 1)[0]
    return re.sub(r"_\d+$", "", name)


def _inputs(cases: list[dict]) -> str:
    counts = Counter(kind(c) for c in cases)
    return ", ".join(f"`{k}`" + (f" ×{n}" if n > 1 else "") for k, n in counts.items())


def markdown(report: dict) -> str:
    """BENCHMARKS.md's tables: one row per category, then per category its inputs by outcome
    (artifacts: per format)."""
    head = [
        "category",
        "inputs",
        "as expected",
        *COLUMNS.values(),
        f"max peak RSS of a rejected input (above the {report['baseline_rss_mb']:.0f} MB of `netslim bogus`)",
        "errors before work",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for name, s in report["categories"].items():
        cells = [
            name,
            s["inputs"],
            s["as_expected"],
            *(s["outcomes"].get(k, 0) for k in COLUMNS),
            f"{s['max_peak_rss_mb_rejected']:.0f} MB (+{s['max_peak_rss_over_baseline_mb']:.0f} MB)",
            s["errors_before_work"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for name in report["categories"]:
        cases = [c for c in report["cases"] if c["category"] == name]
        lines += ["", f"**{name}**", ""]
        if name == "artifacts":
            lines += [
                "| format | inputs | " + " | ".join(COLUMNS.values()) + " | kinds |",
                "|---|--:|" + "--:|" * len(COLUMNS) + "---|",
            ]
            for fmt in dict.fromkeys(c["name"].split(".")[0] for c in cases):
                mine = [c for c in cases if c["name"].startswith(fmt + ".")]
                counts = Counter(c["outcome"] for c in mine)
                lines.append(
                    f"| {fmt} | {len(mine)} | "
                    + " | ".join(str(counts.get(k, 0)) for k in COLUMNS)
                    + f" | {_inputs(mine)} |"
                )
        else:
            lines += ["| outcome | as expected | inputs |", "|---|---|---|"]
            groups = Counter((c["outcome"], c["as_expected"]) for c in cases)
            for (outcome, ok), _ in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
                mine = [c for c in cases if (c["outcome"], c["as_expected"]) == (outcome, ok)]
                lines.append(f"| {COLUMNS[outcome]} | {'yes' if ok else '**no**'} | {_inputs(mine)} |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    import torch

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few inputs per category (development)")
    ap.add_argument("--jobs", type=int, default=2, help="commands run at once")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reliability_probe.json")
    ap.add_argument("--markdown", type=Path, help="also write the per-category table (markdown) here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (inputs, stderr of every command)")
    args = ap.parse_args()

    start, load_start = time.time(), os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="netslim_probe_"))
    cache = Path(os.environ.get("NETSLIM_CACHE", Path.home() / ".cache" / "netslim"))
    ENV["NETSLIM_CACHE"] = str(workdir / "cache")  # nothing written to the user's cache; compiled kernels reused
    if (cache / "ext").is_dir():
        shutil.copytree(cache / "ext", workdir / "cache" / "ext")
    d = workdir / "inputs"
    d.mkdir()
    (d / "ok.yaml").write_text(RECIPE_OK)
    (d / "prune.yaml").write_text(RECIPE_PRUNE)
    arts = make_artifacts(d)
    bogus = Case("baseline", "netslim_bogus", ["bogus"])
    bogus.result = execute(bogus, workdir)
    baseline_mb = bogus.result["peak_rss_mb"]

    cases = (
        usage_cases(d, arts["plain"], args.quick)
        + recipe_cases(d, arts["plain"], args.quick)
        + artifact_cases(d, arts, args.quick)
        + out_cases(d, arts["plain"], args.quick)
    )
    run_all(cases, workdir, args.jobs)
    cases += locked_out_cases(d, arts["plain"], workdir)
    resume = resume_cases(d, arts["plain"], arts["int4"], workdir, args.quick)
    user = user_input_cases(d, args.quick)
    run_all(resume + user, workdir, args.jobs)
    cases += resume + user
    check_identity(cases, arts)
    for sp in _all_spawners:  # end of input: each spawner's loop ends
        sp.stdin.close()
        sp.wait()

    report = {
        "command": " ".join(
            [
                "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", ""),
                ".venv/bin/python",
                *[shlex.quote(a) for a in sys.argv],
            ]
        ),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "jobs": args.jobs,
        "timeout_s": {"default": 60, "user_inputs": 120},
        "address_space_limit_gib": AS_LIMIT >> 30,
        "wall_s": round(time.time() - start, 1),
        "baseline_rss_mb": baseline_mb,
        "inputs": len(cases),
        "categories": summarize(cases, baseline_mb),
        "cases": [
            {
                "category": c.category,
                "name": c.name,
                "expect": c.expect,
                "outcome": c.result["outcome"],
                "as_expected": as_expected(c, c.result["outcome"]),
                "rc": c.result["rc"],
                "wall_s": c.result["wall_s"],
                "peak_rss_mb": c.result["peak_rss_mb"],
                "stderr_bytes": c.result["stderr_bytes"],
                "out_untouched": c.result["out_untouched"],
                "stderr_first_line": (c.result["stderr"].strip().splitlines() or [""])[0][:300],
                "argv": [a.replace(str(workdir), "WORK") for a in c.argv],
            }
            for c in cases
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(report))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    bad = sum(c["inputs"] - c["as_expected"] for c in report["categories"].values())
    print(
        f"{len(cases)} inputs in {report['wall_s']} s; {bad} not as expected; report: {args.out}"
        + (f"; work folder kept: {workdir}" if args.keep else "")
    )


if __name__ == "__main__":
    main()
