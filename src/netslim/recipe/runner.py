"""Run a recipe: baseline -> steps (checkpoint after each) -> final artifact -> report.

``OUT/state.json`` records completed steps; ``resume=True`` reloads the last step's
checkpoint and continues after it. Only the latest checkpoint is kept (LLM-sized
checkpoints add up fast).

Under ``torchrun --nproc-per-node N [--nnodes M] -m netslim compress ...`` every rank runs the
recipe and only rank 0 writes (checkpoints, state, artifacts, report). A step runs:

* data-parallel on every rank when its config says so (``data_parallel``: train, finetune,
  distill, qat, gradual, imp, lottery, movement, rigl, set, l0; :mod:`netslim.train.parallel`);
  afterwards every rank is checked to hold the same weights and masks, bit for bit;
* on every rank with the calibration split across them for the one-shot methods
  (:mod:`netslim.core.distributed`);
* on rank 0 alone otherwise (pruning, quantization, factorisation, searches): the other ranks
  wait and load its checkpoint.

``evaluate`` and ``export`` run on rank 0. ``--resume`` works the same: every rank loads the
last checkpoint. Batch sizes that the number of processes does not divide, and calibration
``num_samples`` likewise, are refused before any work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.core import distributed
from netslim.core.config import apply
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError, clip, shown
from netslim.core.serialize import atomic_write, load, save
from netslim.core.streaming import StreamedModel
from netslim.measure import artifact_layer_table, interleaved_latency, model_summary
from netslim.measure.memory import PeakMemory, current_rss, fp32_bytes, high_water_rss
from netslim.models.sources import is_factory_ref
from netslim.models.sources import open_model as resolve_model
from netslim.recipe import streamed
from netslim.recipe.inputs import resolve_task, run_info
from netslim.recipe.preflight import check_recipe
from netslim.recipe.spec import Recipe, check_data_options
from netslim.recipe.steps import ExportConfig

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

log = logging.getLogger(__name__)
STATE = "state.json"
LOCK = ".netslim.lock"  # flock-ed for a run's lifetime; the OS drops it when the process ends
MAX_STATE_BYTES = 64 << 20  # state.json holds per-step metrics: kilobytes


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str)))


def _measure(model, task, recipe: Recipe, artifact: Path | None, memory: dict | None = None) -> dict[str, Any]:
    m = recipe.measure
    if isinstance(model, StreamedModel):
        return streamed.streamed_summary(model, task, m, artifact, (memory or {}).get("memory_budget"))
    return model_summary(model, task, artifact=artifact, batch_size=m.batch_size, threads=m.threads, repeats=m.repeats)


def _paired_latency(baseline, final, task, recipe: Recipe) -> dict[str, dict[str, float]]:
    """Baseline and final latency measured A/B interleaved in one run (shared machines drift:
    two measurements minutes apart are not comparable)."""
    m = recipe.measure
    rounds, reps = 5, max(2, m.repeats // 5)
    out: dict[str, dict[str, float]] = {"baseline": {}, "final": {}}
    for key, batch in (("latency_ms_b1", 1), ("latency_ms_bN", m.batch_size)):
        t = interleaved_latency(
            {"baseline": baseline.eval(), "final": final.eval()},
            task.example_inputs(batch),
            rounds=rounds,
            repeats=reps,
            threads=m.threads,
        )
        out["baseline"][key], out["final"][key] = t["baseline"], t["final"]
    return out


def _model_key(ref: Any) -> str:
    return str(ref) if isinstance(ref, (str, Path)) else f"<{type(ref).__name__} object>"


def run_recipe(recipe: Recipe, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Execute ``recipe``; returns the report dict (also written to OUT/report.*). Keywords as
    :func:`execute_recipe`."""
    return execute_recipe(recipe, out_dir, **kwargs)[0]


