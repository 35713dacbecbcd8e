"""The content of a report, format-free: figures with their spread, warnings, definitions, tables.

Latency: every latency figure is a median with its IQR (``latency_ms_b1`` and
``latency_ms_b1_iqr``). A warning is raised when an IQR exceeds :data:`SPREAD_WARN` of its
median, or when the final model is more than :data:`SLOWER_WARN` times slower than the
baseline -- both signs of a machine under load.

Sizes: the baseline's and every step's bytes are the size of that stage's safetensors
checkpoint (dense tensors, masks as the run holds them); the final bytes are the size of the
artifact the run wrote last (an export: sparse, ``.nsz``, ...), so the two can differ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from netslim.measure.latency import latency_fields

LATENCY_KEYS = ("latency_ms_b1", "latency_ms_bN")
SPREAD_WARN = 0.25  # IQR / median above this: the timing is not trustworthy
SLOWER_WARN = 10.0  # final / baseline latency above this: implausible for a compressed model
QUIET = (
    "measured under load? Repeat on a quiet machine: netslim bench ARTIFACT --threads 1 --repeats 100 "
    "(and the baseline the same way)."
)


def fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key in ("accuracy", "fidelity") and isinstance(value, float):
        return f"{100 * value:.2f} %" if key == "accuracy" else f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_latency(block: dict[str, Any], key: str) -> str:
    """``0.213 (IQR 0.012)``; a median without its spread says so."""
    v = block.get(key)
    if not isinstance(v, (int, float)):
        return "-"
    iqr = block.get(f"{key}_iqr")
    return f"{v:.3g} (IQR {iqr:.2g})" if isinstance(iqr, (int, float)) else f"{v:.3g} (spread not measured)"


def with_spread(block: dict[str, Any]) -> dict[str, Any]:
    """A copy of a metrics block whose latencies are plain medians with ``*_iqr`` beside them
    (taken from a :class:`~netslim.measure.latency.Latency` where the value is one)."""
    out = dict(block)
    for key in LATENCY_KEYS:
        if key in out and out[key] is not None:
            if hasattr(out[key], "iqr_ms"):
                out.update(latency_fields(key, out[key]))
            else:
                out[key] = float(out[key])
    return out


def normalised(report: dict[str, Any]) -> dict[str, Any]:
    """The report with every latency carrying its spread and with its definitions and warnings."""
    rep = {
        **report,
        "baseline": with_spread(report["baseline"]),
        "final": with_spread(report["final"]),
        "steps": [{**s, "metrics": with_spread(s["metrics"])} for s in report["steps"]],
    }
    rep["definitions"] = definitions(rep)
    rep["warnings"] = step_warnings(rep) + latency_warnings(rep)
    rep["storage_by_kind"] = storage_by_kind(rep["layers"])
    return rep


def _blocks(report: dict[str, Any]):
    yield "baseline", report["baseline"]
    for i, s in enumerate(report["steps"]):
        yield f"step {i + 1} ({s['method']})", s["metrics"]
    yield "final", report["final"]


def step_warnings(report: dict[str, Any]) -> list[str]:
    """What steps flagged in their notes: ``notes["warnings"]`` or ``notes[<key>]["warnings"]``
    (a list of sentences; e.g. the ONNX export's Runtime check above its tolerance)."""
    lines = []
    for i, s in enumerate(report["steps"]):
        notes = s.get("notes") if isinstance(s.get("notes"), dict) else {}
        for block in (notes, *(v for v in notes.values() if isinstance(v, dict))):
            found = block.get("warnings")
            if isinstance(found, list):
                lines += [f"step {i + 1} ({s['method']}): {w}" for w in found if isinstance(w, str)]
    return lines


def latency_warnings(report: dict[str, Any]) -> list[str]:
    lines = []
    for where, block in _blocks(report):
        for key in LATENCY_KEYS:
            med, iqr = block.get(key), block.get(f"{key}_iqr")
            if isinstance(med, (int, float)) and isinstance(iqr, (int, float)) and med > 0 and iqr > SPREAD_WARN * med:
                lines.append(
                    f"{where}: {_label(report, key)} has an IQR of {iqr:.3g} ms, {100 * iqr / med:.0f} % of "
                    f"its median {med:.3g} ms (over {100 * SPREAD_WARN:.0f} %)."
                )
    for key in LATENCY_KEYS:
        b, f = report["baseline"].get(key), report["final"].get(key)
        if isinstance(b, (int, float)) and isinstance(f, (int, float)) and b > 0 and f > SLOWER_WARN * b:
            lines.append(
                f"final {_label(report, key)} is {f / b:.0f}x the baseline's ({f:.3g} vs {b:.3g} ms): "
                f"implausible for a compressed model."
            )
        if isinstance(f, (int, float)) and f"{key}_iqr" not in report["final"]:
            lines.append(f"final {_label(report, key)} is a bare median: its spread was not measured.")
    return lines + [QUIET] if lines else []


def _label(report: dict[str, Any], key: str) -> str:
    return "latency b1" if key == "latency_ms_b1" else f"latency b{report['baseline'].get('batch_N', 'N')}"


def baseline_file(report: dict[str, Any], long: bool = False) -> str:
    """What the baseline's bytes are the size of: OUT/baseline.safetensors, or for a streamed run
    (which writes no copy of its input) the input model's own safetensors files."""
    if (report.get("memory") or {}).get("streamed"):
        return (
            (
                "size of the input model's safetensors files (a streamed run reads them in place and writes no "
                "baseline copy)"
            )
            if long
            else "the input model's safetensors"
        )
    return (
        "file size of OUT/baseline.safetensors (the input model as netslim saves it)"
        if long
        else "baseline.safetensors"
    )


def definitions(report: dict[str, Any]) -> dict[str, str]:
    artifact = Path(str(report["artifact"])).name
    return {
        "baseline bytes": baseline_file(report, long=True),
        "step bytes": "file size of the step's checkpoint OUT/checkpoints/stepNN_<method>.safetensors: the model "
        "as the run holds it (dense tensors; a masked layer stores its weight and its mask)",
        "final bytes": f"file size of the artifact {artifact} (the run's last export, else OUT/model.safetensors); "
        "it differs from the last step's checkpoint when an export stores the model compactly "
        "(sparse, packed, Huffman-coded)",
        "params": "elements: weights at their logical shape plus biases and other parameters (an int4 or CSR "
        "layer counts as many as its fp32 original, never packed bytes)",
        "non-zeros": "non-zero elements of the effective weights (mask applied; CSR: stored values; "
        "quantized: dequantized codes)",
        "bits": "bits of one stored weight value: fp32 32, bf16 16, packed int4 4, int8 8, CSR its value dtype, "
        "shared weights ceil(log2(clusters)) (the fixed-width cluster index; the checkpoint holds it "
        "in uint8/int16, .nsz Huffman-codes it: netslim inspect x.nsz)",
        "stored bytes": "bytes of every tensor a layer saves: codes, indices, scales, zero points, codebooks, "
        "masks and biases",
        "latency": f"median over the repeats with the interquartile range (IQR); {report.get('latency_protocol', '')}",
    }


def storage_by_kind(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for r in layers:
        k = kinds.setdefault(
            r.get("kind") or "(no weight)",
            {"kind": r.get("kind") or "(no weight)", "layers": 0, "params": 0, "stored_bytes": 0},
        )
        k["layers"] += 1
        k["params"] += r["params"]
        k["stored_bytes"] += r.get("stored_bytes", 0)
    return sorted(kinds.values(), key=lambda k: -k["stored_bytes"])


# ------------------------------------------------------------------------------- tables
def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, baseline, final, final/baseline) rows of the headline table."""
    b, f = with_spread(report["baseline"]), with_spread(report["final"])
    rows = []
    labels = {
        report["metric"]: report["metric"],
        "params": "params (elements)",
        "nonzero": "non-zeros",
        "macs": "MACs",
        "size_bytes": f"bytes on disk (file: {baseline_file(report)} / {Path(str(report['artifact'])).name})",
    }
    for key in (report["metric"], "params", "nonzero", "macs", "size_bytes", *LATENCY_KEYS):
        bv, fv = b.get(key), f.get(key)
        ratio = f"{fv / bv:.3f}x" if isinstance(bv, (int, float)) and isinstance(fv, (int, float)) and bv else "-"
        if key in LATENCY_KEYS:
            rows.append((f"{_label(report, key)}, ms (median, IQR)", fmt_latency(b, key), fmt_latency(f, key), ratio))
        else:
            rows.append((labels[key], fmt(bv, key), fmt(fv, key), ratio))
    return rows


def _pct(x: float) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) and not math.isnan(x) else "-"


LAYER_HEADER = [
    "name",
    "type",
    "stored as",
    "shape",
    "params",
    "non-zeros",
    "weight sparsity",
    "bits / weight",
    "stored bytes",
    "MACs",
]


def layer_rows(layers: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-layer table: the report's and ``netslim inspect``'s
    (``layers``: :meth:`LayerStats.as_dict` of :func:`netslim.measure.layer_table` rows)."""
    return LAYER_HEADER, [
        [
            r["name"],
            r["type"],
            r.get("kind", ""),
            "x".join(map(str, r["shape"])),
            fmt(r["params"]),
            fmt(r["nonzero"]),
            _pct(r["sparsity"]) if "sparsity" in r else "-",
            fmt(r["bits"]),
            fmt(r.get("stored_bytes")),
            fmt(r["macs"]),
        ]
        for r in layers
    ]


def sections(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, in report order; ``report`` as :func:`normalised`."""
    metric = report["metric"]
    steps = [
        [
            str(i + 1),
            s["method"],
            f"{s['seconds']:.1f}",
            fmt(s["metrics"].get(metric), metric),
            fmt(s["metrics"].get("params")),
            fmt(s["metrics"].get("nonzero")),
            fmt(s["metrics"].get("size_bytes")),
            fmt_latency(s["metrics"], "latency_ms_b1"),
        ]
        for i, s in enumerate(report["steps"])
    ]
    final = report["final"]
    steps.append(
        [
            "final",
            Path(str(report["artifact"])).name,
            "",
            fmt(final.get(metric), metric),
            fmt(final.get("params")),
            fmt(final.get("nonzero")),
            fmt(final.get("size_bytes")),
            fmt_latency(final, "latency_ms_b1"),
        ]
    )
    total = sum(k["stored_bytes"] for k in report["storage_by_kind"]) or 1
    kinds = [
        [k["kind"], fmt(k["layers"]), fmt(k["params"]), fmt(k["stored_bytes"]), f"{k['stored_bytes'] / total:.1%}"]
        for k in report["storage_by_kind"]
    ]
    skipped = [[s["name"], s["reason"]] for s in report["skipped"]]
    memory = memory_rows(report.get("memory"))
    return [
        ("Summary", ["quantity", "baseline", "final", "final / baseline"], [list(r) for r in summary_rows(report)]),
        (
            "Steps",
            [
                "#",
                "method",
                "seconds",
                metric,
                "params",
                "non-zeros",
                "checkpoint bytes (final: artifact bytes)",
                "latency b1, ms (median, IQR)",
            ],
            steps,
        ),
        ("Layers", *layer_rows(report["layers"])),
        ("Size by storage kind", ["kind", "layers", "params", "stored bytes", "share"], kinds),
        ("Skipped modules", ["module", "reason"], skipped or [["(none)", ""]]),
        *([("Memory and time", MEMORY_HEADER, memory)] if memory else []),
    ]


MEMORY_HEADER = ["stage", "seconds", "peak RSS, MB", "peak RSS / fp32 model", "peak CUDA, MB"]


def memory_rows(memory: dict[str, Any] | None) -> list[list[str]]:
    """One row per stage of the run (measured peak RSS, its ratio to the model's fp32 bytes, peak
    CUDA memory, wall time), then the process's peak and what it held before the model."""
    if not memory:
        return []
    mb = lambda b: "-" if b is None else f"{b / 2**20:,.0f}"  # noqa: E731
    rows = [
        [
            s["stage"],
            f"{s['seconds']:.1f}",
            mb(s["peak_rss_bytes"]),
            fmt(s.get("peak_rss_x_fp32")),
            mb(s.get("peak_cuda_bytes")),
        ]
        for s in memory.get("stages", [])
    ]
    fp32 = memory.get("fp32_model_bytes") or 0
    rows.append(
        [
            "whole run (process high-water mark)",
            "",
            mb(memory.get("process_peak_rss_bytes")),
            fmt(memory.get("process_peak_rss_x_fp32")),
            "",
        ]
    )
    rows.append(
        [
            f"before the model was opened (fp32 model: {mb(fp32)} MB{', streamed' if memory.get('streamed') else ''})",
            "",
            mb(memory.get("rss_before_model_bytes")),
            fmt(round(memory["rss_before_model_bytes"] / fp32, 3)) if fp32 else "-",
            "",
        ]
    )
    return rows
