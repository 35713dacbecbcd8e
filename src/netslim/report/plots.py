"""Report plots (matplotlib, Agg backend, PNG) that stay readable for 6 or 300 layers.

Per-layer bar charts show one bar per layer up to :data:`MAX_BARS` layers. Beyond that,
layers are aggregated (:func:`layer_groups`): per block -- the name up to its first numeric
component, ``model.layers.3.mlp.up_proj`` -> ``model.layers.3`` -- if that leaves at most
:data:`MAX_BARS` groups, else per module type and storage kind. A group's sparsity and
bits are weighted by the weights' element counts. Figures are at most :data:`MAX_WIDTH_IN`
inches wide. The trade-off plot numbers its points and names them in a legend, with the
numbers placed so that none overlaps another.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAX_BARS = 40  # bars of one per-layer chart; more layers are aggregated
MAX_WIDTH_IN = 14.0  # widest figure (inches)
LABEL_CHARS = 28  # longer bar labels keep their tail: "…layers.12.mlp.down_proj"
DPI = 110


def save_figure(fig, path: Path, layout: bool = True) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` (tight layout unless ``layout`` is False) and close it."""
    if layout:  # not after labels were placed by pixel positions: it would move the points
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else "…" + name[-(LABEL_CHARS - 1) :]


def _weights(row: dict[str, Any]) -> int:
    return math.prod(row["shape"]) if row.get("shape") else 0