def execute_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    model_ref: Any = None,
    resume: bool = False,
    force: bool = False,
    data_options: dict | None = None,
    data: Any = None,
    weights: str | Path | None = None,
    base: Any = None,
    verify: bool = True,
) -> tuple[dict[str, Any], nn.Module]:
    """Execute ``recipe``; returns ``(report, final model)`` (the report is also in OUT/report.*).

    ``model_ref``: anything :func:`netslim.models.sources.open_model` accepts (default: the
    recipe's ``model:``); ``data``: the user's data (see :mod:`netslim.recipe.inputs`);
    ``data_options``: run-level options such as ``limit``. Model and data are resolved before
    ``out_dir`` is created: bad input leaves nothing behind. OUT is locked for the whole run
    (``OUT/.netslim.lock``: a second run into it fails at once). A fresh run refuses an OUT that
    holds another run's state, ``resume`` one whose recipe, model or data differ; ``force``
    overrides both (a forced resume is recorded in the state and the report). ``verify``: check the
    SHA-256 checksums of an artifact given as the model.
    """
    out = Path(out_dir)
    ref = model_ref if model_ref is not None else recipe.model
    if ref is None:
        raise NetslimError("No model given: set 'model:' in the recipe or pass --model NAME|PATH.")
    check_data_options(data_options, "data options")
    _check_out_path(out)
    # Fail before the model loads; checked again (data too, then acted on) once OUT is locked.
    stored_state(out, _fingerprint(recipe, ref, None, data_options), resume=resume, force=force, dry=True)

    rss_before_model = current_rss()
    main = _distributed(recipe)
    sm = _open_streamed(recipe, ref, weights, verify)  # the model stays on disk (netslim.recipe.streamed)
    opened = sm[0] if sm else resolve_model(ref, weights=weights, base=base, verify=verify)
    sm = sm[1] if sm else None
    reference_path = out / "baseline.safetensors"
    reference = None if sm else lambda: load(reference_path, base=opened.base)
    task = resolve_task(
        opened, data=data, recipe_data=recipe.data, dataset=recipe.dataset, options=data_options, reference=reference
    )
    check_recipe(recipe, opened.model, task)  # everything knowable before work: selectors, N:M, schedules
    if sm is not None:
        streamed.check_task(task)
        streamed.check_budget(recipe, sm, task, streamed.budget_of(recipe))
    info = run_info(opened, task, recipe.name, sm.path if sm else reference_path)
    fingerprint = _fingerprint(recipe, ref, info, data_options)
    with contextlib.ExitStack() as run_lock:
        state = _open_out(out, fingerprint, run_lock, resume=resume, force=force, main=main)
        ctx = StepContext(task=task, out_dir=out, seed=recipe.seed, info=info, reference=reference)
        torch.manual_seed(recipe.seed)
        model = sm if sm is not None else opened.model
        memory = {
            "fp32_model_bytes": fp32_bytes(opened.model),
            "rss_before_model_bytes": rss_before_model,
            "memory_budget": streamed.budget_of(recipe) if sm is not None else None,
        }
        if not main and not state:  # another rank of a torchrun: it works with rank 0 and writes nothing
            state = {"steps": [], "checkpoint": None}
        elif not state:
            with PeakMemory() as mem:
                if sm is None:
                    save(model, reference_path, info)
                baseline = _measure(model, task, recipe, reference_path if sm is None else None, memory)
            state = {
                **fingerprint,
                "baseline": baseline,
                "steps": [],
                "checkpoint": None,
                "skipped": [],
                "memory": {**memory, "baseline": mem.as_dict(memory["fp32_model_bytes"])},
            }
            _write_json(out / STATE, state)
        else:
            if state["checkpoint"]:
                model = (
                    streamed.reopen(out / state["checkpoint"])
                    if sm is not None
                    else load(out / state["checkpoint"], base=opened.base)
                )
            ctx.skipped.extend(state.get("skipped", []))
            ctx.artifacts.extend(Path(p) for p in state.get("artifacts", []))
        distributed.barrier()  # torchrun: rank 0 has written the baseline (a teacher / reference) and state
        model = _run_steps(model, recipe, ctx, state, out, memory, main, base=opened.base)
        final_model = model.model if isinstance(model, StreamedModel) else model
        if not main:
            distributed.barrier()  # rank 0 measures and reports
            return {}, final_model
        report = _finish(model, recipe, ctx, state, reference, opened.base, memory)
        distributed.barrier()
        return report, final_model


def _distributed(recipe: Recipe) -> bool:
    """Join a torchrun process group (``WORLD_SIZE`` > 1); True on the rank that writes files.
    Refuses, before any work (and before the group is joined), a data-parallel step whose batch size
    the number of processes does not divide, and a calibration ``num_samples`` likewise."""
    size = distributed.requested_world()
    if size == 1:
        return True
    from netslim.train.parallel import batch_sizes, check_batch_size

    for i, s in enumerate(recipe.steps, 1):
        if _mode(s) == "data-parallel":
            for where, batch in batch_sizes(s):
                try:
                    check_batch_size(batch, size, where)
                except NetslimError as e:
                    raise NetslimError(f"step {i} ({s.method}): {e}") from None
        n = getattr(s, "num_samples", None)
        if isinstance(n, int) and n % size:
            raise NetslimError(
                f"step {i} ({s.method}): num_samples {n} must be a multiple of the number of "
                f"processes ({size}) so that every rank calibrates on an equal share; use "
                f"{max(size, n // size * size)} or {(n // size + 1) * size}, or another --nproc-per-node."
            )
    distributed.init_from_env()
    return distributed.is_main()


