"""report.json / report.md / report.html for a ``compress`` run.

The HTML file is self-contained: its plots are embedded as base64 PNG data URIs (the PNGs
are also written to OUT/plots/ for the Markdown report, which links them).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from netslim.core.serialize import atomic_write

from .plots import layer_plots, tradeoff_plot
from .tables import baseline_file, normalised, sections

__all__ = ["write_report"]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _tradeoff_points(report: dict[str, Any]) -> list[tuple[str, float, Any]]:
    metric = report["metric"]
    points = [(f"baseline ({baseline_file(report)})", report["baseline"]["size_bytes"], report["baseline"].get(metric))]
    points += [
        (f"step {i + 1}: {s['method']} (checkpoint)", s["metrics"]["size_bytes"], s["metrics"].get(metric))
        for i, s in enumerate(report["steps"])
    ]
    points.append(
        (f"final: {Path(str(report['artifact'])).name}", report["final"]["size_bytes"], report["final"].get(metric))
    )
    return points


def _write_plots(report: dict[str, Any], out: Path) -> dict[str, Path]:
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = layer_plots(report["layers"], plots_dir)
    plots["tradeoff"] = tradeoff_plot(_tradeoff_points(report), report["metric"], plots_dir)
    return plots


def _definitions_md(report: dict[str, Any]) -> list[str]:
    return ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()] + [""]


def _markdown(report: dict[str, Any], title: str) -> str:
    md = [f"# {title}", "", f"Artifact: `{report['artifact']}`", ""]
    if report["warnings"]:
        md += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    for name, header, rows in sections(report):
        md += [f"## {name}", "", _md_table(header, rows), ""]
    md += _definitions_md(report)
    md += ["## Plots", ""] + [f"![{k}]({v})" for k, v in report["plots"].items()]
    return "\n".join(md) + "\n"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%;display:block;margin:1em 0}"
    ".warn{background:#fff3cd;border:1px solid #e0b400;padding:.5em 1em}dt{font-weight:bold}"
)


def _html(report: dict[str, Any], title: str, images: dict[str, Path]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f"<p>Artifact: <code>{esc(str(report['artifact']))}</code></p>"]
    if report["warnings"]:
        body.append(
            "<div class='warn'><h2>Warnings</h2><ul>"
            + "".join(f"<li>{esc(w)}</li>" for w in report["warnings"])
            + "</ul></div>"
        )
    for name, header, rows in sections(report):
        body.append(f"<h2>{esc(name)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        body.append("</table>")
    body.append(
        "<h2>Definitions</h2><dl>"
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in report["definitions"].items())
        + "</dl>"
    )
    body.append("<h2>Plots</h2>" + "".join(f'<img src="{_data_uri(p)}" alt="{esc(k)}">' for k, p in images.items()))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write OUT/report.{json,md,html} and OUT/plots/*.png; returns their paths."""
    out = Path(out)
    report = normalised(report)
    images = _write_plots(report, out)
    report = {**report, "plots": {k: str(p.relative_to(out)) for k, p in images.items()}}
    title = f"netslim report: {report['recipe']} on {report['model']} ({report['dataset']})"
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write(paths["json"], lambda t: Path(t).write_text(json.dumps(report, indent=2, default=str)))
    atomic_write(paths["md"], lambda t: Path(t).write_text(_markdown(report, title)))
    atomic_write(paths["html"], lambda t: Path(t).write_text(_html(report, title, images)))
    return paths
