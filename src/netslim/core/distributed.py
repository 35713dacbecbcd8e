"""Calibration split across processes (``torch.distributed``) for the one-shot LLM methods.

Under ``torchrun --nproc-per-node N -m netslim compress ...`` (or any initialised process
group) the block engine (:func:`netslim.core.layerwise.run_sequential`) gives each rank an
equal, contiguous share of the calibration samples (:func:`shard_rows`); the per-layer
statistics are summed over ranks before each layer is solved (:func:`all_reduce_mean`: the
Hessians of SparseGPT / GPTQ, the activation norms of Wanda), so every rank solves the same
problem as one process would (up to the order of floating-point sums); the solved block is
then broadcast from rank 0 (:func:`broadcast_module`) so that every rank holds identical
weights, bit for bit, before the next block. Only rank 0 writes files (:func:`is_main`).

Training steps (:func:`netslim.train.loop.fit`, through :mod:`netslim.train.parallel`) run
data-parallel: every rank takes an equal share of each global batch (:func:`shard_batch`),
gradients are averaged by ``DistributedDataParallel``, pruning decisions are rank 0's
(:func:`from_main`), and at the end every rank is checked to hold the same weights, bit for
bit (:func:`check_identical`). Steps that neither calibrate across ranks nor train
data-parallel run on rank 0 alone (:func:`alone`) and the other ranks load its checkpoint.

Backends: gloo on CPU, nccl on CUDA (:func:`init_from_env`). Without a process group all
of this is a no-op: world size 1.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .errors import NetslimError

TIMEOUT = datetime.timedelta(hours=4)  # rank 0 measures a whole model while the others wait
_ALONE = False  # inside alone(): this process acts as a single process


def _dist():
    import torch.distributed as dist

    return dist if not _ALONE and dist.is_available() and dist.is_initialized() else None


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside, this process behaves as a single process (world size 1, every collective here a
    no-op, :func:`netslim.train.loop.fit` without DDP): a step that rank 0 runs by itself while
    the other ranks wait for its checkpoint."""
    global _ALONE
    before, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = before


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def is_main() -> bool:
    """True on the rank that writes files (rank 0, or a single process)."""
    return world()[0] == 0


def requested_world() -> int:
    """The number of processes of this run: the process group's size, else the ``WORLD_SIZE``
    torchrun sets (known before the group is joined), else 1."""
    if _dist() is not None:
        return world()[1]
    size = os.environ.get("WORLD_SIZE", "")
    return int(size) if size.isdigit() and int(size) > 1 else 1


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment);
    gloo on CPU, nccl when CUDA is available. Returns whether this process is distributed."""
    import torch.distributed as dist

    size = os.environ.get("WORLD_SIZE")
    if size is None or not size.isdigit() or int(size) < 2:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=TIMEOUT)
        # Leave the group before the interpreter tears down: a process that exits with the
        # group's threads still running can abort ("terminate called without an active
        # exception", seen on a loaded machine in the kill-and-resume test).
        atexit.register(_leave)
    return True


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """Where collectives of this process group take tensors (CUDA for nccl)."""
    dist = _dist()
    if dist is not None and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_rows(x: torch.Tensor, what: str = "calibration num_samples") -> torch.Tensor:
    """This rank's contiguous share of the rows of ``x``; the row count must divide evenly."""
    rank, size = world()
    if size == 1:
        return x
    if len(x) % size:
        raise NetslimError(
            f"{what} ({len(x)}) must be a multiple of the number of processes ({size}) so that "
            f"every rank calibrates on an equal share; use {len(x) // size * size or size} or "
            f"{(len(x) // size + 1) * size}, or run with --nproc-per-node dividing {len(x)}."
        )
    k = len(x) // size
    return x[rank * k : (rank + 1) * k]