def _open_out(
    out: Path, fingerprint: dict, stack: contextlib.ExitStack, *, resume: bool, force: bool, main: bool
) -> dict[str, Any]:
    """Lock OUT (held until ``stack`` closes) and return the state to continue (:func:`stored_state`).
    Under torchrun rank 0 alone does both, and every rank gets its state or its error: the others
    never read OUT while rank 0 writes it."""
    if distributed.world()[1] == 1:
        stack.enter_context(_locked(out))
        return stored_state(out, fingerprint, resume=resume, force=force)
    message, state = None, None
    if main:
        try:
            stack.enter_context(_locked(out))
            state = stored_state(out, fingerprint, resume=resume, force=force)
        except NetslimError as e:
            message = str(e)
    message, state = distributed.broadcast_object((message, state))
    if message is not None:
        raise NetslimError(message)
    if not main and not (out / LOCK).is_file():  # rank 0 holds it by now
        raise NetslimError(
            f"--out {str(out)!r}: rank {distributed.world()[0]} does not see the files rank 0 writes "
            "there; with several machines (torchrun --nnodes) --out must be on a file system they "
            "all share: the other ranks read rank 0's checkpoints from it."
        )
    return state


def _open_streamed(recipe: Recipe, ref: Any, weights: Any, verify: bool):
    """``(opened, streamed model)`` when the run streams (``stream: true``, or ``auto`` and the model
    is too large for memory), else None."""
    if isinstance(ref, nn.Module) or weights is not None or is_factory_ref(str(ref)):
        if recipe.stream is True:
            raise NetslimError(
                "stream: true reads the model's weights from disk (a Hugging Face directory or a "
                "netslim .safetensors artifact); this model is built in memory: set stream: false."
            )
        return None
    if not streamed.wants_stream(recipe, ref):
        return None
    from netslim.models.streamed import open_streamed

    try:
        return open_streamed(ref, verify=verify)
    except NetslimError as e:
        if recipe.stream is True:
            raise
        log.warning("stream: auto: %s cannot stream (%s); loading it in memory", ref, e)  # its own errors follow
        return None


def _fingerprint(recipe: Recipe, ref: Any, info: dict | None, data_options: dict | None) -> dict[str, Any]:
    """What a resumed run must share with the stored one (``info`` None: the part known before
    the model and data are opened)."""
    keys = {"recipe": recipe.to_dict(), "model_ref": _model_key(ref)}
    if info is not None:
        keys.update(
            dataset=info["dataset"],
            data=info.get("data") or info.get("data_options", {}),
            data_options=dict(data_options or {}),
        )
    return json.loads(json.dumps(keys, default=str))  # as stored: comparable with state.json


def stored_state(
    out: Path, fingerprint: dict[str, Any], *, resume: bool, force: bool, dry: bool = False
) -> dict[str, Any]:
    """The state to continue (``{}``: a fresh run), after checking OUT/state.json against
    ``fingerprint``; with ``force`` a differing resume is recorded, a fresh run replaces the
    old one (``dry``: check only, change nothing)."""
    path = out / STATE
    if not resume:
        if not (path.exists() or path.is_symlink()):
            return {}
        if not force:
            raise NetslimError(
                f"{out} holds another run ({path}): --resume continues it, --force replaces it "
                "(or choose another --out)."
            )
        if not dry:
            _discard_run(out, path)
        return {}
    if not path.is_file():
        raise NetslimError(f"Cannot resume: {path} does not exist (no earlier run in {out}).")
    state = _read_state(path, out)
    differ = [k for k, v in fingerprint.items() if k in state and state[k] != v]
    if differ and not force:
        names = " / ".join(_WHAT[k] for k in differ)
        raise NetslimError(
            f"Cannot resume: {out} holds a run with a different {names} than this one "
            f"(stored in {path}); --force resumes anyway, or start a fresh run in another --out."
        )
    done = [r["method"] for r in state["steps"]]
    planned = [s["method"] for s in fingerprint["recipe"]["steps"]]
    if done != planned[: len(done)]:
        raise NetslimError(
            f"Cannot resume, even with --force: the steps done in {out} ({', '.join(done)}) are "
            f"not the first steps of this recipe ({', '.join(planned)})."
        )
    if differ and not dry:
        note = {"resumed_with_different": [_WHAT[k] for k in differ], "previous": {k: state[k] for k in differ}}
        log.warning("%s: resuming with a different %s (--force)", out, " / ".join(note["resumed_with_different"]))
        state = {**state, **fingerprint, "forced": [*state.get("forced", []), note]}
        _write_json(path, state)
    return state


