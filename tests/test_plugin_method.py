"""A method added outside netslim: defined and registered in this module (no edit to netslim's
files), it validates, runs in a recipe through ``netslim.compress``, saves and loads. Plugins of
installed distributions (entry-point group ``netslim.plugins``) load the same lazy way, and a
broken one is reported in one line without breaking ``netslim.load``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from typing import ClassVar

import pytest
import torch
from pydantic import Field
from torch import nn

import netslim
from netslim.core import registry
from netslim.core.config import make_config, methods
from netslim.core.history import StepHistory


class ZeroRowsConfig(netslim.MethodConfig):
    """Zero the ``rows`` output rows of smallest L2 norm in every Linear (weight row and bias)."""

    method: ClassVar[str] = "zero_smallest_row"
    rows: int = Field(1, ge=1, description="rows zeroed per Linear layer")


@netslim.register(ZeroRowsConfig)
def zero_smallest_rows(model: nn.Module, cfg: ZeroRowsConfig, ctx) -> nn.Module:
    zeroed = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and m.out_features > cfg.rows:
                rows = m.weight.norm(dim=1).argsort()[: cfg.rows]
                m.weight[rows] = 0
                if m.bias is not None:
                    m.bias[rows] = 0
                zeroed[name] = rows.tolist()
    ctx.notes[cfg.method] = {"zeroed_rows": zeroed}
    return model


def _data(n: int = 128):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _zero_rows(linear: nn.Linear) -> set[int]:
    return {i for i in range(linear.out_features) if not linear.weight[i].any()}


def test_the_method_is_registered_and_validates():
    assert methods()["zero_smallest_row"].handler is zero_smallest_rows
    assert make_config({"method": "zero_smallest_row", "rows": 3}) == ZeroRowsConfig(rows=3)
    with pytest.raises(
        netslim.NetslimError,
        match=r"method 'zero_smallest_row'.*'rows'.*greater than or equal "
        r"to 1; got 0",
    ):
        make_config({"method": "zero_smallest_row", "rows": 0}, "recipe step 1")
    with pytest.raises(netslim.NetslimError, match="unknown field 'row'"):
        netslim.apply(netslim.build_model("lenet300"), "zero_smallest_row", row=2)


def test_the_method_runs_in_a_recipe_and_its_artifact_loads(tmp_path):
    torch.manual_seed(0)
    model = netslim.build_model("lenet300")
    norms = {n: m.weight.detach().norm(dim=1) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    steps = [{"method": "zero_smallest_row", "rows": 2}, {"method": "evaluate"}]
    result = netslim.compress(model, steps, data=_data(), out=tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [s["method"] for s in report["steps"]] == ["zero_smallest_row", "evaluate"]
    zeroed = report["steps"][0]["notes"]["zero_smallest_row"]["zeroed_rows"]
    assert set(zeroed) == set(norms)
    for name, rows in zeroed.items():
        layer = result.model.get_submodule(name)
        assert _zero_rows(layer) == set(rows) == set(norms[name].argsort()[:2].tolist())  # the two smallest rows
    loaded = netslim.load(result.artifact)
    x = _data(4)[0]
    assert torch.equal(loaded(x), result.model(x))
    assert all(_zero_rows(loaded.get_submodule(n)) == set(r) for n, r in zeroed.items())
    assert StepHistory.of(loaded).applied == ("zero_smallest_row",)


def test_a_name_taken_by_a_builtin_method_is_refused_at_the_decorator():
    class Clash(netslim.MethodConfig):
        method: ClassVar[str] = "magnitude"

    with pytest.raises(
        netslim.NetslimError,
        match=r"Method 'magnitude' is registered twice: by netslim\.prune.* and "
        r"by test_plugin_method\..*another name",
    ):
        netslim.register(Clash)(lambda model, cfg, ctx: model)
    assert methods()["magnitude"].config_cls is not Clash


@pytest.mark.parametrize(
    "bad, match",
    [(dict, "expected a MethodConfig subclass"), (netslim.MethodConfig, "MethodConfig.method must be set")],
)
def test_register_refuses_what_is_not_a_method(bad, match):
    with pytest.raises(netslim.NetslimError, match=match):
        netslim.register(bad)


def test_a_failing_source_is_reported_in_one_line_and_skipped(monkeypatch, caplog):
    monkeypatch.setattr(registry, "_FAILED", {})
    registry.add_source("plugin 'broken' (no_such_package_xyz)", lambda: __import__("no_such_package_xyz"))
    with caplog.at_level(logging.WARNING, logger="netslim.core.registry"):
        assert "magnitude" in methods()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "plugin 'broken' (no_such_package_xyz) failed to load" in lines[0] and "ModuleNotFoundError" in lines[0]
    with pytest.raises(
        netslim.NetslimError,
        match=r"Unknown method 'broken_method'.*Not loaded \(failed at import\): "
        r"plugin 'broken'",
    ):
        make_config({"method": "broken_method"})


PLUGIN = """
from typing import ClassVar
import netslim

