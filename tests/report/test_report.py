"""Reports tell the truth: stored figures, readable plots, a self-contained HTML, latency spread."""

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from PIL import Image
from torch import nn

import netslim
from netslim.report import write_report
from netslim.report.plots import DPI, MAX_BARS, MAX_WIDTH_IN, layer_groups, layer_plots, tradeoff_figure


def _data():
    torch.manual_seed(0)
    X = torch.randn(256, 20)
    return X, (X[:, 0] > 0).long()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))


class _Refs(HTMLParser):
    """Every URL an HTML page refers to (src, href, srcset, url(...))."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href", "srcset", "data") and v]


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    steps = [{"method": "magnitude", "sparsity": 0.9}, {"method": "export", "format": "sparse"}]
    netslim.compress(_mlp(), steps, data=_data(), out=out)
    return out, json.loads((out / "report.json").read_text())


def test_html_is_self_contained(sparse_run):
    out, rep = sparse_run
    page = (out / "report.html").read_text()
    parser = _Refs()
    parser.feed(page)
    assert parser.urls and all(u.startswith("data:image/png;base64,") for u in parser.urls)
    assert "url(" not in page and set(rep["plots"]) == {"sparsity", "bits", "size", "tradeoff"}
    for u in parser.urls:
        assert base64.b64decode(u.split(",", 1)[1]).startswith(b"\x89PNG")
    for v in (f"{rep['final']['params']:,}", f"{rep['final']['nonzero']:,}", f"{rep['final']['size_bytes']:,}"):
        assert f"<td>{v}</td>" in page  # the figures are in the tables
    assert all((out / p).is_file() for p in rep["plots"].values())  # PNGs beside it, for report.md


def test_sizes_are_labelled_as_measured(sparse_run):
    out, rep = sparse_run
    state = json.loads((out / "state.json").read_text())
    assert rep["baseline"]["size_bytes"] == (out / "baseline.safetensors").stat().st_size
    assert rep["steps"][-1]["metrics"]["size_bytes"] == (out / state["checkpoint"]).stat().st_size
    assert rep["final"]["size_bytes"] == Path(rep["artifact"]).stat().st_size
    assert rep["final"]["size_bytes"] < rep["steps"][-1]["metrics"]["size_bytes"]  # sparse export < masked checkpoint
    name = Path(rep["artifact"]).name
    assert "checkpoint" in rep["definitions"]["step bytes"] and name in rep["definitions"]["final bytes"]
    md = (out / "report.md").read_text()
    assert "checkpoint bytes (final: artifact bytes)" in md and f"| final | {name} |" in md
    assert f"baseline.safetensors / {name}" in md


def test_every_latency_has_its_spread(sparse_run):
    out, rep = sparse_run
    for block in [rep["baseline"], rep["final"]] + [s["metrics"] for s in rep["steps"]]:
        for key in ("latency_ms_b1", "latency_ms_bN"):
            assert block[f"{key}_iqr"] >= 0 and block[key] > 0
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    iqr = f"(IQR {rep['final']['latency_ms_b1_iqr']:.2g})"
    assert iqr in md and iqr in page


def _report(layers, baseline_ms=1.0, final_ms=1.0, iqr=0.01):
    def block(ms, size):
        return {
            "accuracy": 0.9,
            "params": 10,
            "nonzero": 10,
            "macs": 10,
            "size_bytes": size,
            "latency_ms_b1": ms,
            "latency_ms_b1_iqr": iqr * ms,
            "latency_ms_bN": ms,
            "latency_ms_bN_iqr": iqr * ms,
            "batch_N": 8,
        }

    return {
        "recipe": "r",
        "model": "m",
        "dataset": "d",
        "metric": "accuracy",
        "artifact": "/x/model.nsz",
        "baseline": block(baseline_ms, 4000),
        "final": block(final_ms, 1000),
        "layers": layers,
        "skipped": [],
        "steps": [{"method": "magnitude", "seconds": 1.0, "metrics": block(final_ms, 5000)}],
    }


LAYER = {
    "name": "fc",
    "type": "Linear",
    "shape": [4, 4],
    "params": 20,
    "nonzero": 20,
    "bits": 32.0,
    "macs": 16,
    "kind": "dense fp32",
    "sparsity": 0.0,
    "stored_bytes": 80,
}


@pytest.mark.parametrize("final_ms, iqr, warned", [(1.1, 0.05, False), (900.0, 0.05, True), (1.1, 0.4, True)])
def test_latency_warnings(tmp_path, final_ms, iqr, warned):
    write_report(_report([LAYER], final_ms=final_ms, iqr=iqr), tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert bool(rep["warnings"]) == warned
    for f in ("report.md", "report.html"):
        assert ("repeat on a quiet machine" in (tmp_path / f).read_text().lower()) == warned
    if final_ms > 10:
        assert any("900x the baseline" in w for w in rep["warnings"])
    if iqr > 0.25:
        assert any("40 % of its median" in w for w in rep["warnings"])


def _layers(names, type_="Linear"):
    return [{**LAYER, "name": n, "type": type_, "stored_bytes": 80 + i} for i, n in enumerate(names)]


@pytest.mark.parametrize(
    "names, rule, groups",
    [
        ([f"fc{i}" for i in range(6)], "per layer", 6),
        (
            [f"model.layers.{b}.{p}" for b in range(30) for p in ("q", "k", "v", "o", "up", "gate", "down", "n1", "n2")]
            + ["model.embed_tokens", "model.norm", "lm_head"],
            "per block",
            33,
        ),
        ([str(i) for i in range(300)], "per module type", 1),
    ],
)
def test_plots_stay_readable(tmp_path, names, rule, groups):
    layers = _layers(names)
    got_rule, got = layer_groups(layers)
    assert got_rule.startswith(rule) and len(got) == groups <= MAX_BARS
    assert sum(g["stored_bytes"] for g in got) == sum(r["stored_bytes"] for r in layers)
    for path in layer_plots(layers, tmp_path).values():
        assert Image.open(path).width <= MAX_WIDTH_IN * DPI


def test_group_sparsity_and_bits_are_weighted_by_weights():
    layers = [
        {**LAYER, "name": "b.0.x", "shape": [10, 10], "sparsity": 0.9, "bits": 4.0},
        {**LAYER, "name": "b.0.y", "shape": [30, 10], "sparsity": 0.1, "bits": 8.0},
    ]
    layers += _layers([f"l{i}" for i in range(MAX_BARS - 1)])  # 41 layers: aggregated per block
    _, groups = layer_groups(layers)
    block = next(g for g in groups if g["name"] == "b.0")
    assert block["sparsity"] == pytest.approx((0.9 * 100 + 0.1 * 300) / 400) and block["bits"] == pytest.approx(7.0)


def test_tradeoff_labels_do_not_overlap():
    points = [("baseline", 100_000, 0.90)] + [(f"step {i}", 100_000 - 10 * i, 0.90 - 0.0005 * i) for i in range(14)]
    points += [("final", 30_000, 0.88)]
    fig, ax, texts = tradeoff_figure(points, "accuracy")
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert sorted(int(n) for t in texts for n in t.get_text().split(",")) == list(range(len(points)))
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])
    assert len(ax.get_legend().get_texts()) == len(points)
    assert fig.get_size_inches()[0] <= MAX_WIDTH_IN
    plt.close(fig)


def test_int4_report_counts_elements_and_stored_bytes(tmp_path):
    steps = [{"method": "weight_only", "bits": 4, "group_size": None}]
    result = netslim.compress(_mlp(), steps, data=_data(), out=tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["final"]["params"] == rep["baseline"]["params"]  # elements, not packed bytes
    assert {r["kind"]: r["bits"] for r in rep["layers"]} == {"packed int4": 4}
    kinds = {k["kind"]: k for k in rep["storage_by_kind"]}
    assert kinds["packed int4"]["stored_bytes"] == sum(r["stored_bytes"] for r in rep["layers"])
    q = [m for m in result.model.modules() if hasattr(m, "weight_packed")]
    assert kinds["packed int4"]["stored_bytes"] == sum(
        t.numel() * t.element_size() for m in q for t in (m.weight_packed, m.scales, m.zeros, m.bias)
    )
    assert re.search(
        r"\| 0 \| QuantizedLinear \| packed int4 \| 64x20 \| 1,344 \|", (tmp_path / "report.md").read_text()
    )
