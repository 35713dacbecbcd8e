"""In-memory data as a :class:`~netslim.train.tasks.Task` (the Python API's ``data=``), and the
classification pieces that tasks on a user's files share (:mod:`netslim.train.file_tasks`).

* :func:`task_from_object`: a ``Task`` as it is; a ``DataLoader`` (:class:`LoaderTask`: its own
  batches, order and batch size); ``(X, y)`` tensors; ``X`` alone, or a dict of tensors (inputs
  for calibration only: training and evaluation need labels). In-memory data serves every split
  (train, val, test) alike; to hold out a test set, pass a data path or a Task.
* :class:`ClassifierTask`: cross-entropy and accuracy over ``(inputs, labels)`` batches;
  :class:`TensorClassificationTask` holds the inputs of each split in memory.
* :func:`model_kind`: what a model is (causal LM, classifier, encoder, plain module), from its
  class and config alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.errors import NetslimError, unknown_name
from netslim.core.hooks import eval_mode
from netslim.data import files
from netslim.data.calibration import take_samples
from netslim.data.files import SPLITS
from netslim.train.lm_tasks import _logits
from netslim.train.tasks import Task, _device_of

if TYPE_CHECKING:
    from netslim.train.file_tasks import DataSpec

MODEL_KINDS = ("causal_lm", "text_classification", "image_classification", "embedding", "module")


# ----------------------------------------------------------------------- the model
def model_kind(model: nn.Module) -> str:
    """One of :data:`MODEL_KINDS`, from the model's class and config (it is never run)."""
    declared = getattr(model, "netslim_model_kind", None)  # a model run elsewhere (an .onnx file) says its kind
    if declared in MODEL_KINDS:
        return declared
    if "transformers" not in sys.modules:  # then it cannot be a transformers model
        return "module"
    from torch.nn.utils import parametrize
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return "module"
    name = parametrize.type_before_parametrizations(model).__name__
    for suffixes, kind in (
        (("ForCausalLM", "LMHeadModel"), "causal_lm"),
        (("ForSequenceClassification",), "text_classification"),
        (("ForImageClassification",), "image_classification"),
    ):
        if name.endswith(suffixes):
            return kind
    if name.endswith("ForMaskedLM"):  # an encoder with its MLM head: fidelity of its last hidden states
        return "embedding"
    # A bare text encoder (or decoder) embeds; a vision or encoder-decoder base model does not.
    other = getattr(model.config, "is_encoder_decoder", False) or any(
        hasattr(model.config, a) for a in ("num_channels", "image_size")
    )
    return "embedding" if name.endswith("Model") and not other else "module"


