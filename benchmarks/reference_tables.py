"""The tables of BENCHMARKS.md that are computed from records, one function per table.

A reference source file (``benchmarks/reference/*.md``) asks for one with a marker line::

    <!-- table: llm_oneshot -->
    <!-- table: prune_methods methods=rigl,set,movement,l0 -->

and ``compose.py`` replaces the marker by the function's markdown. Each function reads only
files under ``benchmarks/results/`` (through ``record.py``), formats numbers the way the history
sections quote them, and links every row to the file it came from. Adding a table: write a
function ``(results: Path, **options) -> str`` and list it in ``TABLES``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import record
import run_all

RESULTS_LINK = "benchmarks/results"


def link(name: str, key: str | None = None) -> str:
    """A markdown link to ``benchmarks/results/<name>`` (with the key inside it, when a file holds several)."""
    text = f"[{name}]({RESULTS_LINK}/{name})"
    return f"{text} `{key}`" if key else text


def load(results: Path, name: str):
    return record.body(record.read(results / name))


def _meta(results: Path, name: str) -> dict:
    return record.describe(record.read(results / name))


def date(results: Path, name: str) -> str:
    """The record's own date, or (older records without one) the date of the commit that last changed it."""
    own = _meta(results, name)["date"] if (results / name).suffix == ".json" else None
    if own:
        return own
    done = subprocess.run(["git", "log", "-1", "--format=%cs", "--", name], cwd=results, capture_output=True, text=True)
    return f"{done.stdout.strip()} (committed)" if done.returncode == 0 and done.stdout.strip() else "?"


def run(*ids: str) -> str:
    """The run ids of run_all.py that produce a row (compose.py checks that each exists)."""
    return " ".join(f"`{i}`" for i in ids)


def llm_run(row: str) -> str:
    """The run_all.py run whose ``--rows`` list holds this llm_oneshot row."""
    for r in run_all.RUNS:
        if any("--rows " in c and row in c.split("--rows ")[1].split()[0].split(",") for c in r.cmds):
            return r.id
    return "?"


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _load_text(load: dict) -> str:
    before, after = load["before"], load["after"]
    parts = [f"{v[0]:.1f}" if v else "?" for v in (before, after)]
    return "—" if not before and not after else (parts[1] if not before else f"{parts[0]} → {parts[1]}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- baselines
TITLES = {
    "lenet300": "LeNet-300-100",
    "lenet5": "LeNet-5",
    "resnet20": "ResNet-20",
    "mobilenetv2": "MobileNetV2",
    "vgg11bn": "VGG11-BN",
    "minilm": "MiniLM (all-MiniLM-L6-v2)",
    "smollm2": "SmolLM2-135M",
}


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} G" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def baselines(results: Path) -> str:
    """The dense models every other figure is measured against (``baselines.py``, ``hf_baselines.py``)."""
    rows = []
    cnn = load(results, "baselines.json")["models"]
    for name in ("lenet300", "lenet5", "resnet20", "mobilenetv2", "vgg11bn"):
        if name not in cnn:
            continue
        m, t = cnn[name]["metrics"], cnn[name]["training"]
        rows.append(
            [
                TITLES[name],
                f"test acc {_pct(m['test_accuracy'])} ({t.get('epochs', '?')} epochs)",
                _count(m["params"]),
                _count(m["macs"]) + " / image",
                f"{m['size_bytes'] / 1024:.0f} KiB",
                f"{m['latency_b1']['median_ms']:.2f} ms",
                f"{m['latency_b64']['median_ms']:.1f} ms (64)",
                cnn[name]["measured"][:10],
                f"{m['load_avg_at_measure']:.1f}",
                run("baselines"),
                link("baselines.json", name),
            ]
        )
    hf = load(results, "hf_baselines.json")
    for name, m in hf["models"].items():
        n = m["batch_n"]
        metric = (
            f"ppl {m['perplexity_test']:.2f} ({m['eval']['blocks']} x {m['eval']['seq_len']} pydocs test tokens)"
            if "perplexity_test" in m
            else "— (encoder)"
        )
        rows.append(
            [
                TITLES.get(name, name),
                metric,
                _count(m["params"]),
                _count(m["macs_one_sequence"]) + f" / {m['seq_len_latency']} tokens",
                f"{m['size_bytes'] / 2**20:.1f} MiB",
                f"{m['latency_b1']['median_ms']:.1f} ms",
                f"{m[f'latency_b{n}']['median_ms']:.0f} ms ({n})",
                hf["date"],
                f"{m['load_avg_at_measure']:.1f}",
                run("hf-baselines"),
                link("hf_baselines.json", name),
            ]
        )
    return _table(
        [
            "model",
            "metric",
            "params",
            "MACs",
            "size on disk",
            "latency b1",
            "latency bN (batch)",
            "measured",
            "load",
            "run",
            "record",
        ],
        rows,
    )


