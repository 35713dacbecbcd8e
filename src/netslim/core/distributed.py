"""Calibration split across processes (``torch.distributed``) for the one-shot LLM methods.

Under ``torchrun --nproc-per-node N -m netslim compress ...`` (or any initialised process
group) the block engine (:func:`netslim.core.layerwise.run_sequential`) gives each rank an
equal, contiguous share of the calibration samples (:func:`shard_rows`); the per-layer
statistics are summed over ranks before each layer is solved (:func:`all_reduce_mean`: the
Hessians of SparseGPT / GPTQ, the activation norms of Wanda), so every rank solves the same
problem as one process would (up to the order of floating-point sums); the solved block is
then broadcast from rank 0 (:func:`broadcast_module`) so that every rank holds identical
weights, bit for bit, before the next block. Only rank 0 writes files (:func:`is_main`).

Backends: gloo on CPU, nccl on CUDA (:func:`init_from_env`). Without a process group all
of this is a no-op: world size 1.
"""
from __future__ import annotations

import datetime
import os

import torch
from torch import nn

from .errors import NetslimError

TIMEOUT = datetime.timedelta(hours=4)  # rank 0 measures a whole model while the others wait


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def is_main() -> bool:
    """True on the rank that writes files (rank 0, or a single process)."""
    return world()[0] == 0


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
    return True


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
        raise NetslimError(f"{what} ({len(x)}) must be a multiple of the number of processes ({size}) so that "
                           f"every rank calibrates on an equal share; use {len(x) // size * size or size} or "
                           f"{(len(x) // size + 1) * size}, or run with --nproc-per-node dividing {len(x)}.")
    k = len(x) // size
    return x[rank * k:(rank + 1) * k]


def all_reduce_mean(mean: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """Combine per-rank running means over ``count`` samples into the mean over all ranks'
    samples (summed in float64); ``(mean, count)`` unchanged in a single process."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return mean, count
    dev = device()
    total = mean.detach().to(dev, torch.float64) * count                  # Σ over this rank's samples
    n = torch.tensor([float(count)], dtype=torch.float64, device=dev)
    dist.all_reduce(total)
    dist.all_reduce(n)
    n_all = int(n.item())
    return (total / max(n_all, 1)).to(mean.device, mean.dtype), n_all


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Every parameter and buffer of ``module`` (masks included) set to rank ``src``'s values."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    dev = device()
    with torch.no_grad():
        for t in module.state_dict(keep_vars=True).values():
            wire = torch.uint8 if t.dtype == torch.bool else t.dtype  # gloo has no bool collectives
            buf = t.detach().to(dev, wire).contiguous()
            dist.broadcast(buf, src=src)
            if buf.data_ptr() != t.data_ptr():
                t.detach().copy_(buf.to(t.device, t.dtype))


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()
