"""Data-parallel training (issue 19, part 3): two gloo processes, forked once for the module.

* the oracle: DDP averages gradients, so with plain SGD and no batch-statistics layers two ranks
  of B / 2 rows train what one process of B rows trains (float tolerance), and both ranks hold
  the same weights bit for bit;
* every training method (rigl, set, movement, gradual, l0, imp, lottery, qat, distill) ends
  with identical weights and masks on both ranks, its decisions those of one process (up to
  rare near-ties);
* a recipe under torchrun (a step rank 0 runs alone, data-parallel steps, evaluate, export):
  rank 1 writes nothing (an audit hook records its file-system writes), rank 0 writes what one
  process writes;
* a batch the ranks cannot share equally: one clear error on every rank, before training.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not hasattr(os, "fork"):
    pytest.skip("needs torch.distributed (gloo) and fork", allow_module_level=True)

from safetensors.torch import load_file, save_file  # noqa: E402

from netslim.core.config import apply  # noqa: E402
from netslim.core.context import StepContext  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.distill.step import DistillConfig, distill_from  # noqa: E402
from netslim.prune import gradual_prune, imp_prune, lottery_ticket  # noqa: E402
from netslim.prune.l0 import l0_prune  # noqa: E402
from netslim.prune.movement import movement_prune  # noqa: E402
from netslim.prune.sparse_training import rigl_train, set_train  # noqa: E402
from netslim.quantize.qat import QATConfig  # noqa: E402
from netslim.train.loop import FinetuneConfig, fit  # noqa: E402
from netslim.train.object_tasks import task_from_object  # noqa: E402

gen = torch.Generator().manual_seed(0)
X = torch.randn(128, 16, generator=gen)
Y = (X[:, :4].argmax(1) + (X[:, 4] > 1).long()) % 4  # a learnable 4-class rule
TASK = task_from_object((X, Y), nn.Linear(1, 1))
XC = torch.randn(64, 1, 12, 12, generator=gen)
YC = (XC.mean((1, 2, 3)) > 0).long() + 2 * (XC[:, 0, :6].mean((1, 2)) > 0).long()
SMALL = {"epochs": 1, "max_steps": 8, "batch_size": 16}
FT = {"finetune": SMALL}  # the training options of a step that trains


def _mlp(width: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 12 * 12, 4),
    )


class _Recorded(type(TASK)):
    """TASK, recording the first feature of every row each training step sees."""

    def __init__(self):
        super().__init__(TASK.splits)
        self.rows: list[torch.Tensor] = []

    def loss(self, model, batch):
        self.rows.append(batch[0][:, 0].clone())
        return super().loss(model, batch)


ORACLE = FinetuneConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-4, select_best=False)


def _qat(model: nn.Module) -> nn.Module:
    cfg = QATConfig(
        weight_bits=4,
        calibration_samples=32,
        prune={"sparsity": 0.5, "frequency": 2},
        finetune=FinetuneConfig(optimizer="adamw", lr=1e-3, weight_decay=0.0, **SMALL),
    )
    return apply(model, cfg, StepContext(task=TASK, out_dir=Path("/nonexistent")))


def _distill(model: nn.Module) -> nn.Module:  # a narrower student: a learned hint adapter (outside forward)
    distill_from(model, _mlp(seed=1), DistillConfig(distill=0.5, hints={"2": "2"}, adapter_samples=64, **FT), task=TASK)
    return model


METHODS = {
    "rigl": (lambda m: rigl_train(m, TASK, sparsity=0.5, frequency=2, from_scratch=False, **FT), 32),
    "set": (lambda m: set_train(m, TASK, sparsity=0.5, frequency=2, from_scratch=False, **FT), 32),
    "movement": (lambda m: movement_prune(m, TASK, sparsity=0.5, frequency=2, **FT), 32),
    # start_step 2: the masks are first registered mid-training (the DDP wrapper is rebuilt)
    "gradual": (lambda m: gradual_prune(m, TASK, sparsity=0.5, start_step=2, frequency=2, end_step=6, **FT), 32),
    "l0": (lambda m: l0_prune(m, TASK, sparsity=0.5, **FT), 32),
    "imp": (lambda m: imp_prune(m, TASK, sparsity=0.5, rounds=2, **FT), 32),
    "lottery": (lambda m: lottery_ticket(m, TASK, sparsity=0.5, rewind_step=1, **FT), 32),
    "qat": (_qat, 32),
    "distill": (_distill, 16),
}

RECIPE = {
    "name": "ddp",
    "measure": {"batch_size": 2, "repeats": 1, "paired": False},
    "steps": [
        {"method": "channels", "ratio": 0.5, "scope": "uniform"},  # rank 0 alone, then loaded
        {"method": "finetune", "epochs": 2, "batch_size": 16, "lr": 0.02, "select_best": False},
        {
            "method": "gradual",
            "sparsity": 0.5,
            "frequency": 1,
            "end_step": 3,
            "finetune": {"epochs": 1, "batch_size": 16, "lr": 0.02},
        },
        {"method": "evaluate"},
        {"method": "export"},
    ],
}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _run_recipe(out: Path) -> dict:
    from netslim.recipe.runner import execute_recipe
    from netslim.recipe.spec import parse_recipe

    return execute_recipe(parse_recipe(RECIPE), out, model_ref=_cnn(), data=(XC, YC))[0]


def _watch_writes(root: Path, log: list[str]) -> None:
    """An audit hook recording every file-system write under ``root`` by this process."""
    prefix = str(root)
    writes = {
        "os.rename",
        "os.remove",
        "os.mkdir",
        "os.truncate",
        "os.link",
        "os.symlink",
        "shutil.rmtree",
        "shutil.copyfile",
        "os.chmod",
    }

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and str(args[0]).startswith(prefix):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            ):
                log.append(f"open {args[0]} {mode}")
        elif event in writes and any(str(a).startswith(prefix) for a in args):
            log.append(f"{event} {args}")

    sys.addaudithook(hook)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, task = _mlp(), _Recorded()
        summary = fit(model, task, ORACLE)
        save_file(_state(model) | {"rows": torch.stack(task.rows)}, f"{out}/oracle_{rank}.safetensors")
        Path(f"{out}/oracle_{rank}.json").write_text(json.dumps({k: summary[k] for k in ("steps", "processes")}))
        for name, (run, width) in METHODS.items():
            save_file(_state(run(_mlp(width))), f"{out}/{name}_{rank}.safetensors")
        try:
            fit(_mlp(), TASK, FinetuneConfig(batch_size=15, max_steps=1))
            message = ""
        except NetslimError as e:
            message = str(e)
        Path(f"{out}/error_{rank}.txt").write_text(message)
        writes: list[str] = []
        if rank == 1:
            _watch_writes(Path(out) / "run", writes)
        os.environ["WORLD_SIZE"] = str(world)  # what torchrun sets: the runner joins the existing group
        report = _run_recipe(Path(out) / "run")
        Path(f"{out}/run_{rank}.json").write_text(json.dumps({"report": bool(report), "writes": writes}))
        Path(f"{out}/unshared_{rank}.txt").write_text(_unshared_out(Path(out) / f"node{rank}", rank))
    finally:
        dist.destroy_process_group()


def _unshared_out(out: Path, rank: int) -> str:
    """Each rank opens its own --out (as two machines without a shared file system would)."""
    import contextlib

    from netslim.recipe.runner import _open_out

    with contextlib.ExitStack() as lock:
        try:
            _open_out(out, {}, lock, resume=False, force=False, main=rank == 0)
            return ""
        except NetslimError as e:
            return str(e)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, fork_ranks):
    out = tmp_path_factory.mktemp("ddp")
    fork_ranks(_worker, out)
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_of_half_the_batch_train_what_one_process_of_the_whole_batch_trains(ranks):
    model, task = _mlp(), _Recorded()
    single = fit(model, task, ORACLE)
    got, other = load_file(ranks / "oracle_0.safetensors"), load_file(ranks / "oracle_1.safetensors")
    # each rank trained on its own half of every global batch: together, the single-process batch
    assert torch.equal(torch.cat([got.pop("rows"), other.pop("rows")], 1), torch.stack(task.rows))
    assert _same(got, other)
    assert got.keys() == _state(model).keys()
    for k, v in _state(model).items():
        assert torch.allclose(got[k], v, rtol=1e-5, atol=1e-6), (k, (got[k] - v).abs().max())
    info = json.loads((ranks / "oracle_0.json").read_text())
    assert info == {"steps": single["steps"], "processes": 2} and "processes" not in single


@pytest.mark.parametrize("method", list(METHODS))
def test_every_rank_ends_with_identical_weights_and_masks(ranks, method):
    a, b = load_file(ranks / f"{method}_0.safetensors"), load_file(ranks / f"{method}_1.safetensors")
    assert _same(a, b)
    if method not in ("qat", "distill"):  # masks (qat's are inside its int8 codes by now)
        masks = [a[k] for k in a if k.endswith(".mask")]  # the method did prune, identically
        assert masks and sum(int((~m).sum()) for m in masks) / sum(m.numel() for m in masks) > 0.3


@pytest.mark.parametrize("method", list(METHODS))
def test_two_ranks_decide_what_one_process_decides(ranks, method):
    run, width = METHODS[method]
    single = _state(run(_mlp(width)))
    got = load_file(ranks / f"{method}_0.safetensors")
    assert got.keys() == single.keys()
    for k, v in single.items():
        if k.endswith("act_qparams"):  # int8 (scale, zero point) pairs: a zero point may round one step apart
            assert torch.allclose(got[k], v, rtol=1e-3, atol=1.0), k
        elif v.is_floating_point():  # a near-tie may move one connection; the rest agrees
            close = torch.isclose(got[k], v, rtol=1e-3, atol=1e-4).float().mean()
            assert close > 0.97, (k, close)
        else:  # masks, int8 codes
            assert (got[k] == v).float().mean() > 0.98, k


def test_a_batch_the_ranks_cannot_share_is_refused_before_training(ranks):
    for r in (0, 1):
        msg = (ranks / f"error_{r}.txt").read_text()
        assert msg.startswith("batch_size 15 must be a multiple of the number of processes (2)"), msg
        assert "use 14 or 16" in msg


def test_under_torchrun_rank_0_alone_writes_what_one_process_writes(ranks, tmp_path):
    r0, r1 = (json.loads((ranks / f"run_{r}.json").read_text()) for r in (0, 1))
    assert r0["report"] and not r1["report"]
    assert r1["writes"] == []  # rank 1 created, renamed, removed nothing under OUT
    single = _run_recipe(tmp_path / "single")
    names = sorted(p.name for p in (ranks / "run").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "single").iterdir())
    report = json.loads((ranks / "run" / "report.json").read_text())
    assert [s.get("torchrun", {}).get("ran") for s in report["steps"]] == [
        "rank 0 alone",
        "data-parallel",
        "data-parallel",
        "rank 0",
        "rank 0",
    ]
    a, b = load_file(ranks / "run" / "model.safetensors"), load_file(single["artifact"])
    assert a.keys() == b.keys()
    for k in a:  # the same channels removed; training agrees up to summation order (and near-ties)
        assert a[k].shape == b[k].shape, k
        if a[k].is_floating_point():
            assert torch.isclose(a[k], b[k], rtol=1e-3, atol=1e-4).float().mean() > 0.97, k
        else:
            assert (a[k] == b[k]).float().mean() > 0.98, k


def test_an_out_the_other_ranks_cannot_see_is_refused(ranks):
    assert (ranks / "unshared_0.txt").read_text() == ""
    msg = (ranks / "unshared_1.txt").read_text()
    assert msg.startswith(
        f"--out {str(ranks / 'node1')!r}: rank 1 does not see the files rank 0 writes there; "
        "with several machines (torchrun --nnodes) --out must be on a file system they all share"
    )


def test_a_batch_is_split_into_equal_contiguous_row_shares(monkeypatch):
    from netslim.core import distributed

    batch = ({"input_ids": torch.arange(12).view(6, 2), "scale": torch.tensor(2.0)}, torch.arange(6), None)
    for rank in (0, 1, 2):
        monkeypatch.setattr(distributed, "world", lambda r=rank: (r, 3))
        (inputs, y, none) = distributed.shard_batch(batch)
        assert torch.equal(y, torch.arange(6)[2 * rank : 2 * rank + 2]) and none is None
        assert torch.equal(inputs["input_ids"], batch[0]["input_ids"][2 * rank : 2 * rank + 2])
        assert inputs["scale"] is batch[0]["scale"]  # a 0-d tensor is not rows
    monkeypatch.setattr(distributed, "world", lambda: (0, 4))
    with pytest.raises(NetslimError, match="A training batch of 6 rows cannot be split evenly over 4 processes"):
        distributed.shard_batch(batch)
    with pytest.raises(NetslimError, match="sharing their first .batch. dimension.*got first dimensions \\[5, 6\\]"):
        distributed.shard_batch((torch.zeros(6, 2), torch.zeros(5)))
    with pytest.raises(NetslimError, match="Cannot split a training batch holding a str"):
        distributed.shard_batch((["a", "b"], torch.zeros(2)))


def test_the_batch_sizes_a_step_trains_with_are_found_nested_too():
    from netslim.core.config import make_config
    from netslim.train.parallel import batch_sizes, check_batch_size

    found = {
        m: list(batch_sizes(make_config(c)))
        for m, c in {
            "finetune": {"method": "finetune", "batch_size": 30},
            "rigl": {"method": "rigl", "finetune": {"batch_size": 48}},
            "qat": {"method": "qat", "finetune": {"batch_size": 20}},
            "magnitude": {"method": "magnitude", "sparsity": 0.5},
        }.items()
    }
    assert found == {
        "finetune": [("batch_size", 30)],
        "rigl": [("finetune.batch_size", 48)],
        "qat": [("finetune.batch_size", 20)],
        "magnitude": [],
    }
    check_batch_size(48, 4)
    with pytest.raises(
        NetslimError,
        match=r"finetune.batch_size 20 must be a multiple of the number of processes "
        r"\(8\).*use 16 or 24, or another --nproc-per-node",
    ):
        check_batch_size(20, 8, "finetune.batch_size")
    with pytest.raises(NetslimError, match=r"batch_size 3 .* \(4\).*use 4,"):
        check_batch_size(3, 4)
