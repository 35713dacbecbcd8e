"""Tasks: a dataset plus how a model is fed, trained and scored on it.

Every technique talks to data through this interface, so the same recipe step runs on
a CNN classifier, a causal LM or a sentence encoder:

* ``train_batches(epoch)`` / ``loss(model, batch)`` for training;
* ``evaluate(model, split)`` -> ``{metric: value, "loss": ...}`` (``metric`` is
  "accuracy", "perplexity" or "fidelity");
* ``calibration_inputs(n)`` for observers and one-shot methods;
* ``example_inputs(batch_size)`` for MACs and latency.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.errors import NetslimError, unknown_name
from netslim.core.hooks import eval_mode


class Task(ABC):
    name: str
    metric: str
    higher_is_better: bool = True

    @abstractmethod
    def train_batches(self, epoch: int, batch_size: int) -> Iterator[Any]: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]: ...

    @abstractmethod
    def example_inputs(self, batch_size: int) -> Any: ...

    @abstractmethod
    def calibration_inputs(self, num_samples: int, seed: int = 0) -> Any: ...

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        return model(**inputs) if isinstance(inputs, dict) else model(inputs)

    def steps_per_epoch(self, batch_size: int) -> int:
        return sum(1 for _ in self.train_batches(0, batch_size))

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "metric": self.metric}


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class ImageClassification(Task):
    """Fashion-MNIST classification: train / val split of the official train set, test set."""

    metric = "accuracy"

    def __init__(
        self,
        name: str = "fashion-mnist",
        val_size: int = 5000,
        seed: int = 0,
        augment: bool = False,
        limit: int | None = None,
        eval_batch_size: int = 1000,
    ):
        from netslim.data import fashion_mnist as fm

        self.name, self.seed, self.augment = name, seed, augment
        self.eval_batch_size = eval_batch_size
        x, y = fm.load_split("train")
        tr, va = fm.train_val_split(len(x), val_size, seed)
        xt, yt = fm.load_split("test")
        if limit is not None:  # small subsets for tests and smoke runs
            tr, va = tr[:limit], va[: max(1, limit // 5)]
            xt, yt = xt[:limit], yt[:limit]
        self.splits = {
            "train": (fm.normalize(x[tr]), y[tr]),
            "val": (fm.normalize(x[va]), y[va]),
            "test": (fm.normalize(xt), yt),
        }
        self._augment_fn: Callable = fm.augment

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.splits["train"]
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1 if len(x) >= batch_size else 1, batch_size):
            idx = perm[i : i + batch_size]
            xb = x[idx]
            if self.augment:
                xb = self._augment_fn(xb, g)
            yield xb, y[idx]

    def steps_per_epoch(self, batch_size: int) -> int:
        n = len(self.splits["train"][0])
        return max(1, n // batch_size)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        dev = _device_of(model)
        return F.cross_entropy(model(x.to(dev)), y.to(dev))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        if split not in self.splits:
            raise unknown_name("split", split, self.splits)
        x, y = self.splits[split]
        dev = _device_of(model)
        correct, loss_sum = 0, 0.0
        with eval_mode(model):
            for i in range(0, len(x), self.eval_batch_size):
                xb, yb = x[i : i + self.eval_batch_size].to(dev), y[i : i + self.eval_batch_size].to(dev)
                out = model(xb).float()
                loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
                correct += (out.argmax(1) == yb).sum().item()
        return {"accuracy": correct / len(x), "loss": loss_sum / len(x)}

    def example_inputs(self, batch_size: int) -> torch.Tensor:
        return (
            self.splits["test"][0][:batch_size].clone()
            if batch_size <= len(self.splits["test"][0])
            else torch.randn(batch_size, 1, 28, 28)
        )

    def calibration_inputs(self, num_samples: int, seed: int = 0) -> torch.Tensor:
        from netslim.data.calibration import take_samples

        return take_samples(self.splits["train"][0], num_samples, seed)


# ---------------------------------------------------------------------- registry
_TASKS: dict[str, Callable[..., Task]] = {"fashion-mnist": ImageClassification}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    _TASKS[name] = factory


def get_task(dataset: str, **options: Any) -> Task:
    """Build the task for ``dataset``; ``options`` go to its constructor (e.g. ``limit``)."""
    _load_optional_tasks()
    if dataset not in _TASKS:
        raise unknown_name("dataset", dataset, _TASKS)
    try:
        return _TASKS[dataset](**options)
    except TypeError as e:
        raise NetslimError(f"Dataset {dataset!r}: {e}.") from None


def dataset_names() -> list[str]:
    _load_optional_tasks()
    return sorted(_TASKS)


def _load_optional_tasks() -> None:
    # Text tasks live beside the HF models; importing them needs no transformers.
    from netslim.train import docs_task, lm_tasks  # noqa: F401


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(nll_sum / max(tokens, 1))