class ToyConfig(netslim.MethodConfig):
    method: ClassVar[str] = "toy_plugin_method"

@netslim.register(ToyConfig)
def toy(model, cfg, ctx):
    return model
"""

CHECK = """
import sys, netslim
families = lambda: sorted(m for m in ("netslim.prune", "netslim.quantize", "netslim.codec", "toy_plugin_ok")
                          if m in sys.modules)
assert families() == [], families()  # import netslim loads no family, no plugin
for arg in sys.argv[1:]:
    if arg == "ExportConfig":  # the export formats are looked up, whichever families were imported before
        from netslim.recipe.steps import ExportConfig
        assert ExportConfig(format="nsz").format == "nsz"
    else:
        netslim.load(arg)
    print(arg.rsplit("/", 1)[-1], families())
from netslim.core.config import methods
from netslim.core.registry import failed_sources
assert "toy_plugin_method" in methods()
print(sorted(failed_sources()))
"""


def _run(site, *paths):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    run = subprocess.run(
        [sys.executable, "-c", CHECK, *map(str, paths)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines(), run.stderr


def test_plugins_and_families_load_lazily_and_a_broken_plugin_does_not_break_load(tmp_path):
    """A fresh process: a dense artifact loads without importing a family; a quantized one (its
    module types), an .nsz file (its format's loader) and ``ExportConfig(format="nsz")`` load the
    sources on the lookup; the broken plugin is one warning line, listed by failed_sources."""
    from netslim.codec import export_nsz

    site = tmp_path / "site"
    dist = site / "toy_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[netslim.plugins]\nok = toy_plugin_ok\nbroken = toy_plugin_broken\n")
    (site / "toy_plugin_ok.py").write_text(textwrap.dedent(PLUGIN))
    (site / "toy_plugin_broken.py").write_text("raise ImportError('toy plugin cannot start')\n")
    dense = netslim.save(netslim.build_model("lenet300"), tmp_path / "dense.safetensors")
    quantized = netslim.save(
        netslim.apply(netslim.build_model("lenet300"), "weight_only", bits=8, group_size=None),
        tmp_path / "int8.safetensors",
    )
    nsz = export_nsz(netslim.build_model("lenet300"), tmp_path / "m.nsz")

    out, err = _run(site, dense, quantized)
    everything = "['netslim.codec', 'netslim.prune', 'netslim.quantize', 'toy_plugin_ok']"
    assert out == [
        "dense.safetensors []",
        f"int8.safetensors {everything}",
        "[\"plugin 'broken' (toy_plugin_broken)\"]",
    ]
    reported = [line for line in err.splitlines() if "toy_plugin_broken" in line]
    assert len(reported) == 1 and "ImportError: toy plugin cannot start" in reported[0]
    assert _run(site, nsz)[0][0] == f"m.nsz {everything}"
    assert _run(site, "ExportConfig")[0][0] == f"ExportConfig {everything}"