# ------------------------------------------------------------------- classification
def _to(inputs: Any, dev: torch.device) -> Any:
    return {k: v.to(dev) for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs.to(dev)


def _rows(inputs: Any, idx: torch.Tensor) -> Any:
    return {k: v[idx] for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs[idx]


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Index batches of one epoch: a seeded shuffle, full batches only (one short batch if n < batch_size)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    for i in range(0, max(1, n - batch_size + 1), batch_size):
        yield perm[i : i + batch_size]


def describe_spec(task: Task) -> dict[str, Any]:
    """``{"dataset": "files", "metric", "data": resolved spec}``; ``"in-memory"`` without a spec."""
    if task.spec is None:
        return {"dataset": "in-memory", "metric": task.metric}
    return {"dataset": "files", "metric": task.metric, "data": task.spec.model_dump(mode="json")}


class ClassifierTask(Task):
    """Cross-entropy and accuracy over ``(inputs, labels)`` batches; subclasses give the batches."""

    name, metric = "files", "accuracy"
    labelled = True
    spec: DataSpec | None = None
    classes: tuple[str, ...] = ()

    def _eval_batches(self, split: str) -> Iterator[tuple[Any, torch.Tensor]]:
        raise NotImplementedError

    def _need_labels(self) -> None:
        if not self.labelled:
            raise NetslimError(
                "This data has inputs but no labels: training and evaluation need labels; pass "
                "(X, y), a DataLoader of (x, y) batches, or a data path."
            )

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """Class logits (B, K)."""
        return _logits(super().forward(model, _to(inputs, _device_of(model))))

    def loss(self, model: nn.Module, batch: tuple[Any, torch.Tensor]) -> torch.Tensor:
        self._need_labels()
        inputs, y = batch
        out = self.forward(model, inputs)
        return F.cross_entropy(out, y.to(out.device))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        self._need_labels()
        if split not in files.SPLIT_NAMES:
            raise unknown_name("split", split, files.SPLIT_NAMES)
        correct, count, loss_sum = 0, 0, 0.0
        with eval_mode(model):
            for inputs, y in self._eval_batches(files.SPLIT_NAMES[split]):
                out = self.forward(model, inputs).float()  # (B, K)
                y = y.to(out.device)
                loss_sum += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(-1) == y).sum().item()
                count += len(y)
        return {"accuracy": correct / max(count, 1), "loss": loss_sum / max(count, 1)}

    describe = describe_spec


class TensorClassificationTask(ClassifierTask):
    """Inputs held in memory per split (a tensor, or a dict of tensors sharing the first dim) and
    int64 labels (None: inputs only, for calibration). ``splits[split] = (inputs, labels)``."""

    def __init__(
        self,
        splits: Mapping[str, tuple[Any, torch.Tensor | None]],
        *,
        seed: int = 0,
        spec: DataSpec | None = None,
        classes: tuple[str, ...] = (),
        eval_batch_size: int = 256,
    ):
        self.splits, self.seed, self.spec, self.classes = dict(splits), seed, spec, tuple(classes)
        self.eval_batch_size = eval_batch_size
        self.labelled = all(y is not None for _, y in self.splits.values())
        if not self.labelled:
            self.metric = "none"
        if spec is None:
            self.name = "in-memory"

    def _size(self, split: str) -> int:
        x = self.splits[split][0]
        return len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[tuple[Any, torch.Tensor]]:
        self._need_labels()
        x, y = self.splits["train"]
        for idx in epoch_order(len(y), batch_size, self.seed, epoch):
            yield _rows(x, idx), y[idx]

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, self._size("train") // batch_size)

    def _eval_batches(self, split: str) -> Iterator[tuple[Any, torch.Tensor]]:
        x, y = self.splits[split]
        for i in range(0, len(y), self.eval_batch_size):
            idx = torch.arange(i, min(i + self.eval_batch_size, len(y)))
            yield _rows(x, idx), y[idx]

    def example_inputs(self, batch_size: int) -> Any:
        return _rows(self.splits["test"][0], torch.arange(batch_size) % self._size("test"))  # repeats if short

    def calibration_inputs(self, num_samples: int, seed: int = 0) -> Any:
        """``num_samples`` rows drawn with ``seed``; every row when the data holds fewer (the
        tensors a Python call passes are its calibration set)."""
        n = self._size("train")
        idx = take_samples(torch.arange(n), min(num_samples, n), seed)
        return _rows(self.splits["train"][0], idx)


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, labels or None)`` of one DataLoader batch."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != "labels"}, batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise NetslimError(
        f"DataLoader batches must be (x, y), x, or a dict of tensors (optional 'labels'); "
        f"got {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "") + "."
    )