_WHAT = {
    "recipe": "recipe",
    "model_ref": "model",
    "dataset": "dataset",
    "data": "data",
    "data_options": "data options (--limit)",
}


def _mode(step) -> str:
    """How a step runs under torchrun (see the module docstring)."""
    from netslim.core.stream_io import streaming_methods

    if step.method in ("evaluate", "export"):
        return "rank 0"
    if getattr(type(step), "data_parallel", False):
        return "data-parallel"
    return "calibration split" if step.method in streaming_methods() else "rank 0 alone"


def _run_steps(
    model: Any,
    recipe: Recipe,
    ctx: StepContext,
    state: dict,
    out: Path,
    memory: dict,
    main: bool = True,
    base: Any = None,
) -> Any:
    """Apply the steps not done yet, a checkpoint and the state after each (on the rank that
    writes files); peak memory and time of each step and of its measurement recorded. Under
    torchrun, each step as :func:`_mode` says."""
    ranks = distributed.world()[1]
    for i, step in enumerate(recipe.steps):
        if i < len(state["steps"]):
            continue  # done in an earlier run
        log.info("step %d/%d: %s", i + 1, len(recipe.steps), step.method)
        ctx.notes = {}
        ckpt = out / "checkpoints" / f"step{i + 1:02d}_{step.method}.safetensors"
        mode = _mode(step) if ranks > 1 else "one process"
        if isinstance(model, StreamedModel) and mode != "rank 0":
            mode = "calibration split"  # a streamed run: every step streams
        t0 = time.perf_counter()
        wrote = True
        with PeakMemory() as mem:
            try:
                if not main and mode in ("rank 0", "rank 0 alone"):
                    pass  # another rank of a torchrun: rank 0 scores and writes, or runs the step
                elif isinstance(model, StreamedModel):
                    model, wrote = streamed.stream_apply(model, step, ctx, ckpt, memory["memory_budget"])
                elif mode == "rank 0 alone":
                    with distributed.alone():
                        model = apply(model, step, ctx)
                else:
                    model = apply(model, step, ctx)
                if mode == "data-parallel":
                    distributed.check_identical(model, f"step {i + 1} ({step.method})")
            except NetslimError as e:
                raise NetslimError(f"step {i + 1} ({step.method}): {e}") from None
            seconds = time.perf_counter() - t0
            if main and not isinstance(model, StreamedModel):
                save(model, ckpt, ctx.info)
        if mode == "rank 0 alone":
            distributed.barrier()  # its checkpoint is written: the other ranks continue from it
            if not main:
                model = load(ckpt, base=base)
        if not main:
            state["steps"].append({"method": step.method})
            continue
        previous = state["checkpoint"]
        if not wrote:  # a streamed evaluate / export: the model and its checkpoint are the previous step's
            ckpt = out / previous if previous else None
        with PeakMemory() as measured:
            metrics = _measure(model, ctx.task, recipe, ckpt, memory)
        record = {
            "method": step.method,
            "params": step.model_dump(mode="json"),
            "seconds": seconds,
            "metrics": metrics,
            "notes": ctx.notes,
            "memory": {
                "step": mem.as_dict(memory["fp32_model_bytes"]),
                "measure": measured.as_dict(memory["fp32_model_bytes"]),
            },
        }
        if ranks > 1:  # how it ran; "identical": every rank ended with the same weights and masks, bit for bit
            record["torchrun"] = {"processes": ranks, "ran": mode} | (
                {"identical": True} if mode == "data-parallel" else {}
            )
        state["steps"].append(record)
        state["checkpoint"] = str(ckpt.relative_to(out)) if ckpt is not None else None
        state["skipped"] = ctx.skipped
        state["artifacts"] = [str(p) for p in ctx.artifacts]
        _write_json(out / STATE, state)
        # Only once the state names the new checkpoint: a run killed in between resumes cleanly.
        if previous and previous != state["checkpoint"] and (out / previous).exists():
            (out / previous).unlink()
    return model


