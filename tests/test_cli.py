"""End-to-end: `netslim train` + `netslim compress` on a data subset, report checked independently."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import netslim
from netslim.measure import count_nonzero, count_params, macs_per_layer
from netslim.train.tasks import get_task

LIMIT = 2000


def run_cli(*args, env_extra=None, check=True):
    env = {**os.environ, "NETSLIM_PROGRESS": "0", **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "netslim.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    env = {"NETSLIM_CACHE": str(cache)}
    run_cli("train", "lenet300", "--epochs", 1, "--limit", LIMIT, env_extra=env)
    return env, cache


def test_compress_end_to_end_report_matches_independent_measurements(trained, tmp_path):
    env, cache = trained
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: e2e\nmodel: lenet300\nmeasure: {batch_size: 16, repeats: 3}\nsteps:\n"
        "  - method: finetune\n    epochs: 1\n    max_steps: 5\n  - method: evaluate\n"
        "  - method: export\n    filename: slim\n"
    )
    out = tmp_path / "out"
    proc = run_cli("compress", recipe, "--out", out, "--limit", LIMIT, env_extra=env)
    assert "accuracy" in proc.stdout
    rep = json.loads((out / "report.json").read_text())
    for key in ("recipe", "model", "dataset", "baseline", "final", "steps", "layers", "skipped"):
        assert key in rep
    assert rep["recipe"] == "e2e" and rep["model"] == "lenet300" and rep["dataset"] == "fashion-mnist"
    for m in (rep["baseline"], rep["final"], *(s["metrics"] for s in rep["steps"])):
        assert set(m) >= {"accuracy", "params", "nonzero", "macs", "size_bytes", "latency_ms_b1", "latency_ms_bN"}
    assert [s["method"] for s in rep["steps"]] == ["finetune", "evaluate", "export"]
    assert all(s["seconds"] >= 0 and "params" in s for s in rep["steps"])

    artifact = out / "slim.safetensors"
    assert Path(rep["artifact"]) == artifact
    model = netslim.load(artifact)
    task = get_task("fashion-mnist", limit=LIMIT)
    assert rep["final"]["size_bytes"] == artifact.stat().st_size
    assert rep["final"]["params"] == count_params(model) == 266610
    assert rep["final"]["nonzero"] == count_nonzero(model)
    assert rep["final"]["macs"] == sum(macs_per_layer(model, torch.zeros(1, 1, 28, 28)).values())
    assert rep["final"]["accuracy"] == pytest.approx(task.evaluate(model)["accuracy"])
    baseline = netslim.load(cache / "models" / "lenet300.safetensors")
    assert rep["baseline"]["accuracy"] == pytest.approx(task.evaluate(baseline)["accuracy"])
    assert {r["name"] for r in rep["layers"]} == {"fc1", "fc2", "fc3"}
    assert sum(r["params"] for r in rep["layers"]) == rep["final"]["params"]
    for f in ("report.md", "report.html", "plots/sparsity.png", "plots/tradeoff.png", "plots/size_breakdown.png"):
        assert (out / f).stat().st_size > 0
    assert "| accuracy |" in (out / "report.md").read_text()

    # eval / inspect / bench on the artifact
    assert f"accuracy={rep['final']['accuracy']:.4f}" in run_cli("eval", artifact, "--limit", LIMIT).stdout
    assert "fc1" in run_cli("inspect", artifact).stdout
    assert "size_bytes" in run_cli("bench", artifact, "--repeats", 3, "--batch-size", 8).stdout


def test_resume_continues_after_last_completed_step(trained, tmp_path):
    from netslim.recipe import parse_recipe, run_recipe

    env, cache = trained
    os.environ["NETSLIM_CACHE"] = env["NETSLIM_CACHE"]
    try:
        steps = [{"method": "finetune", "epochs": 1, "max_steps": 3}, {"method": "evaluate"}]
        recipe = parse_recipe(
            {"name": "r", "model": "lenet300", "measure": {"repeats": 2, "batch_size": 4}, "steps": steps}
        )
        out = tmp_path / "o"
        first = run_recipe(recipe, out, data_options={"limit": LIMIT})
        state = json.loads((out / "state.json").read_text())
        assert len(state["steps"]) == 2 and (out / state["checkpoint"]).is_file()
        # Pretend the last step did not finish, then resume: only it runs again.
        state["steps"] = state["steps"][:1]
        state["checkpoint"] = "checkpoints/step01_finetune.safetensors"
        netslim.save(netslim.load(out / "checkpoints/step02_evaluate.safetensors"), out / state["checkpoint"])
        (out / "state.json").write_text(json.dumps(state))
        again = run_recipe(recipe, out, resume=True, data_options={"limit": LIMIT})
        assert again["steps"][0]["seconds"] == first["steps"][0]["seconds"]  # not re-run
        assert again["final"]["accuracy"] == pytest.approx(first["final"]["accuracy"])
        other = parse_recipe({"name": "other", "model": "lenet300", "steps": [{"method": "evaluate"}]})
        with pytest.raises(netslim.NetslimError, match="different recipe"):
            run_recipe(other, out, resume=True)
    finally:
        os.environ.pop("NETSLIM_CACHE", None)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["compress", "no_such_recipe"], "does not exist"),
        (["train", "alexnet"], "Unknown model 'alexnet'; allowed values:"),
        (["eval", "missing.safetensors"], "does not exist"),
        (["compress", "demo", "--model", "lenet5"], "No trained checkpoint for model 'lenet5'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, pattern, tmp_path):
    proc = run_cli(*args, env_extra={"NETSLIM_CACHE": str(tmp_path)}, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(pattern, proc.stderr), proc.stderr


def test_invalid_recipe_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - method: finetune\n    epochs: many\n")
    proc = run_cli("compress", bad, "--model", "lenet300", check=False)
    assert proc.returncode == 2 and "step 1" in proc.stderr and "'epochs'" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_recipes_lists_shipped_recipes_and_help():
    out = run_cli("recipes").stdout
    assert "demo" in out
    assert "compress" in run_cli("--help").stdout