def _concat(parts: list[Any]) -> Any:
    if not isinstance(parts[0], Mapping):
        return torch.cat(parts)
    shapes = {k: {tuple(p[k].shape[1:]) for p in parts} for k in parts[0]}
    for k, s in shapes.items():
        if len(s) > 1:
            raise NetslimError(
                f"DataLoader batches differ in the shape of {k!r} ({', '.join(map(str, sorted(s)))}); "
                "pad every batch to one length (padding='max_length') to draw calibration inputs."
            )
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class LoaderTask(ClassifierTask):
    """A user's ``DataLoader``: the same batches, in the loader's own order and batch size, for
    training, every split and the first rows of calibration / example inputs."""

    name = "in-memory"

    def __init__(self, loader: Any):
        first = next(iter(loader), None)
        if first is None:
            raise NetslimError("The DataLoader yields no batches.")
        self.loader = loader
        self.labelled = _split_batch(first)[1] is not None
        if not self.labelled:
            self.metric = "none"

    def _batches(self) -> Iterator[tuple[Any, torch.Tensor | None]]:
        return (_split_batch(b) for b in self.loader)

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[tuple[Any, torch.Tensor]]:
        self._need_labels()
        return self._batches()  # the loader's batch size, not batch_size

    def steps_per_epoch(self, batch_size: int) -> int:
        try:
            return len(self.loader)
        except TypeError:  # an IterableDataset without __len__: count one pass
            return sum(1 for _ in self.loader)

    def _eval_batches(self, split: str) -> Iterator[tuple[Any, torch.Tensor]]:
        return self._batches()

    def _first_rows(self, n: int) -> tuple[Any, int]:
        parts, have = [], 0
        for inputs, _ in self._batches():
            parts.append(inputs)
            have += len(next(iter(inputs.values()))) if isinstance(inputs, Mapping) else len(inputs)
            if have >= n:
                break
        return _concat(parts), have

    def example_inputs(self, batch_size: int) -> Any:
        x, have = self._first_rows(batch_size)
        return _rows(x, torch.arange(batch_size) % have)

    def calibration_inputs(self, num_samples: int, seed: int = 0) -> Any:
        """The first ``num_samples`` rows the loader yields (its order decides, not ``seed``)."""
        x, have = self._first_rows(num_samples)
        if have < num_samples:
            raise NetslimError(f"The DataLoader yields {have} samples; asked for {num_samples} calibration samples.")
        return _rows(x, torch.arange(num_samples))


# ---------------------------------------------------------------- in-memory data
def task_from_object(obj: Any, model: nn.Module) -> Task:
    """A task for the Python API's ``data=``: a Task as it is; a ``DataLoader``; ``(X, y)``;
    ``X`` alone (inputs for calibration only; training and evaluation need labels).

    In-memory data serves every split (train, val, test) alike; to hold out a test set,
    pass a data path or a Task.
    """
    if isinstance(obj, Task):
        return obj
    if isinstance(obj, torch.utils.data.DataLoader):
        return LoaderTask(obj)
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[1], torch.Tensor):
        x, y = obj
        n = len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)
        if y.ndim != 1 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or len(y) != n:
            raise NetslimError(
                f"data (X, y): y must be a 1-D integer tensor of {n} class ids; got {y.dtype} of "
                f"shape {tuple(y.shape)}."
            )
        num = getattr(getattr(model, "config", None), "num_labels", None)
        if (
            num is not None
            and model_kind(model).endswith("classification")
            and len(y)
            and not 0 <= y.min() <= y.max() < num
        ):
            raise NetslimError(
                f"data (X, y): labels span [{int(y.min())}, {int(y.max())}]; the model has "
                f"num_labels={num}: labels must lie in [0, {num})."
            )
        return TensorClassificationTask(dict.fromkeys(SPLITS, (x, y.long())))
    if isinstance(obj, torch.Tensor) or (
        isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        if isinstance(obj, Mapping) and "labels" in obj:
            return task_from_object(({k: v for k, v in obj.items() if k != "labels"}, obj["labels"]), model)
        return TensorClassificationTask(dict.fromkeys(SPLITS, (obj, None)))
    raise NetslimError(
        f"data: expected a path, a DataLoader, (X, y) tensors, a tensor X, a dict of tensors or a "
        f"Task; got {type(obj).__name__}."
    )
