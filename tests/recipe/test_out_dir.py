"""The output directory of a run: unusable paths, the lock (two processes), another run's
state, corrupt state on resume, and resume with changed inputs (refused unless force)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import netslim
from netslim.core.errors import NetslimError
from netslim.models import build_model
from netslim.recipe import parse_recipe
from netslim.recipe.runner import LOCK, STATE, execute_recipe, stored_state

RECIPE = parse_recipe({"name": "t", "measure": {"batch_size": 4, "repeats": 1}, "steps": [{"method": "evaluate"}]})
LIMIT = 64


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "lenet300.safetensors"
    return netslim.save(build_model("lenet300"), path, {"model": "lenet300", "dataset": "fashion-mnist"})


def run(out, model_path, recipe=RECIPE, limit=LIMIT, **kw):
    return execute_recipe(recipe, out, model_ref=str(model_path), data_options={"limit": limit}, **kw)[0]


@pytest.fixture(scope="module")
def finished(model_path, tmp_path_factory):
    """A finished run's folder (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    run(out, model_path)
    return out


def copy_of(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "out"))


def test_out_that_is_a_file_or_cannot_be_created(model_path, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    with pytest.raises(NetslimError, match="exists and is not a directory"):
        run(taken, model_path)
    with pytest.raises(NetslimError, match="its parent .* exists and is not a directory"):
        run(taken / "out", model_path)
    with pytest.raises(NetslimError, match=r"cannot be created or written \("):
        run(Path("/proc/netslim-test/out"), model_path)
    assert taken.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_locked_out_fails_at_once_and_a_dead_runs_lock_does_not_block(model_path, tmp_path):
    out = tmp_path / "out"
    holder = textwrap.dedent(f"""\
        import time
        from pathlib import Path
        from netslim.recipe.runner import _locked
        with _locked(Path({str(out)!r})):
            print("locked", flush=True)
            time.sleep(120)
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        with pytest.raises(NetslimError, match=rf"{out} is in use by another netslim run \(pid {child.pid}\)"):
            run(out, model_path)
        assert time.perf_counter() - t0 < 30  # did not wait for the holder (it sleeps 120 s)
        assert not (out / STATE).exists()
    finally:
        child.kill()  # a crashed run: its lock file stays, the OS drops the lock
        child.wait()
    assert (out / LOCK).read_text().strip() == str(child.pid)
    report = run(out, model_path)
    assert report["steps"][0]["method"] == "evaluate"
    assert (out / LOCK).read_text().strip() == str(os.getpid())


def test_a_fresh_run_refuses_another_runs_out_unless_force(model_path, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = (out / STATE).read_bytes()
    with pytest.raises(NetslimError, match=r"holds another run .*--resume continues it, --force replaces it"):
        run(out, model_path, limit=32)
    assert (out / STATE).read_bytes() == before
    state = json.loads(before)
    old_ckpt = out / "checkpoints" / "step01_old.safetensors"
    shutil.copy(out / state["checkpoint"], old_ckpt)
    (out / STATE).write_text(json.dumps({**state, "checkpoint": "checkpoints/step01_old.safetensors"}))
    report = run(out, model_path, limit=32, force=True)
    assert not old_ckpt.exists()  # the old run's checkpoint went with it
    new = json.loads((out / STATE).read_text())
    assert new["data_options"] == {"limit": 32} and "forced" not in new and "forced_resume" not in report


CORRUPT = {
    "not_json": b'{"recipe": ',
    "binary": bytes(range(256)),
    "a_list": b"[]",
    "no_steps": json.dumps({"recipe": RECIPE.to_dict(), "model_ref": "m", "baseline": {}, "skipped": []}).encode(),
    "bad_step": None,  # filled from the finished run's state below
    "empty_baseline": None,
    "escaping_checkpoint": None,
    "missing_checkpoint": None,
    "other_steps": None,
}


def _corrupt(name: str, state: dict) -> bytes:
    if CORRUPT[name] is not None:
        return CORRUPT[name]
    changed = {
        "bad_step": {"steps": ["evaluate"]},
        "empty_baseline": {"baseline": {}},
        "escaping_checkpoint": {"checkpoint": "../../../../../../etc/hostname"},
        "missing_checkpoint": {"checkpoint": "checkpoints/gone.safetensors"},
        "other_steps": {"steps": [{**state["steps"][0], "method": "export"}]},
    }[name]
    return json.dumps({**state, **changed}).encode()


@pytest.mark.parametrize("name", sorted(CORRUPT))
@pytest.mark.parametrize("force", [False, True])
def test_resume_from_a_corrupt_state_is_a_clear_error(model_path, finished, tmp_path, name, force):
    out = copy_of(finished, tmp_path)
    (out / STATE).write_bytes(_corrupt(name, json.loads((finished / STATE).read_text())))
    with pytest.raises(
        NetslimError,
        match=rf"Cannot resume: {out / STATE} is unreadable or corrupt \(.+\); start "
        "a fresh run with --force",
    ):
        run(out, model_path, resume=True, force=force)


def test_resume_refuses_changed_inputs_unless_force(model_path, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    state = json.loads((out / STATE).read_text())
    with pytest.raises(NetslimError, match=r"different data options \(--limit\)"):
        run(out, model_path, limit=32, resume=True)
    other = parse_recipe({**RECIPE.to_dict(), "seed": 1})
    with pytest.raises(NetslimError, match="different recipe"):
        run(out, model_path, recipe=other, resume=True)
    moved = shutil.copy(model_path, tmp_path / "other.safetensors")
    with pytest.raises(NetslimError, match="different model"):
        run(out, moved, resume=True)
    fingerprint = {k: state[k] for k in ("recipe", "model_ref", "dataset", "data", "data_options")}
    changed = {**fingerprint, "data": {"path": "docs.jsonl", "sha256": "0" * 64}}  # the user's file changed
    with pytest.raises(NetslimError, match="different data than"):
        stored_state(out, changed, resume=True, force=False)
    assert json.loads((out / STATE).read_text()) == state  # refusals change nothing

    report = run(out, model_path, limit=32, resume=True, force=True)
    forced = report["forced_resume"]
    assert forced[0]["resumed_with_different"] == ["data options (--limit)"]
    assert forced[0]["previous"] == {"data_options": {"limit": LIMIT}}
    assert json.loads((out / STATE).read_text())["forced"] == forced
    assert report["steps"] == state["steps"]  # the completed step was not re-run


def test_resume_of_a_different_recipes_steps_is_refused_even_with_force(model_path, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    other = parse_recipe({**RECIPE.to_dict(), "steps": [{"method": "export"}]})
    with pytest.raises(NetslimError, match="even with --force: the steps done"):
        run(out, model_path, recipe=other, resume=True, force=True)


def test_the_python_front_door_keeps_its_keywords(model_path, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    result = netslim.compress(str(model_path), RECIPE, out=out, limit=LIMIT, resume=True)
    assert result.out_dir == out and result.report["steps"][0]["method"] == "evaluate"
    with pytest.raises(NetslimError, match="holds another run"):
        netslim.compress(str(model_path), RECIPE, out=out, limit=LIMIT)
