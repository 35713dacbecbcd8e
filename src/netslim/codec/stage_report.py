"""The share step's human-readable report: the paper's Table 1 and an accuracy/ratio plot.

Written next to the run's report (``<out>/deep_compression.md`` and
``<out>/plots/deep_compression.png``) because the generic report renders step metrics,
not this step's per-stage table; the same facts are in ``report.json`` under the share
step's ``notes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netslim.core.serialize import atomic_write


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def stage_markdown(notes: dict[str, Any]) -> str:
    """Per-stage sizes and accuracies, the entropy check and the per-layer clustering."""
    lines = [
        "# Deep Compression stages",
        "",
        "| stage | bytes | ratio vs dense fp32 | accuracy |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['stage']} | {r['bytes']:,} | {r['ratio']}x | {_pct(r['accuracy'])} |" for r in notes["stages"]]
    e = notes["entropy"]
    lines += [
        "",
        "Fixed-width rows follow the paper's accounting (32-bit values or `bits`-bit cluster indices, "
        "5/8-bit relative indices with filler entries); `.nsz` rows are whole files.",
        "",
        "## Huffman payload vs Shannon entropy of the coded symbols",
        "",
        "| stream | payload bits | entropy bits |",
        "|---|---:|---:|",
        f"| cluster indices | {e['weight_payload_bits']:,} | {e['weight_entropy_bits']:,} |",
        f"| positions (gap symbols) | {e['index_payload_bits']:,} | {e['index_entropy_bits']:,} |",
        f"| code tables | {e['table_bits']:,} | - |",
        "",
        f"Payload / entropy: {e['payload_over_entropy']:.4f}. Accuracy after clustering, before centroid "
        f"fine-tuning: {_pct(notes.get('accuracy_before_finetune'))}. Decoded .nsz bit-exact: "
        f"{notes.get('nsz_bit_exact')}.",
        "",
        "## Layers",
        "",
        "| layer | bits | clusters | non-zeros | of | algorithm |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {n} | {f['bits']} | {f['clusters']} | {f['nonzero']:,} | {f['numel']:,} | {f['algorithm']} |"
        for n, f in notes["layers"].items()
    ]
    return "\n".join(lines) + "\n"


def stage_plot(points: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy versus compression ratio: dense, pruning only, quantization only, both."""
    from netslim.report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        if p["accuracy"] is None:
            continue
        ax.scatter([p["ratio"]], [100 * p["accuracy"]], s=40)
        ax.annotate(p["kind"], (p["ratio"], 100 * p["accuracy"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.margins(x=0.3, y=0.15)  # room for the labels
    ax.set_xlabel("compression ratio (dense fp32 bytes / .nsz bytes)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Deep Compression: accuracy vs compression")
    return save_figure(fig, path)


def write_stage_report(out_dir: Path, notes: dict[str, Any]) -> dict[str, str]:
    out_dir = Path(out_dir)
    md = out_dir / "deep_compression.md"
    plot = out_dir / "plots" / "deep_compression.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    stage_plot(notes["tradeoff"], plot)
    text = stage_markdown(notes) + f"\n![accuracy vs compression ratio](plots/{plot.name})\n"
    atomic_write(md, lambda tmp: Path(tmp).write_text(text))
    return {"markdown": str(md), "plot": str(plot)}