def _finish(model: Any, recipe: Recipe, ctx: StepContext, state: dict, reference, base, memory: dict) -> dict[str, Any]:
    """The final artifact, its measurements beside the baseline's, and OUT/report.*."""
    task, info, out = ctx.task, ctx.info, ctx.out_dir
    sm = model if isinstance(model, StreamedModel) else None
    with PeakMemory() as mem:
        if ctx.artifacts:
            artifact = ctx.artifacts[-1]
        elif sm is not None:
            artifact = streamed.export_streamed(sm, ExportConfig(filename="model"), ctx, memory["memory_budget"])
        else:
            artifact = save(model, out / "model.safetensors", info)
        final = _measure(model, task, recipe, artifact, memory)
        baseline = dict(state["baseline"])
        if sm is None and recipe.measure.paired:
            paired = _paired_latency(reference(), model, task, recipe)
            baseline.update(paired["baseline"])
            final.update(paired["final"])
        if sm is None:
            layers = artifact_layer_table(artifact, task.example_inputs(1), model=model, base=base)
        else:
            layers = streamed.streamed_layers(streamed.reopen(artifact), task.example_inputs(1), macs_model=sm.model)[0]
    report = {
        "recipe": recipe.name,
        "recipe_spec": recipe.to_dict(),
        "model": info["model"],
        "dataset": info["dataset"],
        "metric": task.metric,
        "artifact": str(artifact),
        "baseline": baseline,
        "final": final,
        "latency_protocol": _latency_protocol(recipe, sm is not None),
        "steps": state["steps"],
        "layers": [r.as_dict() for r in layers],
        "skipped": ctx.skipped,
        "memory": memory_report(state, memory, mem.as_dict(memory["fp32_model_bytes"]), streamed=sm is not None),
    }
    if state.get("forced"):
        report["forced_resume"] = state["forced"]
    from netslim.report import write_report

    write_report(report, out)
    return report


def _latency_protocol(recipe: Recipe, stream: bool) -> str:
    if stream:
        return f"baseline, steps and final: {streamed.LATENCY_PROTOCOL}"
    if not recipe.measure.paired:
        return (
            "baseline, steps and final: one measurement each (median, IQR), one model in memory at a time "
            "(measure.paired: false)"
        )
    return (
        "baseline and final: A/B interleaved, 5 rounds, median and IQR of all repeats pooled; "
        "steps: one measurement each (median, IQR)"
    )


def memory_report(state: dict, memory: dict, final: dict, streamed: bool = False) -> dict[str, Any]:
    """Peak RSS (and CUDA memory) and wall time of every stage of the run, against the model's fp32 bytes."""
    stages = []
    if state.get("memory", {}).get("baseline"):
        stages.append({"stage": "baseline (save + measure)", **state["memory"]["baseline"]})
    for i, s in enumerate(state["steps"], 1):
        for part in ("step", "measure"):
            if s.get("memory", {}).get(part):
                stages.append(
                    {"stage": f"step {i} ({s['method']}){' measure' if part == 'measure' else ''}", **s["memory"][part]}
                )
    stages.append({"stage": "final (artifact + measure)", **final})
    hwm = max([high_water_rss() or 0, *(s["peak_rss_bytes"] for s in stages)])  # the kernel's can trail a sample
    fp32 = memory["fp32_model_bytes"]
    return {
        "fp32_model_bytes": fp32,
        "rss_before_model_bytes": memory["rss_before_model_bytes"],
        "process_peak_rss_bytes": hwm,
        "process_peak_rss_x_fp32": round(hwm / fp32, 3) if hwm and fp32 else None,
        "streamed": streamed,
        "memory_budget": memory.get("memory_budget"),
        "stages": stages,
    }


# ----------------------------------------------------------------- the output directory
def _check_out_path(out: Path) -> None:
    """OUT, or the first of its parents that exists, must be a directory."""
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "--out" if p == out else f"--out {str(out)!r}: its parent"
                raise NetslimError(f"{what} {str(p)!r} exists and is not a directory.")
            return


