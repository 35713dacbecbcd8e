"""report.json / report.md / report.html for a ``compress`` run."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from netslim.core.serialize import atomic_write

from .plots import layer_plots, tradeoff_plot

COLUMNS = ("params", "nonzero", "macs", "size_bytes", "latency_ms_b1", "latency_ms_bN")


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


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, baseline, final, final/baseline) rows of the headline table."""
    b, f = report["baseline"], report["final"]
    rows = []
    for key in (report["metric"], *COLUMNS):
        bv, fv = b.get(key), f.get(key)
        ratio = f"{fv / bv:.3f}x" if isinstance(bv, (int, float)) and isinstance(fv, (int, float)) and bv else "-"
        label = key if key != "latency_ms_bN" else f"latency_ms_b{b.get('batch_N', 'N')}"
        rows.append((label, fmt(bv, key), fmt(fv, key), ratio))
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _sections(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    metric = report["metric"]
    steps = [[str(i + 1), s["method"], f"{s['seconds']:.1f}", fmt(s["metrics"].get(metric), metric),
              fmt(s["metrics"]["nonzero"]), fmt(s["metrics"]["size_bytes"])] for i, s in enumerate(report["steps"])]
    layers = [[r["name"], r["type"], "x".join(map(str, r["shape"])), fmt(r["params"]), fmt(r["nonzero"]),
               f"{1 - r['nonzero'] / r['params']:.1%}" if r["params"] else "-", fmt(r["bits"]), fmt(r["macs"])]
              for r in report["layers"]]
    skipped = [[s["name"], s["reason"]] for s in report["skipped"]]
    return [
        ("Summary", ["quantity", "baseline", "final", "final / baseline"], [list(r) for r in summary_rows(report)]),
        ("Steps", ["#", "method", "seconds", metric, "non-zeros", "bytes"], steps),
        ("Layers", ["name", "type", "shape", "params", "non-zeros", "sparsity", "bits", "MACs"], layers),
        ("Skipped modules", ["module", "reason"], skipped or [["(none)", ""]]),
    ]


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out = Path(out)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = layer_plots(report["layers"], plots_dir)
    points = [("baseline", report["baseline"]["size_bytes"], report["baseline"][report["metric"]])]
    points += [(f"{i + 1}:{s['method']}", s["metrics"]["size_bytes"], s["metrics"][report["metric"]])
               for i, s in enumerate(report["steps"])]
    plots["tradeoff"] = tradeoff_plot(points, report["metric"], plots_dir)
    report = {**report, "plots": {k: str(p.relative_to(out)) for k, p in plots.items()}}

    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write(paths["json"], lambda t: Path(t).write_text(json.dumps(report, indent=2, default=str)))

    title = f"netslim report: {report['recipe']} on {report['model']} ({report['dataset']})"
    md = [f"# {title}", "", f"Artifact: `{report['artifact']}`", ""]
    for name, header, rows in _sections(report):
        md += [f"## {name}", "", _md_table(header, rows), ""]
    md += ["## Plots", ""] + [f"![{k}]({v})" for k, v in report["plots"].items()]
    atomic_write(paths["md"], lambda t: Path(t).write_text("\n".join(md) + "\n"))

    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f"<p>Artifact: <code>{esc(report['artifact'])}</code></p>"]
    for name, header, rows in _sections(report):
        body.append(f"<h2>{esc(name)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        body.append("</table>")
    body.append("<h2>Plots</h2>" + "".join(f'<img src="{esc(v)}" alt="{esc(k)}">' for k, v in report["plots"].items()))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    atomic_write(paths["html"], lambda t: Path(t).write_text(page))
    return paths
