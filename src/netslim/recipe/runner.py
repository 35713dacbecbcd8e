"""Run a recipe: baseline -> steps (checkpoint after each) -> final artifact -> report.

``OUT/state.json`` records completed steps; ``resume=True`` reloads the last step's
checkpoint and continues after it. Only the latest checkpoint is kept (LLM-sized
checkpoints add up fast).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from netslim.core.config import apply
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.serialize import atomic_write, load, save
from netslim.measure import interleaved_latency, layer_table, model_summary
from netslim.models.sources import open_model as resolve_model
from netslim.recipe.spec import Recipe
from netslim.recipe.inputs import resolve_task, run_info

log = logging.getLogger(__name__)
STATE = "state.json"


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str)))


def _measure(model, task, recipe: Recipe, artifact: Path) -> dict[str, Any]:
    m = recipe.measure
    return model_summary(model, task, artifact=artifact, batch_size=m.batch_size, threads=m.threads,
                         repeats=m.repeats)


def _paired_latency(baseline, final, task, recipe: Recipe) -> dict[str, dict[str, float]]:
    """Baseline and final latency measured A/B interleaved in one run (shared machines drift:
    two measurements minutes apart are not comparable)."""
    m = recipe.measure
    rounds, reps = 5, max(2, m.repeats // 5)
    out: dict[str, dict[str, float]] = {"baseline": {}, "final": {}}
    for key, batch in (("latency_ms_b1", 1), ("latency_ms_bN", m.batch_size)):
        t = interleaved_latency({"baseline": baseline.eval(), "final": final.eval()}, task.example_inputs(batch),
                                rounds=rounds, repeats=reps, threads=m.threads)
        out["baseline"][key], out["final"][key] = t["baseline"], t["final"]
    return out


def _model_key(ref: Any) -> str:
    return str(ref) if isinstance(ref, (str, Path)) else f"<{type(ref).__name__} object>"


def run_recipe(recipe: Recipe, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Execute ``recipe``; returns the report dict (also written to OUT/report.*). Keywords as
    :func:`execute_recipe`."""
    return execute_recipe(recipe, out_dir, **kwargs)[0]


def execute_recipe(recipe: Recipe, out_dir: str | Path, *, model_ref: Any = None, resume: bool = False,
                   data_options: dict | None = None, data: Any = None, weights: str | Path | None = None,
                   base: Any = None) -> tuple[dict[str, Any], nn.Module]:
    """Execute ``recipe``; returns ``(report, final model)`` (the report is also in OUT/report.*).

    ``model_ref``: anything :func:`netslim.models.sources.open_model` accepts (default: the
    recipe's ``model:``); ``data``: the user's data (see :mod:`netslim.recipe.inputs`);
    ``data_options``: run-level options such as ``limit``. Model and data are resolved before
    ``out_dir`` is created: bad input leaves nothing behind.
    """
    out = Path(out_dir)
    ref = model_ref if model_ref is not None else recipe.model
    if ref is None:
        raise NetslimError("No model given: set 'model:' in the recipe or pass --model NAME|PATH.")
    if out.exists() and not out.is_dir():
        raise NetslimError(f"--out {str(out)!r} exists and is not a directory.")
    state_path = out / STATE
    state: dict[str, Any] = {}
    if resume:
        if not state_path.is_file():
            raise NetslimError(f"Cannot resume: {state_path} does not exist (no earlier run in {out}).")
        state = json.loads(state_path.read_text())
        if state.get("recipe") != recipe.to_dict() or state.get("model_ref") != _model_key(ref):
            raise NetslimError(f"Cannot resume: {out} holds a run of a different recipe or model.")

    opened = resolve_model(ref, weights=weights, base=base)
    model = opened.model
    reference_path = out / "baseline.safetensors"
    reference = lambda: load(reference_path, base=opened.base)  # noqa: E731
    task = resolve_task(opened, data=data, recipe_data=recipe.data, dataset=recipe.dataset,
                        options=data_options, reference=reference)
    info = run_info(opened, task, recipe.name, reference_path)
    dataset = info["dataset"]
    out.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(task=task, out_dir=out, seed=recipe.seed, info=info, reference=reference)
    torch.manual_seed(recipe.seed)

    if not state:
        save(model, reference_path, info)
        state = {"recipe": recipe.to_dict(), "model_ref": _model_key(ref), "data": info.get("data") or
                 info.get("data_options", {}),
                 "baseline": _measure(model, task, recipe, reference_path), "steps": [], "checkpoint": None,
                 "skipped": []}
        _write_json(state_path, state)
    else:
        if state["checkpoint"]:
            model = load(out / state["checkpoint"], base=opened.base)
        ctx.skipped.extend(state.get("skipped", []))
        ctx.artifacts.extend(Path(p) for p in state.get("artifacts", []))

    for i, step in enumerate(recipe.steps):
        if i < len(state["steps"]):
            continue  # done in an earlier run
        log.info("step %d/%d: %s", i + 1, len(recipe.steps), step.method)
        ctx.notes = {}
        t0 = time.perf_counter()
        try:
            model = apply(model, step, ctx)
        except NetslimError as e:
            raise NetslimError(f"step {i + 1} ({step.method}): {e}") from None
        seconds = time.perf_counter() - t0
        ckpt = out / "checkpoints" / f"step{i + 1:02d}_{step.method}.safetensors"
        save(model, ckpt, info)
        previous = state["checkpoint"]
        record = {"method": step.method, "params": step.model_dump(mode="json"), "seconds": seconds,
                  "metrics": _measure(model, task, recipe, ckpt), "notes": ctx.notes}
        state["steps"].append(record)
        state["checkpoint"] = str(ckpt.relative_to(out))
        state["skipped"] = ctx.skipped
        state["artifacts"] = [str(p) for p in ctx.artifacts]
        _write_json(state_path, state)
        # Only once the state names the new checkpoint: a run killed in between resumes cleanly.
        if previous and previous != state["checkpoint"] and (out / previous).exists():
            (out / previous).unlink()

    artifact = ctx.artifacts[-1] if ctx.artifacts else save(model, out / "model.safetensors", info)
    final = _measure(model, task, recipe, artifact)
    baseline = dict(state["baseline"])
    paired = _paired_latency(reference(), model, task, recipe)
    baseline.update(paired["baseline"])
    final.update(paired["final"])
    report = {
        "recipe": recipe.name, "recipe_spec": recipe.to_dict(), "model": info["model"], "dataset": dataset,
        "metric": task.metric, "artifact": str(artifact), "baseline": baseline, "final": final,
        "latency_protocol": "baseline and final: A/B interleaved, 5 rounds, median; steps: one measurement each",
        "steps": state["steps"],
        "layers": [r.as_dict() for r in layer_table(model, task.example_inputs(1))],
        "skipped": ctx.skipped,
    }
    from netslim.report import write_report

    write_report(report, out)
    return report, model