@contextlib.contextmanager
def _locked(out: Path):
    """Create OUT, check it is writable and hold ``OUT/.netslim.lock`` (flock, non-blocking) while
    the run lasts: a second run into OUT fails at once; a crashed run's lock is gone with it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise NetslimError(
            f"--out {str(out)!r} cannot be created or written ({e.strerror or e}); choose another --out."
        ) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise NetslimError(
                    f"{out} is in use by another netslim run (pid {owner}); wait for it to end or choose another --out."
                ) from None
            except OSError as e:  # a file system without locks: run, unprotected
                log.warning("%s: cannot lock %s (%s); concurrent runs into it are not detected", out, LOCK, e)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_state(path: Path, out: Path) -> dict[str, Any]:
    """OUT/state.json, checked well enough to resume from (a NetslimError otherwise)."""

    def corrupt(why: str) -> NetslimError:
        return NetslimError(
            f"Cannot resume: {path} is unreadable or corrupt ({clip(why, 160)}); start a fresh "
            "run with --force (it replaces the old one) or in another --out."
        )

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
        if len(raw) > MAX_STATE_BYTES:
            raise corrupt(f"larger than {MAX_STATE_BYTES:,} bytes")
        state = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # JSON and UTF-8 errors are ValueErrors
        if isinstance(e, NetslimError):
            raise
        raise corrupt(f"{type(e).__name__}: {e}") from None
    problem = _state_problem(state, out)
    if problem:
        raise corrupt(problem)
    return state


_STATE_TYPES = {"recipe": dict, "model_ref": str, "baseline": dict, "steps": list, "skipped": list}


def _state_problem(state: Any, out: Path) -> str | None:
    """What is wrong with a parsed state.json, or None."""
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, not an object"
    for key, kind in _STATE_TYPES.items():
        if not isinstance(state.get(key), kind):
            return f"{key!r} is missing or not a JSON {'object' if kind is dict else kind.__name__}"
    if not _metrics(state["baseline"]):
        return "'baseline' is not a mapping of metric names to values"
    for i, rec in enumerate(state["steps"], 1):
        if not (
            isinstance(rec, dict)
            and isinstance(rec.get("method"), str)
            and _metrics(rec.get("metrics"))
            and isinstance(rec.get("seconds"), (int, float))
        ):
            return f"step record {i} is not {{method, seconds, metrics, ...}}"
    if not all(isinstance(x, dict) for x in state["skipped"]):
        return "'skipped' is not a list of {name, reason} objects"
    planned = state["recipe"].get("steps")
    planned = [s.get("method") if isinstance(s, dict) else None for s in planned] if isinstance(planned, list) else []
    done = [r["method"] for r in state["steps"]]
    if not planned or done != planned[: len(done)]:
        return "its completed steps are not those of its recipe"
    ckpt, artifacts = state.get("checkpoint"), state.get("artifacts", [])
    if ckpt is not None and not (isinstance(ckpt, str) and (out / ckpt).is_file() and _inside(out, out / ckpt)):
        return f"its checkpoint {shown(ckpt, 80)} is not a file in {out}"
    if not isinstance(artifacts, list):
        return "'artifacts' is not a list"
    for name in artifacts:  # written by export steps into OUT, named as the run named them
        if not (isinstance(name, str) and Path(name).exists() and _inside(out, Path(name))):  # file or hf dir
            return f"its artifact {shown(name, 80)} is not a file in {out}"
    return None


def _metrics(d: Any) -> bool:
    """A non-empty ``{name: value}`` with numbers where ``_measure`` always puts them."""
    return (
        isinstance(d, dict)
        and bool(d)
        and all(isinstance(k, str) for k in d)
        and all(d.get(k) is None or isinstance(d.get(k), (int, float)) for k in ("params", "nonzero", "size_bytes"))
    )


def _inside(out: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(out.resolve())
        return True
    except ValueError:
        return False


def _discard_run(out: Path, path: Path) -> None:
    """--force on a fresh run: remove what the old run left that would mix with the new one
    (its state, its latest checkpoint, its report); nothing outside OUT, no other file."""
    try:
        ckpt = _read_state(path, out).get("checkpoint")
    except NetslimError:  # a corrupt state: no checkpoint to trust
        ckpt = None
    try:
        if isinstance(ckpt, str) and _inside(out / "checkpoints", out / ckpt):
            (out / ckpt).unlink(missing_ok=True)
        for name in (STATE, "report.json", "report.md", "report.html"):
            (out / name).unlink(missing_ok=True)
    except OSError as e:
        raise NetslimError(f"--force: cannot remove the old run in {out} ({e.strerror or e}).") from None
    log.warning("%s: replacing the run that was there (--force)", out)
