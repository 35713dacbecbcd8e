"""A recipe run whose model stays on disk (``stream: true``, or ``auto`` for a model too large
for memory): the runner's steps, measurements and exports for a
:class:`~netslim.core.streaming.StreamedModel`.

* steps: every one-shot method registered for streaming
  (:func:`netslim.core.stream_io.stream_step`) reads one decoder block at a time and writes
  the step's checkpoint as it goes; ``evaluate`` and ``export`` (safetensors, sparse) stream
  too; any other step stops the run before work, naming the in-memory alternative;
* measurements (:func:`streamed_summary`): perplexity by a streamed forward over the
  evaluation tokens in the task's own batches (the numbers of an in-memory forward: same
  blocks, same shapes), params / non-zeros / stored bytes per layer read unit by unit, MACs
  from a forward on the meta device, bytes on disk, and latency as the sum of each block
  timed alone plus the embedding and head (:func:`streamed_latency`; the report names the
  protocol).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.stream_io import (
    IN_MEMORY_HINT,
    STREAM_FRACTION,
    BlockStream,
    available_memory,
    fmt_bytes,
    parse_bytes,
    stream_step,
    streaming_methods,
)
from netslim.core.streaming import StreamedModel, materialize, open_artifact, release

log = logging.getLogger(__name__)
LATENCY_PROTOCOL = (
    "streamed (the model is never whole in memory): per repeat, each decoder block is timed alone on "
    "its real inputs, then the embedding and head with the blocks skipped, and the parts summed "
    "(one warm-up each); median and IQR of the sums"
)
EXPORTS = ("safetensors", "sparse")


# ---------------------------------------------------------------------- deciding
def blockers(recipe: Any) -> list[str]:
    """``step N (method): why`` for every step of ``recipe`` that cannot stream."""
    ok = set(streaming_methods())
    out = []
    for i, step in enumerate(recipe.steps, start=1):
        if step.method == "export" and step.format not in EXPORTS:
            out.append(
                f"step {i} (export format {step.format!r}) cannot stream (streamed exports: {', '.join(EXPORTS)})"
            )
        elif step.method == "weight_only" and getattr(step, "embeddings", False):
            # the skeleton's embedding / LM head are read from the source for measuring; a packed
            # one exists only in the output (streamed evaluation crashed on its meta tensors)
            out.append(
                f"step {i} (weight_only with embeddings: true) cannot stream: a quantized embedding / LM "
                f"head is not measured from the streamed output yet"
            )
        elif step.method not in ok and step.method not in ("evaluate", "export"):
            out.append(
                f"step {i} ({step.method}) cannot stream: it needs the whole model in memory (streamed "
                f"methods: {', '.join(sorted(ok))})"
            )
    return out


def wants_stream(recipe: Any, ref: Any) -> bool:
    """Whether the run streams: ``stream: true`` (every step must stream: a NetslimError naming the
    first that does not), ``false``, or ``auto``: when the model's fp32 size on disk exceeds
    :data:`STREAM_FRACTION` of the available memory and every step streams."""
    from netslim.models.streamed import fp32_bytes_on_disk

    if recipe.stream is False:
        return False
    bad = blockers(recipe)
    if recipe.stream is True:
        if bad:
            raise NetslimError(f"Recipe {recipe.name!r} has stream: true but {bad[0]}; {IN_MEMORY_HINT}.")
        return True
    need = fp32_bytes_on_disk(ref)
    if need is None:
        return False
    room = available_memory()
    if need <= STREAM_FRACTION * room:
        return False
    if bad:
        log.warning(
            "the model (%s in fp32) exceeds %d %% of the available memory (%s) but %s: loading it in memory",
            fmt_bytes(need),
            100 * STREAM_FRACTION,
            fmt_bytes(room),
            bad[0],
        )
        return False
    log.info(
        "streaming: the model (%s in fp32) exceeds %d %% of the available memory (%s)",
        fmt_bytes(need),
        100 * STREAM_FRACTION,
        fmt_bytes(room),
    )
    return True


def budget_of(recipe: Any) -> int:
    """The run's ``memory_budget`` in bytes; default :data:`STREAM_FRACTION` of the available memory."""
    return parse_bytes(recipe.memory_budget) or int(STREAM_FRACTION * available_memory())


