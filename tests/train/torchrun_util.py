"""Helpers of the torchrun tests (test_ddp_torchrun.py, test_ddp_resume.py): a recipe, a model
artifact, ``torchrun --nproc-per-node 2 -m netslim compress`` in a subprocess, its processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
LIMIT = 512


def recipe_file(tmp: Path, steps: list) -> Path:
    import yaml

    path = tmp / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "ddp-resume",
                "dataset": "fashion-mnist",
                "steps": steps,
                "measure": {"batch_size": 2, "repeats": 1, "paired": False},
            }
        )
    )
    return path


def model_file(tmp: Path) -> Path:
    import netslim
    from netslim.models import build_model

    torch.manual_seed(0)
    path = tmp / "lenet300.safetensors"
    netslim.save(build_model("lenet300"), path)
    return path


def torchrun(recipe: Path, model: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETSLIM_PROGRESS": "0"}
    cmd = [
        TORCHRUN,
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "-m",
        "netslim",
        "compress",
        str(recipe),
        "--model",
        str(model),
        "--limit",
        str(LIMIT),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts each worker in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
