"""Report plots (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bar(names: list[str], values: list[float], ylabel: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4))
    ax.bar(range(len(names)), values, color="#3b6ea5")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def layer_plots(layers: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    weighted = [r for r in layers if r["params"] > 0]
    names = [r["name"] for r in weighted]
    plots = {
        "sparsity": _bar(names, [1 - r["nonzero"] / r["params"] for r in weighted], "sparsity",
                         "Per-layer sparsity (fraction of zero parameters)", out / "sparsity.png"),
        "bits": _bar(names, [r["bits"] for r in weighted], "bits / weight", "Per-layer weight bits",
                     out / "bits.png"),
    }
    ranks = [(r["name"], r["rank"]) for r in layers if r.get("rank")]
    if ranks:
        plots["rank"] = _bar([n for n, _ in ranks], [k for _, k in ranks], "rank", "Per-layer rank",
                             out / "rank.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = sorted(((r["params"] * r["bits"] / 8, r["name"]) for r in weighted), reverse=True)
    top, rest = sizes[:8], sum(s for s, _ in sizes[8:])
    labels = [n for _, n in top] + (["(others)"] if rest else [])
    vals = [s for s, _ in top] + ([rest] if rest else [])
    ax.barh(labels[::-1], [v / 1024 for v in vals[::-1]], color="#a5603b")
    ax.set_xlabel("KiB (params x bits / 8)")
    ax.set_title("Size breakdown by layer")
    plots["size"] = _save(fig, out / "size_breakdown.png")
    return plots


def tradeoff_plot(points: list[tuple[str, float, float]], metric: str, out: Path) -> Path:
    """Metric versus size on disk for the baseline and every step (a sweep draws a curve)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p[1] / 1024 for p in points]
    ys = [p[2] for p in points]
    ax.plot(xs, ys, "o-", color="#3b6ea5")
    for label, x, y in zip((p[0] for p in points), xs, ys):
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("size on disk (KiB)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} versus size")
    return _save(fig, out / "tradeoff.png")
