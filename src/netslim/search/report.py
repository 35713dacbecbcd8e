"""Search outputs: the Pareto set of (cost, metric) points, its table and plot, and the recipe
YAML that reproduces the best policy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from netslim.core.serialize import atomic_write


def pareto(points: Sequence[dict[str, Any]], cost: str = "cost", metric: str = "accuracy") -> list[dict[str, Any]]:
    """Points not dominated by another (lower-or-equal cost and higher-or-equal metric, one strictly)."""
    out = []
    for p in points:
        dominated = any(
            (q[cost] <= p[cost] and q[metric] >= p[metric]) and (q[cost] < p[cost] or q[metric] > p[metric])
            for q in points
        )
        if not dominated:
            out.append(p)
    return sorted(out, key=lambda p: p[cost])


def pareto_markdown(
    points: Sequence[dict[str, Any]], cost: str = "cost", metric: str = "accuracy", label: str = "label"
) -> str:
    front = {id(p) for p in pareto(points, cost, metric)}
    rows = [
        f"| {p.get(label, '')} | {p[cost]:,.4g} | {p[metric]:.4f} | {'yes' if id(p) in front else ''} |"
        for p in sorted(points, key=lambda p: p[cost])
    ]
    return "\n".join([f"| candidate | {cost} | {metric} | Pareto |", "|---|---|---|---|", *rows])


def pareto_plot(
    groups: dict[str, Sequence[dict[str, Any]]],
    path: str | os.PathLike,
    *,
    cost: str = "cost",
    metric: str = "accuracy",
    title: str = "",
) -> Path:
    """One scatter per named group (e.g. searched architectures, compressed big model); fronts as lines."""
    from netslim.report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "os^Dv<>P*"
    for i, (name, pts) in enumerate(groups.items()):
        if not pts:
            continue
        ax.scatter(
            [p[cost] for p in pts],
            [p[metric] for p in pts],
            s=18,
            marker=markers[i % len(markers)],
            alpha=0.6,
            label=name,
        )
        front = pareto(pts, cost, metric)
        ax.plot([p[cost] for p in front], [p[metric] for p in front], lw=1)
    ax.set_xlabel(cost)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs {cost}")
    ax.legend(fontsize=7)
    return save_figure(fig, Path(path))


def write_recipe(path: str | os.PathLike, recipe: dict[str, Any]) -> Path:
    """Write a recipe YAML atomically; it parses with :func:`netslim.recipe.spec.parse_recipe`."""
    from netslim.recipe.spec import parse_recipe

    parse_recipe(recipe, str(path))  # never emit a recipe that does not validate
    text = yaml.safe_dump(recipe, sort_keys=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
