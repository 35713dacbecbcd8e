"""Recipes are package data: a built wheel ships every recipe, and an installed copy (outside
the repository, no NETSLIM_RECIPES) finds and lists them, technique recipes as "any (--model)"."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "src" / "netslim" / "recipes").glob("*.yaml"))
# The rows of `netslim recipes`: "│ name │ model │ description │" (rich draws the table).
ROW = re.compile(r"^│ (\S+)\s+│\s*(.+?)\s+│")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NETSLIM_RECIPES", "PYTHONPATH")}
    return env | {"OMP_NUM_THREADS": "1", "NETSLIM_PROGRESS": "0"} | extra


def _run(args: list, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the project (the checkout gets no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            dist,
            src,
        ],
        cwd=dist,
        env=_clean_env(),
    )
    (whl,) = dist.glob("netslim-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", target, wheel],
        cwd=target,
        env=_clean_env(),
    )
    return target


@pytest.fixture(scope="module")
def listing(site, tmp_path_factory) -> str:
    """`python -m netslim.cli recipes` of the installed copy, run outside the repository."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    return _run(
        [sys.executable, "-m", "netslim.cli", "recipes"], cwd=cwd, env=_clean_env(PYTHONPATH=str(site), COLUMNS="200")
    ).stdout


def test_the_repository_recipes_link_points_at_the_package_data():
    assert (REPO / "recipes").resolve() == (REPO / "src" / "netslim" / "recipes").resolve()
    assert len(SHIPPED) >= 30 and (REPO / "src" / "netslim" / "recipes" / "demo.yaml") in SHIPPED


def test_the_wheel_ships_every_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "netslim/recipes/demo.yaml" in names
    assert {f"netslim/recipes/{p.name}" for p in SHIPPED} <= names
    assert any(n.startswith("netslim/prune/csrc/") and n.endswith(".c") for n in names)  # the older package data


def test_an_installed_copy_finds_its_recipes(site, tmp_path):
    code = (
        "import netslim.cli as c; d = c.recipes_dir(); print(d.resolve()); "
        "print(' '.join(sorted(p.name for p in d.glob('*.yaml'))))"
    )
    out = _run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(PYTHONPATH=str(site))).stdout
    where, listed = out.strip().splitlines()[-2:]
    assert Path(where).is_relative_to(site.resolve()), where
    assert listed.split() == [p.name for p in SHIPPED]


def test_recipes_lists_tied_models_and_technique_recipes(listing):
    rows = dict(m.groups() for line in listing.splitlines() if (m := ROW.match(line)))
    assert "demo" in rows
    for path in SHIPPED:
        model = (yaml.safe_load(path.read_text()) or {}).get("model")
        assert rows.get(path.stem) == (str(model) if model else "any (--model)"), path.stem
    assert sum(v == "any (--model)" for v in rows.values()) >= 6
