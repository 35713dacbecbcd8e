"""The ``share`` recipe step and Deep Compression's per-stage table (the paper's Table 1).

In Python: ``share_weights(model, data, **options) -> model`` (:func:`share_weights`, the
method function; the notes below on ``netslim.report_of(model)``). The step records in
``ctx.notes["share"]``:

* ``layers``: per layer bits, clusters, non-zeros, algorithm, SSE, seconds;
* ``stages``: size and accuracy after pruning (the model the step received), after
  quantization (clustered + fine-tuned) and after Huffman coding (the real ``.nsz``
  bytes, decoded back and checked bit-exact), each with its ratio to the dense fp32
  parameters. "Fixed-width" sizes follow the paper's accounting (32-bit values or
  ``bits``-bit cluster indices, 5/8-bit relative indices with filler entries), summed
  over tensors; "nsz" sizes are whole files;
* ``entropy``: Huffman payload bits versus the Shannon entropy of the coded symbols.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from netslim.api import method_function
from netslim.core.config import register

from .container import encode_model, model_from_bytes
from .modules import SharedWeight
from .records import RecordStats
from .sharing import ShareConfig, cluster_weights, finetune_centroids, on_centroids, round_codebooks, round_dense
from .stage_report import write_stage_report

log = logging.getLogger(__name__)


def dense_param_bytes(model: nn.Module) -> int:
    """fp32 bytes of every parameter of the dense model (masked tensors at full size)."""
    n = 0
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            n += m.weight_index.numel() if isinstance(m, SharedWeight) and name == "codebook" else p.numel()
    return 4 * n


def fixed_width_bytes(stats: list[RecordStats]) -> int:
    return sum(s.fixed_bits for s in stats) // 8


def entropy_summary(stats: list[RecordStats]) -> dict[str, Any]:
    """Huffman payload vs entropy, for cluster indices and positions separately."""
    shared = [s for s in stats if s.kind == "shared"]
    coded = [s for s in stats if s.kind in ("shared", "sparse")]
    w_bits = sum(s.weight_bits for s in shared)
    w_ent = sum(s.weight_entropy_bits for s in shared)
    i_bits = sum(s.index_bits for s in coded)
    i_ent = sum(s.index_entropy_bits for s in coded)
    total_bits, total_ent = w_bits + i_bits, w_ent + i_ent
    tables = sum(s.weight_table_bits + s.index_table_bits for s in coded)
    return {
        "weight_payload_bits": w_bits,
        "weight_entropy_bits": round(w_ent, 1),
        "index_payload_bits": i_bits,
        "index_entropy_bits": round(i_ent, 1),
        "table_bits": tables,
        "payload_over_entropy": total_bits / total_ent if total_ent else 1.0,
    }


def _accuracy(model: nn.Module, task) -> float | None:
    if task is None:
        return None
    return task.evaluate(model, "test")[task.metric]


def bit_exact(model: nn.Module, data: bytes) -> bool:
    """The model decoded from ``data`` has exactly ``model``'s effective tensors."""
    loaded = model_from_bytes(data)
    a, b = model.state_dict(), loaded.state_dict()
    if set(a) != set(b):
        return False
    same = all(torch.equal(a[k].cpu(), b[k]) for k in a if not k.endswith(".codebook"))  # unused centroids: not stored
    mods = dict(loaded.named_modules())
    return same and all(
        torch.equal(m.weight.detach().cpu(), mods[n].weight)
        for n, m in model.named_modules()
        if isinstance(m, SharedWeight)
    )


def _stage_rows(dense: int, pruned: dict, quantized: dict, data: bytes) -> list[dict[str, Any]]:
    rows = [
        dict(stage="dense fp32", bytes=dense, accuracy=pruned.get("dense_accuracy")),
        dict(stage="pruned (fixed-width)", bytes=pruned["fixed"], accuracy=pruned["accuracy"]),
        dict(stage="pruned (.nsz, fp32 values)", bytes=pruned["nsz"], accuracy=pruned["accuracy"]),
        dict(stage="quantized (fixed-width)", bytes=quantized["fixed"], accuracy=quantized["accuracy"]),
        dict(stage="huffman (.nsz)", bytes=len(data), accuracy=quantized["accuracy"]),
    ]
    for r in rows:
        r["ratio"] = round(dense / r["bytes"], 2) if r["bytes"] else None
    return rows


@register(ShareConfig)
def run_share(model: nn.Module, cfg: ShareConfig, ctx) -> nn.Module:
    task = getattr(ctx, "task", None)
    dense = dense_param_bytes(model)
    reference = getattr(ctx, "reference", None)
    info = getattr(ctx, "info", None) or None  # what ``export`` writes: stage bytes == file bytes
    pruned_bytes, pruned_stats = encode_model(model, info)
    pruned = {
        "accuracy": _accuracy(model, task),
        "fixed": fixed_width_bytes(pruned_stats),
        "nsz": len(pruned_bytes),
        "dense_accuracy": _accuracy(reference(), task) if reference is not None else None,
    }
    shared = cluster_weights(model, cfg)
    for s in shared["skipped"]:
        ctx.skip(s["name"], f"share: {s['reason']}")
    clustered_accuracy = _accuracy(model, task)
    train = finetune_centroids(model, task, cfg=cfg.finetune) if task is not None else {"steps": 0}
    if cfg.codebook == "float16":
        round_codebooks(model)
    if cfg.dense == "float16":
        round_dense(model)
    data, stats = encode_model(model, info)
    quantized = {"accuracy": _accuracy(model, task), "fixed": fixed_width_bytes(stats)}
    stages = _stage_rows(dense, pruned, quantized, data)
    notes = ctx.notes[cfg.method] = {
        "layers": shared["layers"],
        "accuracy_before_finetune": clustered_accuracy,
        "finetune": train,
        "stages": stages,
        "entropy": entropy_summary(stats),
        "records": [s.as_dict() for s in stats],
        "on_centroids": on_centroids(model),
        "nsz_bit_exact": bit_exact(model, data),
        "tradeoff": [
            dict(kind="pruning only", ratio=stages[2]["ratio"], accuracy=pruned["accuracy"]),
            dict(kind="pruning + quantization", ratio=stages[-1]["ratio"], accuracy=quantized["accuracy"]),
        ],
    }
    if reference is not None:
        notes["tradeoff"] = _reference_points(reference, cfg, task, dense, pruned["dense_accuracy"]) + notes["tradeoff"]
    if getattr(ctx, "out_dir", None) is not None:
        notes["report"] = write_stage_report(ctx.out_dir, notes)
    log.info("share: %s", stages)
    return model


def _reference_points(reference, cfg: ShareConfig, task, dense: int, accuracy: float | None) -> list[dict[str, Any]]:
    """The dense model as .nsz, and quantization alone: the dense model shared with the
    same settings, without pruning and without centroid fine-tuning."""
    ref = reference()
    points = [dict(kind="dense", ratio=round(dense / len(encode_model(ref)[0]), 2), accuracy=accuracy)]
    cluster_weights(ref, cfg)
    if cfg.codebook == "float16":
        round_codebooks(ref)
    if cfg.dense == "float16":
        round_dense(ref)
    points.append(
        dict(
            kind="quantization only (no fine-tuning)",
            ratio=round(dense / len(encode_model(ref)[0]), 2),
            accuracy=_accuracy(ref, task),
        )
    )
    return points


share_weights = method_function(ShareConfig, "share_weights")
