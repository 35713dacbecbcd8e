"""Every Python code block of the README runs as written (in a fresh working directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[index], f"README.md python block {index + 1}", "exec")
    exec(code, {"__name__": f"readme_block_{index + 1}"})


def test_the_files_the_readme_names_for_the_demo_are_the_ones_it_writes():
    """``make demo`` runs recipes/demo.yaml into runs/demo: every ``runs/demo/<file>`` the README
    names is a file that run writes (the report, or the export step's filename + format suffix)."""
    from netslim.core.export import exporter
    from netslim.core.registry import load_sources
    from netslim.recipe import load_recipe

    load_sources()
    recipe = load_recipe(README.parent / "recipes" / "demo.yaml")
    written = {"report.html", "report.json", "report.md", "baseline.safetensors", "state.json"}
    for step in recipe.steps:
        if step.method == "export":
            written.add(step.filename + exporter(step.format)[1])
    named = set(re.findall(r"runs/demo/([\w.-]+\.\w+)", README.read_text(encoding="utf-8")))
    assert named and named <= written, sorted(named - written)