def all_reduce_mean(mean: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """Combine per-rank running means over ``count`` samples into the mean over all ranks'
    samples (summed in float64); ``(mean, count)`` unchanged in a single process."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return mean, count
    dev = device()
    total = mean.detach().to(dev, torch.float64) * count  # Σ over this rank's samples
    n = torch.tensor([float(count)], dtype=torch.float64, device=dev)
    dist.all_reduce(total)
    dist.all_reduce(n)
    n_all = int(n.item())
    return (total / max(n_all, 1)).to(mean.device, mean.dtype), n_all


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Each tensor set, in place, to rank ``src``'s values (every rank passes tensors of the same
    shapes and dtypes, in the same order)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    dev = device()
    with torch.no_grad():
        for t in tensors:
            wire = torch.uint8 if t.dtype == torch.bool else t.dtype  # gloo has no bool collectives
            buf = t.detach().to(dev, wire).contiguous()
            dist.broadcast(buf, src=src)
            if buf.data_ptr() != t.data_ptr():
                t.detach().copy_(buf.to(t.device, t.dtype))


def broadcast_module(module: nn.Module, src: int = 0, *, buffers_only: bool = False) -> None:
    """Every parameter and buffer of ``module`` (masks included) set to rank ``src``'s values;
    ``buffers_only``: the buffers alone (BatchNorm statistics, as DDP keeps rank 0's)."""
    tensors = module.buffers() if buffers_only else module.state_dict(keep_vars=True).values()
    broadcast_tensors(list(tensors), src)


def from_main(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pruning decision taken on rank 0: ``masks`` (name -> tensor) overwritten in place with rank
    0's (the names and shapes must agree on every rank: checked); returned for chaining."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return masks
    keys = sorted(masks)
    mine = [(k, tuple(masks[k].shape)) for k in keys]
    theirs = broadcast_object(mine)
    if theirs != mine:
        raise NetslimError(
            f"Rank {world()[0]} took a pruning decision over other layers than rank 0 "
            f"({_first_difference(mine, theirs)}); every rank must hold the same model."
        )
    broadcast_tensors([masks[k] for k in keys])
    return masks


def _first_difference(a: list, b: list) -> str:
    for x, y in zip(a, b):
        if x != y:
            return f"{x} here, {y} on rank 0"
    return f"{len(a)} layers here, {len(b)} on rank 0"


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable; e.g. the metrics rank 0 computed) on every rank."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=device())
    return box[0]


def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """Each (floating-point) tensor replaced, in place, by its mean over the ranks."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    dev, size = device(), dist.get_world_size()
    with torch.no_grad():
        for t in tensors:
            buf = t.detach().to(dev).contiguous()
            dist.all_reduce(buf)
            buf.div_(size)
            if buf.data_ptr() != t.data_ptr():
                t.detach().copy_(buf.to(t.device))


def mean_scalar(value: float) -> float:
    """The mean of ``value`` over the ranks (e.g. a training loss; NaN if it is NaN on any rank)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def shard_batch(batch: Any) -> Any:
    """This rank's equal, contiguous share of the rows of one training batch (a tensor, or a
    tuple / list / mapping of them sharing the first dimension; ``None``, numbers and 0-d tensors
    are kept whole).

    Every rank draws the same global batch (the task's seeded order), so the shards are disjoint
    and together are the batch one process would train on: a distributed sampler whose global
    batch is the single-process batch (with DDP averaging the gradients, one step of N ranks
    over B / N rows each is one step over B rows, up to the order of floating-point sums)."""
    rank, size = world()
    if size == 1:
        return batch
    rows = {len(t) for t in _leaves(batch) if t.ndim}
    if len(rows) != 1:
        raise NetslimError(
            f"A training batch must be tensors sharing their first (batch) dimension to be split "
            f"over {size} processes; got first dimensions {sorted(rows) or 'none'}."
        )
    n = rows.pop()
    if n % size:
        raise NetslimError(
            f"A training batch of {n} rows cannot be split evenly over {size} processes; make "
            f"every batch a multiple of {size} rows (batch_size; a DataLoader: drop_last=True and "
            f"a batch_size that {size} divides)."
        )
    k = n // size
    return _slice(batch, slice(rank * k, (rank + 1) * k))


def _leaves(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _leaves(v)
    elif isinstance(batch, (tuple, list)):
        for v in batch:
            yield from _leaves(v)
    elif not (batch is None or isinstance(batch, (bool, int, float))):  # a str: a row or not? refuse
        raise NetslimError(
            f"Cannot split a training batch holding a {type(batch).__name__} over processes; "
            "batches must be tensors, or tuples / lists / dicts of tensors."
        )


def _slice(batch: Any, rows: slice) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[rows] if batch.ndim else batch
    if isinstance(batch, Mapping):
        return {k: _slice(v, rows) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_slice(v, rows) for v in batch)
    if isinstance(batch, list):
        return [_slice(v, rows) for v in batch]
    return batch


def fingerprints(module: nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter and buffer (dtype, shape and bytes): equal iff bit for bit equal."""
    out = {}
    for name, t in module.state_dict(keep_vars=True).items():
        h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def check_identical(module: nn.Module, what: str) -> None:
    """Every rank holds the same parameters and buffers (masks included), bit for bit; a
    NetslimError on every rank naming the first tensor that differs otherwise."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    mine = fingerprints(module)
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    for rank, theirs in enumerate(every[1:], 1):
        if theirs != every[0]:
            names = sorted(set(theirs) ^ set(every[0])) or [k for k in every[0] if theirs[k] != every[0][k]]
            raise NetslimError(
                f"{what}: the processes hold different weights ({names[0]!r} differs between rank 0 "
                f"and rank {rank}); netslim keeps every rank identical, so this is a bug in the "
                "step's distributed support - run it in one process."
            )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (the model itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


_GLOO: dict[str, Any] = {}


def group_for(dev: torch.device):
    """The process group for DDP over parameters on ``dev``: the default group when its backend
    suits the device (gloo: any; nccl: CUDA), else a gloo group over the same ranks (made once;
    under nccl a model trained on the CPU)."""
    dist = _dist()
    if dist is None or dist.get_backend() != "nccl" or dev.type == "cuda":
        return None
    if "cpu" not in _GLOO:
        _GLOO["cpu"] = dist.new_group(backend="gloo", timeout=TIMEOUT)
    return _GLOO["cpu"]


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()