# ---------------------------------------------------------------------------------- pruning
PRUNE_FILES = ("prune_compare_3a.json", "prune_compare.json")
PRUNE_SETTINGS = (("lenet300", 0.9), ("lenet300", 0.95), ("resnet20", 0.8))
PRUNE_ORDER = ("one-shot", "imp", "gradual", "lottery", "obd", "rigl", "set", "movement", "l0")
PRUNE_RUNS = {
    ("prune_compare_3a.json", "lenet300"): "prune-compare-lenet300-magnitude",
    ("prune_compare_3a.json", "resnet20"): "prune-compare-resnet20-magnitude",
    ("prune_compare.json", "lenet300"): "prune-compare-lenet300",
    ("prune_compare.json", "resnet20"): "prune-compare-resnet20",
}


def prune_methods(results: Path, methods: str = ",".join(PRUNE_ORDER)) -> str:
    """Test accuracy (Δ vs dense) of each method at LeNet-300 90 / 95 % and ResNet-20 80 % sparsity."""
    rows_by: dict[tuple, tuple[dict, str]] = {}
    for name in PRUNE_FILES:
        for row in load(results, name)["rows"].values():
            rows_by[(row["model"], row["sparsity"], row["method"])] = (row, name)
    out = []
    for method in methods.split(","):
        cells, budgets, files, runs = [], {}, [], []
        for model, s in PRUNE_SETTINGS:
            hit = rows_by.get((model, s, method))
            if hit is None:
                cells.append("—")
                continue
            row, name = hit
            files.append(name)
            runs.append(PRUNE_RUNS[(name, model)])
            off = abs(row["achieved_sparsity"] - s) > 5e-4
            cells.append(
                f"{_pct(row['test_accuracy'])} ({-row['drop_pt']:+.2f})"
                + (f" at {_pct(row['achieved_sparsity'])}" if off else "")
            )
            budgets.setdefault(TITLES[model], row.get("budget", row.get("budget_epochs")))
        budget = "; ".join(f"{m}: {b}" for m, b in budgets.items())
        out.append(
            [
                method,
                *cells,
                budget,
                ", ".join(date(results, f) for f in dict.fromkeys(files)),
                run(*dict.fromkeys(runs)),
                ", ".join(link(f) for f in dict.fromkeys(files)),
            ]
        )
    dense = {
        model: next(r for (m, _, _), (r, _) in rows_by.items() if m == model)["dense_accuracy"]
        for model, _ in PRUNE_SETTINGS
    }
    head = [
        f"LeNet-300-100 90 % (dense {_pct(dense['lenet300'])})",
        "LeNet-300-100 95 %",
        f"ResNet-20 80 % (dense {_pct(dense['resnet20'])})",
    ]
    return _table(["method", *head, "training budget, epochs", "date", "run", "record"], out)


# ---------------------------------------------------------------------------------- one-shot LLM
LLM_PAIRS = (  # (what, netslim row, llm-compressor row)
    ("SparseGPT 50 %", "sparsegpt50", "llmc_sparsegpt50"),
    ("SparseGPT 2:4, `nm_select: exact` (shipped recipe)", "sparsegpt24_exact", "llmc_sparsegpt24"),
    ("SparseGPT 2:4, SparseGPT's own pattern rule", "sparsegpt24", "llmc_sparsegpt24"),
    ("Wanda 50 % + OWL (shipped recipe; llm-compressor uniform: its OWL crashes)", "wanda50_owl", "llmc_wanda50"),
    ("Wanda 50 %, uniform", "wanda50", "llmc_wanda50"),
    ("GPTQ int4 g64 asym, act-order, `clip_search` (shipped recipe)", "gptq_g64_clip", "llmc_gptq_g64"),
    ("GPTQ int4 g64, min-max, fp16 scales to nearest (default)", "gptq_g64", "llmc_gptq_g64"),
    ("GPTQ int4 g64, min-max, fp16 scales rounded up (old behaviour)", "gptq_g64_up", "llmc_gptq_g64"),
    ("GPTQ int4 g64 vs llm-compressor's mse observer", "gptq_g64_clip", "llmc_gptq_g64_mse"),
)
LLM_REFERENCES = (
    ("dense (fp32 of the Q4_1 GGUF)", "dense"),
    ("magnitude 50 % (one core)", "magnitude50"),
    ("RTN int4 g64 asym (one core)", "rtn_g64"),
)