def check_task(task: Any) -> None:
    if not (callable(getattr(task, "blocks", None)) and getattr(task, "metric", None) == "perplexity"):
        raise NetslimError(
            f"Streaming runs score causal language models on text (perplexity); the task is "
            f"{type(task).__name__} ({getattr(task, 'metric', '?')}); {IN_MEMORY_HINT}."
        )


def check_budget(recipe: Any, sm: StreamedModel, task: Any, budget: int) -> None:
    """Before any work: one decoder block of every streamed step (and of the evaluation pass)
    fits ``budget`` (a NetslimError naming the step and the amount needed otherwise)."""
    from netslim.core.distributed import world
    from netslim.core.layerwise import decoder_blocks
    from netslim.core.stream_io import streamer

    _, blocks = decoder_blocks(sm.model)
    size = world()[1]
    passes = [("evaluation", task.blocks("test").shape, getattr(task, "eval_batch_size", 1), "none")]
    for i, step in enumerate(recipe.steps, start=1):
        found = streamer(step.method)
        if found is not None and getattr(step, "num_samples", None):
            passes.append(
                (f"step {i} ({step.method})", (step.num_samples // size, step.seq_len), step.batch_size, found[1])
            )
    for where, shape, batch, solver in passes:
        io = BlockStream(sm, None, budget=budget, solver=solver)
        try:
            io.activations_dir(
                sm.model, blocks, torch.empty(tuple(shape), dtype=torch.long, device="meta"), batch, None
            )
        except NetslimError as e:
            raise NetslimError(f"{where}: {e}") from None


# -------------------------------------------------------------------------- steps
def stream_apply(sm: StreamedModel, step: Any, ctx: Any, ckpt: Path, budget: int) -> tuple[StreamedModel, bool]:
    """Apply one step; ``(model, wrote_checkpoint)``. Compressing steps write ``ckpt``;
    ``evaluate`` scores, ``export`` writes the artifact; neither changes the model."""
    if step.method == "evaluate":
        ctx.notes[step.method] = evaluate_streamed(sm, ctx.task, step.split, budget) | {"split": step.split}
        return sm, False
    if step.method == "export":
        path = export_streamed(sm, step, ctx, budget)
        ctx.artifacts.append(path)
        ctx.notes[step.method] = {"path": str(path), "format": step.format, "size_bytes": path.stat().st_size}
        return sm, False
    return stream_step(sm, step, ctx, ckpt, budget=budget), True


def export_streamed(sm: StreamedModel, step: Any, ctx: Any, budget: int) -> Path:
    """``export`` of a streamed model: ``safetensors`` copies the checkpoint the last step wrote
    (a netslim artifact already); ``sparse`` rewrites it block by block with CSR layers."""
    suffix = ".sparse.safetensors" if step.format == "sparse" else ".safetensors"
    path = ctx.out_dir / f"{step.filename}{suffix}"
    if step.format == "sparse":
        from netslim.prune.sparse_stream import export_sparse_streamed

        return export_sparse_streamed(sm, path, ctx.info, budget)
    if not sm.path.is_file():  # no step compressed yet: the original directory, written once as an artifact
        io = BlockStream(sm, _writer(path), budget=budget)
        try:
            return io.finish(ctx.info)
        except BaseException:
            io.writer.abort()
            raise
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        shutil.copyfile(sm.path, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _writer(path: Path):
    from netslim.core.stream_writer import ArtifactWriter

    return ArtifactWriter(path)


# ------------------------------------------------------------------- measurement
class _Skip(nn.Module):
    """A decoder block already run by the streamed pass: hands its input on."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Replay(nn.Module):
    """The last decoder block: returns the streamed pass's outputs, batch by batch in order."""

    def __init__(self, outputs: Any):
        super().__init__()
        self.outputs, self.i = outputs, 0

    def forward(self, hidden_states, *args, **kwargs):
        out = self.outputs.get(self.i)
        self.i += 1
        if out.shape != hidden_states.shape:
            raise NetslimError(
                f"streamed evaluation: batch {self.i} has shape {tuple(hidden_states.shape)}, the "
                f"streamed pass computed {tuple(out.shape)}."
            )
        return out


@torch.no_grad()
def evaluate_streamed(sm: StreamedModel, task: Any, split: str = "test", budget: int | None = None) -> dict[str, float]:
    """``task.evaluate`` of a streamed model: the evaluation tokens run through the decoder
    blocks one block at a time (in the task's own batches), then the task's own forward and
    loss run on the model with its blocks replaced by the results."""
    from netslim.core.layerwise import decoder_blocks, run_sequential

    check_task(task)
    ids = task.blocks(split)
    io = BlockStream(sm, None, budget=budget, scratch=None)
    outputs = run_sequential(
        sm.model, ids, lambda *a: None, batch_size=task.eval_batch_size, stream=io, calibrating=False, desc="evaluate"
    )
    prefix, blocks = decoder_blocks(sm.model)
    originals = list(blocks)
    first = _first_param_owner(sm.model)
    try:
        for j in range(len(blocks)):
            blocks[j] = _Replay(outputs) if j == len(blocks) - 1 else _Skip()
        materialize(sm, first[1], first[0], recurse=False)  # where the task sends its inputs
        with io.outer(blocks):
            return task.evaluate(sm.model, split)
    finally:
        for j, b in enumerate(originals):
            blocks[j] = b
        release(first[1], sm.model)
        outputs.release()


def _first_param_owner(model: nn.Module) -> tuple[str, nn.Module]:
    for name, mod in model.named_modules():
        if any(p is not None for p in mod._parameters.values()):
            return name, mod
    raise NetslimError(f"{type(model).__name__} has no parameters.")


def streamed_layers(sm: StreamedModel, example_inputs: Any, macs_model: nn.Module | None = None) -> tuple[list, dict]:
    """The rows of :func:`netslim.measure.layer_table` and the totals (params, non-zeros, MACs) of
    a streamed model, one unit (the modules outside the blocks, then each block) in memory at a
    time. MACs: a forward of ``macs_model`` (default: the model's skeleton) on the meta device
    (an export's CSR layers cannot run there: its source model stands in, same MACs)."""
    from netslim.core.layerwise import decoder_blocks
    from netslim.measure.counts import layer_row
    from netslim.measure.storage import module_storage

    model = sm.model
    macs = _meta_macs(macs_model if macs_model is not None else model, example_inputs)
    prefix, blocks = decoder_blocks(model)
    inside = {id(m) for m in blocks.modules()}
    stats: dict[str, Any] = {}
    outer = [(n, m) for n, m in model.named_modules() if id(m) not in inside]
    try:
        for n, m in outer:
            if any(t is not None and t.is_meta for t in [*m._parameters.values(), *m._buffers.values()]):
                materialize(sm, m, n, recurse=False)
        seen: set[int] = set()
        for n, m in outer:
            if "parametrizations" not in n.split("."):
                stats[n] = module_storage(m, seen)
    finally:
        for _, m in outer:
            release(m, model)
    for i, block in enumerate(blocks):
        name = f"{prefix}.{i}"
        materialize(sm, block, name)
        try:
            seen = set()
            for n, m in block.named_modules(prefix=name):
                if "parametrizations" not in n.split("."):
                    stats[n] = module_storage(m, seen)
        finally:
            release(block, model)
    found = (layer_row(n, m, stats[n], macs) for n, m in model.named_modules() if n in stats)
    rows = [row for row in found if row is not None]
    totals = {
        "params": sum(s.params for s in stats.values()),
        "nonzero": sum(s.nonzero for s in stats.values()),
        "macs": int(sum(macs.values())) if macs else None,
    }
    return rows, totals


def _meta_macs(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """MACs from a forward on the meta device (shapes only); {} when a layer cannot run there."""
    from netslim.measure.counts import macs_per_layer

    meta = (
        {k: v.to("meta") for k, v in example_inputs.items()}
        if isinstance(example_inputs, dict)
        else example_inputs.to("meta")
    )
    try:
        return macs_per_layer(model, meta)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
        log.info("MACs of the streamed model not counted: a layer cannot run on the meta device (%s)", e)
        return {}


@torch.no_grad()
def streamed_latency(sm: StreamedModel, task: Any, measure: Any, budget: int | None = None) -> dict[str, Any]:
    """``{latency_ms_b1, latency_ms_bN}`` (:class:`~netslim.measure.latency.Timing`) of a streamed
    model on ``task.example_inputs``: per repeat, every decoder block timed alone on its real
    inputs (the previous blocks' outputs) plus the rest of the forward (embedding, head) with the
    blocks skipped, summed; one warm-up per part; ``measure.threads`` pinned."""
    import time

    from netslim.core.layerwise import decoder_blocks, run_sequential
    from netslim.measure.latency import fixed_threads, timing_of

    out = {}
    for key, batch, reps in (
        ("latency_ms_b1", 1, measure.repeats),
        ("latency_ms_bN", measure.batch_size, max(5, measure.repeats // 2)),
    ):
        ids = task.example_inputs(batch)["input_ids"]
        parts: list[list[float]] = []

        def timed(fn, reps: int = reps) -> list[float]:
            fn()  # warm-up
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return times

        with fixed_threads(measure.threads):
            run_sequential(
                sm.model,
                ids,
                lambda i, name, block, feed, parts=parts: parts.append(timed(feed)),
                batch_size=batch,
                stream=BlockStream(sm, None, budget=budget),
                calibrating=False,
                return_outputs=False,
                desc="latency",
            )
            _prefix, blocks = decoder_blocks(sm.model)
            originals = list(blocks)
            first = _first_param_owner(sm.model)
            io = BlockStream(sm, None, budget=budget)
            try:
                for j in range(len(blocks)):
                    blocks[j] = _Skip()
                materialize(sm, first[1], first[0], recurse=False)
                with io.outer(blocks):
                    parts.append(timed(lambda ids=ids: sm.model(input_ids=ids, use_cache=False)))
            finally:
                for j, b in enumerate(originals):
                    blocks[j] = b
                release(first[1], sm.model)
            out[key] = timing_of([sum(p[r] for p in parts) for r in range(reps)], torch.get_num_threads())
    return out


def streamed_summary(
    sm: StreamedModel, task: Any, measure: Any, artifact: str | os.PathLike | None, budget: int | None
) -> dict[str, Any]:
    """The metrics block of a report for a streamed model (see the module docstring)."""
    from netslim.measure.latency import Latency, latency_fields
    from netslim.measure.summary import size_on_disk

    out: dict[str, Any] = {}
    out.update({k: v for k, v in evaluate_streamed(sm, task, "test", budget).items() if k == task.metric})
    _rows, totals = streamed_layers(sm, task.example_inputs(1))
    out.update(totals)
    out["size_bytes"] = size_on_disk(None, artifact) if artifact is not None else sm.source.file_bytes()
    for key, t in streamed_latency(sm, task, measure, budget).items():
        out.update(latency_fields(key, t))
        out[key] = Latency.of(t)
    out["batch_N"] = measure.batch_size
    return out


def reopen(path: str | os.PathLike) -> StreamedModel:
    """A checkpoint this run wrote, streamed again (resume)."""
    return open_artifact(path, verify=True)
