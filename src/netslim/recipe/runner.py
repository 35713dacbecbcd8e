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
from netslim.core.serialize import atomic_write, load, read_description, save
from netslim.measure import interleaved_latency, layer_table, model_summary
from netslim.models import build_model, model_entry
from netslim.recipe.spec import Recipe
from netslim.train.tasks import get_task

log = logging.getLogger(__name__)
STATE = "state.json"


def open_model(ref: str) -> tuple[nn.Module, dict[str, Any]]:
    """A model by zoo name (trained checkpoint from the cache, or packaged weights) or path.

    Returns the model and its info (``model``, ``dataset``) used to pick the task.
    """
    from netslim.train.pretrain import checkpoint_path

    path = Path(ref)
    if path.suffix or path.exists():
        model = load(path)
        info = read_description(path).get("info", {}) if path.suffix == ".safetensors" else {}
        return model, {"model": info.get("model", path.stem), "dataset": info.get("dataset")}
    entry = model_entry(ref)
    if entry.pretrained:
        return build_model(ref), {"model": ref, "dataset": entry.dataset}
    ckpt = checkpoint_path(ref)
    if not ckpt.is_file():
        raise NetslimError(
            f"No trained checkpoint for model {ref!r} at {ckpt}; run `netslim train {ref}` first "
            "(or pass an artifact path with --model)."
        )
    return load(ckpt), {"model": ref, "dataset": entry.dataset}


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


def run_recipe(recipe: Recipe, out_dir: str | Path, *, model_ref: str | None = None,
               resume: bool = False, data_options: dict | None = None) -> dict[str, Any]:
    """Execute ``recipe``; returns the report dict (also written to OUT/report.*)."""
    out = Path(out_dir)
    ref = model_ref or recipe.model
    if ref is None:
        raise NetslimError("No model given: set 'model:' in the recipe or pass --model NAME|PATH.")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE
    state: dict[str, Any] = {}
    if resume:
        if not state_path.is_file():
            raise NetslimError(f"Cannot resume: {state_path} does not exist (no earlier run in {out}).")
        state = json.loads(state_path.read_text())
        if state.get("recipe") != recipe.to_dict() or state.get("model_ref") != ref:
            raise NetslimError(f"Cannot resume: {out} holds a run of a different recipe or model.")

    model, info = open_model(ref)
    dataset = recipe.dataset or info.get("dataset")
    if dataset is None:
        raise NetslimError(f"Model {ref!r} names no dataset; set 'dataset:' in the recipe.")
    options = {**recipe.data, **(data_options or {})}
    task = get_task(dataset, **options)
    info = {"model": info["model"], "dataset": dataset, "recipe": recipe.name}
    reference_path = out / "baseline.safetensors"
    ctx = StepContext(task=task, out_dir=out, seed=recipe.seed, info=info,
                      reference=lambda: load(reference_path))
    torch.manual_seed(recipe.seed)

    if not state:
        save(model, reference_path, info)
        state = {"recipe": recipe.to_dict(), "model_ref": ref, "data": options,
                 "baseline": _measure(model, task, recipe, reference_path), "steps": [], "checkpoint": None,
                 "skipped": []}
        _write_json(state_path, state)
    else:
        if state["checkpoint"]:
            model = load(out / state["checkpoint"])
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
    paired = _paired_latency(load(reference_path), model, task, recipe)
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
    return report