def _ppl(a: float, b: float | None = None) -> tuple[str, str]:
    digits = 3 if b is not None and abs(a - b) < 0.01 else 2
    return f"{a:.{digits}f}", "—" if b is None else f"{b:.{digits}f}"


def llm_oneshot(results: Path) -> str:
    """netslim vs llm-compressor on SmolLM2-135M, same calibration ids and test tokens (latest line per row)."""
    latest = {r["row"]: r for r in record.read(results / "llm_oneshot.jsonl")}
    rows = []
    for what, ours, theirs in LLM_PAIRS:
        a, b = latest[ours], latest[theirs]
        pa, pb = _ppl(a["perplexity"], b["perplexity"])
        verdict = "lower" if a["perplexity"] < b["perplexity"] else "**higher: miss**"
        rows.append(
            [
                what,
                f"`{ours}`",
                pa,
                pb,
                f"{100 * (a['perplexity'] / b['perplexity'] - 1):+.2f} % ({verdict})",
                f"{a['compress_s']:.1f} / {b['compress_s']:.1f}",
                f"{a['compress_peak_rss_mb']} / {b['compress_peak_rss_mb']}",
                f"{a['load_avg']:.1f} / {b['load_avg']:.1f}",
                run(*dict.fromkeys([llm_run(ours), llm_run(theirs)])),
                link("llm_oneshot.jsonl", f"{ours}, {theirs}"),
            ]
        )
    for what, ours in LLM_REFERENCES:
        a = latest[ours]
        rows.append(
            [
                what,
                f"`{ours}`",
                _ppl(a["perplexity"])[0],
                "—",
                "—",
                f"{a['compress_s']:.1f} / —",
                f"{a['compress_peak_rss_mb']} / —",
                f"{a['load_avg']:.1f} / —",
                run(llm_run(ours)),
                link("llm_oneshot.jsonl", ours),
            ]
        )
    table = _table(
        [
            "method",
            "netslim row",
            "netslim ppl",
            "llm-compressor ppl",
            "netslim vs llm-compressor",
            "compress s (netslim / llmc)",
            "peak RSS compressing MB",
            "load",
            "run",
            "record",
        ],
        rows,
    )
    changed = date(results, "llm_oneshot.jsonl")
    return f"{table}\n\nRows carry no date of their own; the file was last changed {changed}."


# ---------------------------------------------------------------------------------- quantization
def int8_resnet20(results: Path) -> str:
    """ResNet-20 static int8 PTQ, batch 64, int8 end to end: the quiet reruns (interleaved medians)."""
    rows = []
    for name, rid in (
        ("quantize_resnet20_int8_rerun2.json", "int8-resnet20"),
        ("quantize_resnet20_int8_rerun.json", "int8-resnet20-r9"),
    ):
        d, meta = load(results, name), _meta(results, name)
        fp, q, cl = d["rows"]["fp32"], d["rows"]["int8 PTQ (minmax)"], d["rows"]["fp32 channels-last"]
        rows.append(
            [
                _pct(fp["accuracy"]),
                f"**{_pct(q['accuracy'])}**",
                f"{q['bytes']:,} B ({q['size_vs_fp32']:.3f}x)",
                f"{fp['latency_ms']:.2f} → {q['latency_ms']:.2f} ms",
                f"**{q['speedup']:.2f}x**",
                f"{cl['latency_ms'] / q['latency_ms']:.2f}x",
                f"{d['threads']}",
                meta["date"],
                _load_text(meta["load_avg"]),
                run(rid),
                link(name),
            ]
        )
    return _table(
        [
            "fp32 acc",
            "int8 acc",
            "int8 file",
            "b64 latency fp32 → int8",
            "vs fp32 NCHW",
            "vs fp32 channels-last",
            "threads",
            "date",
            "load",
            "run",
            "record",
        ],
        rows,
    )


