"""Kill-and-resume under ``torchrun --nproc-per-node 2 -m netslim compress`` (issue 19, part 3):
the run is killed (SIGKILL, every process) after its first step, resumed with ``--resume`` under
torchrun, and ends with the artifact of an uninterrupted 2-process run, bit for bit (same files,
every rank loading the checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
from safetensors.torch import load_file  # noqa: E402
from torchrun_util import LIMIT, TORCHRUN, descendants, model_file, recipe_file, torchrun  # noqa: E402

if not dist.is_available() or not hasattr(os, "fork") or TORCHRUN is None:
    pytest.skip("needs torch.distributed (gloo), fork and torchrun", allow_module_level=True)

STEPS = [
    {"method": "finetune", "epochs": 1, "max_steps": 4, "batch_size": 32, "lr": 0.01},
    {"method": "finetune", "epochs": 4, "batch_size": 32, "lr": 0.01, "select_best": False},
    {"method": "export"},
]


def _uninterrupted(recipe: Path, model: Path, out: Path) -> None:
    """The same recipe run by two forked gloo processes, start to end (the runner joins their group)."""
    import torch.multiprocessing as mp

    mp.start_processes(_rank, args=(str(recipe), str(model), str(out)), nprocs=2, start_method="fork")


def _rank(rank: int, recipe: str, model: str, out: str) -> None:
    from netslim.recipe import load_recipe
    from netslim.recipe.runner import execute_recipe

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}.init", rank=rank, world_size=2)
    os.environ["WORLD_SIZE"] = "2"
    try:
        execute_recipe(load_recipe(recipe), out, model_ref=model, data_options={"limit": LIMIT})
    finally:
        dist.destroy_process_group()


def test_killed_under_torchrun_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    recipe, model, out = recipe_file(tmp_path, STEPS), model_file(tmp_path), tmp_path / "out"
    proc = torchrun(recipe, model, out)
    state, deadline = out / "state.json", time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = json.loads(state.read_text())["steps"] if state.is_file() else []
            if len(done) == 1:  # step 1 recorded, step 2 training: kill every process at once
                for pid in [*descendants(proc.pid), proc.pid]:
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.communicate()
    assert [s["method"] for s in json.loads(state.read_text())["steps"]] == ["finetune"]
    assert not (out / "model.safetensors").exists() and not (out / "report.json").exists()

    resumed = torchrun(recipe, model, out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [s["method"] for s in report["steps"]] == ["finetune", "finetune", "export"]
    assert [s["torchrun"]["ran"] for s in report["steps"][1:]] == ["data-parallel", "rank 0"]

    _uninterrupted(recipe, model, tmp_path / "whole")
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    names = {p.name for p in out.iterdir()}
    assert names == {p.name for p in (tmp_path / "whole").iterdir()}