def block_of(name: str) -> str:
    """The name up to and including its first numeric component (the block it sits in)."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return name


def _aggregate(key: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    weights = sum(_weights(r) for r in rows)
    mean = (lambda f: sum(f(r) * _weights(r) for r in rows) / weights) if weights else (lambda f: 0.0)
    return {
        "name": key,
        "layers": len(rows),
        "params": sum(r["params"] for r in rows),
        "weights": weights,
        "sparsity": mean(lambda r: r.get("sparsity", 0.0)),
        "bits": mean(lambda r: r["bits"]),
        "stored_bytes": sum(r.get("stored_bytes", 0) for r in rows),
    }


def layer_groups(layers: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """``(rule, groups)``: the layers that hold a weight, one group each, per block or per
    type and kind (see the module docstring), in order of first appearance."""
    weighted = [r for r in layers if _weights(r)]
    if len(weighted) <= MAX_BARS:
        return "per layer", [_aggregate(r["name"], [r]) for r in weighted]
    groups = _group_by(weighted, lambda r: block_of(r["name"]))
    rule = "per block"
    if len(groups) > MAX_BARS:
        groups, rule = _group_by(weighted, lambda r: f"{r['type']} ({r.get('kind') or '-'})"), "per module type"
    return f"{rule} ({len(weighted)} layers > {MAX_BARS})", [_aggregate(k, v) for k, v in groups.items()]


def _group_by(rows: list[dict[str, Any]], key) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def _bar(groups: list[dict[str, Any]], field: str, ylabel: str, title: str, path: Path) -> Path:
    n = len(groups)
    fig, ax = plt.subplots(figsize=(min(MAX_WIDTH_IN, max(6.0, 0.3 * n + 2)), 4))
    ax.bar(range(n), [g[field] for g in groups], color="#3b6ea5")
    ax.set_xticks(range(n), [_short(g["name"]) for g in groups], rotation=70, ha="right", fontsize=7 if n <= 25 else 6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def _size_breakdown(layers: list[dict[str, Any]], groups: list[dict[str, Any]], rule: str, path: Path) -> Path:
    """Stored bytes by storage kind (left) and by layer / group, largest eight (right)."""
    kinds: dict[str, int] = {}
    for r in layers:
        kinds[r.get("kind") or "(no weight)"] = kinds.get(r.get("kind") or "(no weight)", 0) + r.get("stored_bytes", 0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    by_kind = sorted(kinds.items(), key=lambda kv: kv[1])
    left.barh([k for k, _ in by_kind], [v / 1024 for _, v in by_kind], color="#6a8f3b")
    left.set_xlabel("KiB stored")
    left.set_title("By storage kind", fontsize=10)
    top = sorted(groups, key=lambda g: g["stored_bytes"], reverse=True)
    rest = sum(g["stored_bytes"] for g in top[8:])
    labels = [_short(g["name"]) for g in top[:8]] + (["(others)"] if rest else [])
    vals = [g["stored_bytes"] for g in top[:8]] + ([rest] if rest else [])
    right.barh(labels[::-1], [v / 1024 for v in vals[::-1]], color="#a5603b")
    right.set_xlabel("KiB stored")
    right.set_title(f"Largest, {rule}", fontsize=10)
    fig.suptitle("Size breakdown: bytes of the tensors each layer stores", fontsize=11)
    return save_figure(fig, path)


def layer_plots(layers: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    rule, groups = layer_groups(layers)
    if not groups:
        return {}
    return {
        "sparsity": _bar(
            groups, "sparsity", "sparsity", f"Weight sparsity (fraction of zero weights), {rule}", out / "sparsity.png"
        ),
        "bits": _bar(groups, "bits", "bits / weight", f"Bits of one stored weight value, {rule}", out / "bits.png"),
        "size": _size_breakdown(layers, groups, rule, out / "size_breakdown.png"),
    }


# ------------------------------------------------------------------------- trade-off
_OFFSETS = [
    (4, 4),
    (4, -11),
    (-11, 4),
    (-11, -11),
    (4, 14),
    (-11, 14),
    (4, -21),
    (-11, -21),
    (14, 4),
    (-21, 4),
    (14, -11),
    (-21, -11),
]


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _place_labels(fig, ax, xs: list[float], ys: list[float], labels: list[str]) -> list:
    """Annotate each point with its label at the first offset whose box overlaps no earlier
    label (labels at equal coordinates are merged, "1,2")."""
    merged: dict[tuple[float, float], list[str]] = {}
    for x, y, lab in zip(xs, ys, labels):
        merged.setdefault((x, y), []).append(lab)
    renderer = fig.canvas.get_renderer()
    placed, texts = [], []
    for (x, y), labs in merged.items():
        text = None
        for off in _OFFSETS + [(4, 4 + 10 * k) for k in range(3, 40)]:
            if text is not None:
                text.remove()
            text = ax.annotate(",".join(labs), (x, y), xytext=off, textcoords="offset points", fontsize=8, color="#222")
            box = text.get_window_extent(renderer)
            if not any(_overlaps(box, b) for b in placed):
                break
        placed.append(text.get_window_extent(renderer))
        texts.append(text)
    return texts


def tradeoff_figure(points: list[tuple[str, float, float]], metric: str):
    """``(fig, ax, texts)``: metric versus size on disk; points numbered 0, 1, ... and named
    in the legend (a sweep draws a curve)."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = [p[1] / 1024 for p in points]
    ys = [float("nan") if p[2] is None else p[2] for p in points]
    ax.plot(xs, ys, "-", color="#3b6ea5", alpha=0.5, zorder=1)
    for i, (label, x, y) in enumerate(zip((p[0] for p in points), xs, ys)):
        ax.plot([x], [y], "o", color="#a5603b" if i == len(points) - 1 else "#3b6ea5", label=f"{i}: {label}")
    ax.set_xlabel("bytes on disk, KiB (baseline and step checkpoints: safetensors; final: the artifact)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} versus size on disk")
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False, ncol=1 if len(points) <= 20 else 2
    )
    ax.margins(0.12)
    fig.tight_layout()
    texts = _place_labels(fig, ax, xs, ys, [str(i) for i in range(len(points))])
    return fig, ax, texts


def tradeoff_plot(points: list[tuple[str, float, float]], metric: str, out: Path) -> Path:
    """Metric versus size on disk for the baseline, every step and the final artifact."""
    fig, _, _ = tradeoff_figure(points, metric)
    return save_figure(fig, out / "tradeoff.png", layout=False)
