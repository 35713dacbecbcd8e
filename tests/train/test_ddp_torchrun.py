"""``torchrun --nproc-per-node 2 -m netslim compress`` (issue 19, part 3) with a batch size the
two processes cannot share: a worker prints one ``netslim: error:`` line and exits 2 (torchrun
reports the exit code) before any work; OUT is not created. The kill-and-resume test is in
test_ddp_resume.py.
"""

from __future__ import annotations

import os

import pytest

dist = pytest.importorskip("torch.distributed")
from torchrun_util import TORCHRUN, model_file, recipe_file, torchrun  # noqa: E402

if not dist.is_available() or not hasattr(os, "fork") or TORCHRUN is None:
    pytest.skip("needs torch.distributed (gloo), fork and torchrun", allow_module_level=True)


def test_a_batch_size_two_processes_cannot_share_is_one_line_and_exit_2(tmp_path):
    recipe = recipe_file(tmp_path, [{"method": "finetune", "epochs": 1, "batch_size": 33}])
    proc = torchrun(recipe, model_file(tmp_path), tmp_path / "out")
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("netslim: error:")]
    # one line per worker (torchrun may stop the second worker before it prints its own)
    assert len(lines) in (1, 2) and len(set(lines)) == 1, err[-2000:]
    assert lines[0] == (
        "netslim: error: step 1 (finetune): batch_size 33 must be a multiple of the number of "
        "processes (2): every rank trains on an equal share of each batch; use 32 or 34, or "
        "another --nproc-per-node."
    )
    assert "exitcode  : 2" in err and proc.returncode != 0  # torchrun's report of the worker's exit code
    assert not (tmp_path / "out").exists()