def int8_minilm(results: Path) -> str:
    """MiniLM batch 32 x 128 tokens: netslim int8 and every peer timed in the same run (two runs)."""
    runs = ("quantize_minilm_bf16body.json", "quantize_minilm_bf16body_r9.json")
    data = [load(results, n) for n in runs]
    rows = []
    for variant, first in data[0]["rows"].items():
        second = data[1]["rows"].get(variant, {})
        size = f"{first['bytes'] / 1e6:.1f} MB" if "bytes" in first else "—"
        rows.append(
            [
                variant,
                f"{first['fidelity']:.4f}",
                f"{first['speedup']:.2f}x",
                f"{second['speedup']:.2f}x" if second else "—",
                size,
            ]
        )
    metas = [_meta(results, n) for n in runs]
    both = ", ".join(f"[run {i + 1}]({RESULTS_LINK}/{n})" for i, n in enumerate(runs))
    for row in rows:
        row += [run("int8-minilm"), both]
    rows.append(
        [
            "(date, load average before → after)",
            "",
            *(f"{m['date']}, {_load_text(m['load_avg'])}" for m in metas),
            "",
            "",
            both,
        ]
    )
    return _table(
        [
            "variant",
            "fidelity (cosine to fp32)",
            "vs fp32, run 1 (5 rounds)",
            "vs fp32, run 2 (9 rounds)",
            "file",
            "run",
            "record",
        ],
        rows,
    )


def weight_only_smollm2(results: Path) -> str:
    """SmolLM2-135M weight-only RTN / HQQ: perplexity on 8 x 512 pydocs test tokens, packed file vs fp32."""
    rows = []
    for name in ("quantize_smollm2_a.json", "quantize_smollm2_b.json"):
        d, meta = load(results, name), _meta(results, name)
        for variant, r in d["rows"].items():
            if variant.startswith("fp32") and name.endswith("_b.json"):
                continue
            ratio = f"{r['size_vs_fp32']:.2f}x" if "size_vs_fp32" in r else f"{r['bytes']:,} B"
            rows.append(
                [
                    variant,
                    f"{r['perplexity']:.2f}",
                    ratio,
                    str(r.get("quantized_layers", "—")),
                    meta["date"],
                    run("weight-only-smollm2"),
                    link(name),
                ]
            )
    return _table(["variant", "perplexity", "file vs fp32", "layers quantized", "date", "run", "record"], rows)


def mixed_resnet20(results: Path) -> str:
    """ResNet-20 weights at mixed widths (int8 activations) vs uniform, same average bits."""
    rows = []
    for name in ("quantize_resnet20_mixed_kl.json", "quantize_resnet20_mixed_hessian.json"):
        d, meta = load(results, name), _meta(results, name)
        fp = d["rows"]["fp32"]["accuracy"]
        for variant, r in d["rows"].items():
            if variant == "fp32":
                continue
            rows.append(
                [
                    variant,
                    f"{r['avg_weight_bits']:.3f}",
                    _pct(r["accuracy"]),
                    f"{100 * (r['accuracy'] - fp):+.2f} pt",
                    f"{r['bytes']:,} B ({r['size_vs_fp32']:.3f}x)",
                    meta["date"],
                    _load_text(meta["load_avg"]),
                    run("mixed-resnet20"),
                    link(name),
                ]
            )
    return _table(
        ["variant", "avg weight bits", "test acc", "Δ vs fp32", "file", "date", "load", "run", "record"], rows
    )


