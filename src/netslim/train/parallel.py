"""Data-parallel training under ``torch.distributed``: what :func:`netslim.train.loop.fit` does
differently when a process group with more than one rank is initialised (``torchrun
--nproc-per-node N -m netslim compress ...``, or the caller's own group).

* **batches**: ``batch_size`` stays the *global* batch; every rank draws the same batch (the
  task's seeded order) and trains on its equal, contiguous share of the rows
  (:func:`netslim.core.distributed.shard_batch`), so ``batch_size`` must be a multiple of the
  number of processes (checked before training; by the recipe runner before any work);
* **gradients**: the model runs wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on
  CUDA; ``static_graph``, so parameters used outside the forward pass - hint adapters, L0
  gates - and unused ones are handled), which averages the gradients: one step of N ranks
  over B / N rows each is one step over B rows, up to the order of floating-point sums. The
  wrapper is rebuilt when a callback changes the model's structure (a mask parametrization
  registered during training);
* **buffers**: as DDP keeps them by default, BatchNorm running statistics are rank 0's (each
  rank's batch statistics come from its own share); they are copied from rank 0 at the end;
* **decisions**: validation metrics (best-epoch selection) are computed on rank 0 and sent to
  the others; pruning callbacks take their mask decisions on rank 0 and broadcast them
  (:func:`netslim.core.distributed.from_main`);
* **checked**: at the end every rank must hold the same parameters and buffers, bit for bit
  (:func:`netslim.core.distributed.check_identical`).

The loss a step reports is the mean over the ranks. Random draws inside training (dropout,
L0 gate noise) use the same seed on every rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.nn.utils import parametrize

from netslim.core import distributed
from netslim.core.errors import NetslimError


def batch_sizes(cfg: BaseModel, where: str = "") -> Iterator[tuple[str, int]]:
    """``(field path, global batch size)`` of every training run a step config describes: its own
    ``batch_size`` when it is one (a TrainConfig) and those of nested training configs (a training
    step's ``finetune``, e.g. ``qat``'s or ``rigl``'s)."""
    from netslim.train.loop import TrainConfig

    if isinstance(cfg, TrainConfig):
        yield f"{where}batch_size", cfg.batch_size
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, TrainConfig):
            yield from batch_sizes(value, f"{where}{name}.")


def check_batch_size(batch_size: int, size: int, where: str = "batch_size") -> None:
    """A NetslimError unless ``size`` processes can share every batch of ``batch_size`` rows equally."""
    if size > 1 and batch_size % size:
        lower = batch_size // size * size
        fix = f"{lower} or {lower + size}" if lower else f"{size}"
        raise NetslimError(
            f"{where} {batch_size} must be a multiple of the number of processes ({size}): every "
            f"rank trains on an equal share of each batch; use {fix}, or another --nproc-per-node."
        )


class DataParallel:
    """fit's handle on the process group (every method a no-op in a single process)."""

    def __init__(self, model: nn.Module, batch_size: int):
        self.model = model
        self.rank, self.size = distributed.world()
        check_batch_size(batch_size, self.size)
        self._ddp: nn.Module | None = None
        self._structure: tuple | None = None

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def net(self) -> nn.Module:
        """The module a training step calls: the DDP wrapper (built on first use, after the
        callbacks' ``on_train_begin``; rebuilt when the structure changed), or the model."""
        if not self.active:
            return self.model
        structure = _structure(self.model)
        if self._ddp is None or structure != self._structure:
            self._ddp, self._structure = self._wrap(), structure
        return self._ddp

    def _wrap(self) -> nn.Module:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        dev = next(self.model.parameters()).device
        # Buffers are not synced before each forward (rank 0's are copied at the end): newer torch
        # spells it forward_sync_buffers, older versions broadcast_buffers.
        known = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers": False}
        return DistributedDataParallel(
            self.model,
            device_ids=[dev] if dev.type == "cuda" else None,
            process_group=distributed.group_for(dev),
            static_graph=True,
            **no_sync,
        )

    def shard(self, batch: Any) -> Any:
        return distributed.shard_batch(batch) if self.active else batch

    def loss_value(self, loss: torch.Tensor) -> float:
        """The step's loss averaged over the ranks (NaN on every rank if it is NaN on one)."""
        return distributed.mean_scalar(loss.item()) if self.active else loss.item()

    def evaluate(self, task, split: str) -> dict[str, float]:
        """Rank 0's validation metrics on every rank (the others wait)."""
        if not self.active:
            return task.evaluate(self.model, split)
        return distributed.broadcast_object(task.evaluate(self.model, split) if self.main else None)

    def finish(self) -> None:
        """Rank 0's buffers everywhere, then every rank checked to hold the same model."""
        self._ddp = None
        if self.active:
            distributed.broadcast_module(self.model, buffers_only=True)
            distributed.check_identical(self.model, "data-parallel training")


def _structure(model: nn.Module) -> tuple:
    """What DDP's bookkeeping depends on: the trainable parameters and the parametrizations."""
    params = tuple(id(p) for p in model.parameters() if p.requires_grad)
    chains = tuple(
        (name, key, len(plist))
        for name, m in model.named_modules()
        if parametrize.is_parametrized(m)
        for key, plist in m.parametrizations.items()
    )
    return params, chains