# ---------------------------------------------------------------------------------- deep compression
def deep_compression(results: Path) -> str:
    """Prune -> share -> Huffman -> .nsz, each model by its shipped recipe; ratio = dense fp32 bytes / .nsz bytes."""
    sources = [("LeNet-300-100 (revised recipe)", "deep_compression_lenet300_v2_report.json", None, "dc-lenet300")]
    sources += [(TITLES[m], "deep_compression.json", m, "dc-lenet5-resnet20") for m in ("lenet5", "resnet20")]
    rows = []
    for title, name, key, rid in sources:
        d = load(results, name)
        if key is None:  # a recipe report: the share step's notes hold the stage table
            notes = next(s for s in d["steps"] if s["method"] == "share")["notes"]["share"]
            stages, entropy = notes["stages"], notes["entropy"]
        else:
            m = d["models"][key]
            stages, entropy = m["stages"], m["entropy"]
        dense, final = stages[0], stages[-1]
        rows.append(
            [
                title,
                f"{dense['bytes']:,} → {final['bytes']:,} B",
                f"**{final['ratio']:.2f}x**",
                f"{_pct(dense['accuracy'])} → {_pct(final['accuracy'])}",
                f"{100 * (dense['accuracy'] - final['accuracy']):.2f} pt",
                f"{entropy['payload_over_entropy']:.4f}",
                date(results, name),
                run(rid),
                link(name, key),
            ]
        )
    return _table(
        [
            "model",
            "bytes (dense fp32 → .nsz)",
            "ratio",
            "test acc",
            "drop",
            "Huffman payload / entropy",
            "date",
            "run",
            "record",
        ],
        rows,
    )


# ---------------------------------------------------------------------------------- export
HF_EXPORTS = (
    ("GPTQ w4 g64 asym, act-order, 32 x 512 calibration", "issue18_hf_g64.json", "export-hf-gptq"),
    ("GPTQ w4 g128 asym (only the 30 `down_proj` fit g128)", "issue18_hf.json", "export-hf-gptq"),
    (
        "`gptq_int8emb_smollm2` artifact (its int8 embedding written as float)",
        "issue18_hf_int8emb.json",
        "export-hf-int8emb",
    ),
    ("`sparsegpt_smollm2_50` artifact (50 % zeros, written dense)", "issue18_hf_sparsegpt50.json", "export-hf-sparse"),
)


def export_hf(results: Path) -> str:
    """SmolLM2-135M exported with ``format: hf`` and scored by plain transformers in a process without netslim."""
    rows = []
    for what, name, rid in HF_EXPORTS:
        d, meta = load(results, name), _meta(results, name)
        rows.append(
            [
                what,
                f"{d['directory_bytes'] / 1e6:.1f} MB",
                f"{d['directory_vs_fp32']:.3f}x",
                f"{d['netslim_perplexity']:.5f}",
                f"{d['transformers_perplexity']:.5f}",
                f"{d['relative_difference']:.1e}" if d["relative_difference"] else "0",
                date(results, name),
                _load_text(meta["load_avg"]),
                run(rid),
                link(name),
            ]
        )
    return _table(
        [
            "SmolLM2-135M compressed by",
            "directory",
            "vs fp32",
            "netslim ppl",
            "plain transformers ppl",
            "relative difference",
            "date",
            "load",
            "run",
            "record",
        ],
        rows,
    )


# ---------------------------------------------------------------------------------- reliability
def checksum_overhead(results: Path) -> str:
    """``netslim.load`` with and without SHA-256 verification (A/B interleaved medians, warm page cache)."""
    d = load(results, "checksum_overhead.json")
    meta = _meta(results, "checksum_overhead.json")
    rows = []
    for name, m in d["models"].items():
        on, off = m["verify_on"]["median_s"], m["verify_off"]["median_s"]
        scale, unit = (1e3, "ms")
        rows.append(
            [
                TITLES.get(name, name),
                f"{m['file_bytes'] / 1e6:.1f} MB",
                f"{on * scale:,.1f} {unit}",
                f"{off * scale:,.1f} {unit}",
                f"+{m['overhead_s'] * scale:,.1f} {unit} ({m['overhead_ratio']:.2f}x)",
                f"{m['hash_only_s']['median_s'] * scale:,.1f} {unit}",
                _load_text(record.load_average(m)),
                meta["date"],
                run("checksum-overhead"),
                link("checksum_overhead.json", name),
            ]
        )
    return _table(
        [
            "model",
            "artifact",
            "load, verify on",
            "load, --no-verify",
            "overhead",
            "SHA-256 alone",
            "load avg",
            "date",
            "run",
            "record",
        ],
        rows,
    )


TABLES: dict[str, Callable[..., str]] = {
    "baselines": baselines,
    "prune_methods": prune_methods,
    "llm_oneshot": llm_oneshot,
    "int8_resnet20": int8_resnet20,
    "int8_minilm": int8_minilm,
    "weight_only_smollm2": weight_only_smollm2,
    "mixed_resnet20": mixed_resnet20,
    "deep_compression": deep_compression,
    "export_hf": export_hf,
    "checksum_overhead": checksum_overhead,
}
