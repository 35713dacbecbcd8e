"""Trained weight sharing (Deep Compression stage 2): cluster, then fine-tune the centroids.

```yaml
- method: share
  bits: {"type:Conv2d": 8, "type:Linear": 5}   # or one int for every selected layer
  init: linear              # linear | density | random (Lloyd's initialisations)
  algorithm: auto           # optimal (exact DP) | lloyd | auto (DP when k * distinct <= 4M)
  finetune: {epochs: 2, lr: 0.0001, optimizer: adam}   # centroid training (a FinetuneConfig)
```

Each selected Linear/Conv2d becomes a :class:`~netslim.codec.modules.SharedLinear` /
``SharedConv2d``: its non-zero weights are clustered per layer into k = 2^bits shared
values; pruned (zero) weights stay exactly zero. In Python the method is
:func:`netslim.codec.share_weights` (``share_weights(model, data, bits=5)``); its building
blocks are :func:`cluster_weights` (the clustering alone, no data) and
``finetune_centroids(model, task)`` (the centroid training).

The centroids train with Adam by default: a centroid's gradient is the *sum* over its cluster,
so its scale grows with the cluster size; Adam's normalisation makes one ``lr`` fit every layer.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.selectors import Selector, select, settings_for
from netslim.core.surgery import get_module, replace_module
from netslim.train.loop import FinetuneConfig, TrainingStep, finetune_field, fit

from .kmeans import cluster_1d
from .modules import SharedConv2d, SharedLinear, SharedWeight

log = logging.getLogger(__name__)
SHAREABLE: tuple[type, ...] = (nn.Linear, nn.Conv2d)
MAX_BITS = 8
# The training defaults of the centroids (and biases, norms) after clustering: Adam (module docstring).
CENTROID_TRAINING: dict[str, Any] = {"epochs": 2, "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0}


class ShareConfig(TrainingStep):
    """Per-layer k-means weight sharing with centroid fine-tuning."""

    method = "share"
    # Read by netslim.recipe.preflight: what a later pruning / quantizing step would find instead.
    converts_layers: ClassVar[str] = "replaced them by shared-weight layers (each weight tied to a k-means centroid)"
    bits: int | dict[str, int] = Field(
        default_factory=lambda: {"type:Conv2d": 8, "type:Linear": 5},
        description="bits per cluster index (k = 2^bits): one int, or selector -> int",
    )
    init: Literal["linear", "density", "random"] = "linear"
    algorithm: Literal["auto", "optimal", "lloyd"] = "auto"
    include: Selector = None
    exclude: Selector = None
    codebook: Literal["float16", "float32"] = Field(
        "float16", description="centroid storage; float16 rounds the trained centroids (measured)"
    )
    dense: Literal["float32", "float16"] = Field(
        "float32",
        description="float16 rounds the other float tensors (biases, norms) to half values, "
        "which the .nsz stores losslessly in 2 bytes (accuracy measured after)",
    )
    finetune: FinetuneConfig = finetune_field(
        "training of the centroids (and biases, norms) after clustering; epochs: 0 = none", **CENTROID_TRAINING
    )
    seed: int = Field(0, description="k-means initialisation seed (the training's: finetune.seed)")

    @field_validator("bits", mode="before")
    @classmethod
    def _bits(cls, v):
        def ok(b):
            return isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_BITS

        if ok(v) or (isinstance(v, dict) and v and all(isinstance(k, str) and ok(b) for k, b in v.items())):
            return v
        raise ValueError(f"must be an int in [1, {MAX_BITS}] or a non-empty mapping selector -> int in [1, {MAX_BITS}]")

    @classmethod
    def example(cls) -> ShareConfig:
        return cls(bits=3, algorithm="lloyd", finetune={"epochs": 1, "max_steps": 2})

    def preflight(self, model, task) -> list[dict] | None:
        """Before a recipe runs: some selected layer gets a width from 'bits'; returns the skipped ones."""
        return None if model is None else _plan(model, self)[1]


def _bits_for(name: str, module: nn.Module, cfg: ShareConfig) -> int | None:
    return cfg.bits if isinstance(cfg.bits, int) else settings_for(name, module, cfg.bits)


def _shared_twin(module: nn.Module, k: int) -> SharedWeight:
    """An empty SharedLinear/SharedConv2d with ``module``'s geometry, on its device."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        new = SharedLinear(module.in_features, module.out_features, bias, num_clusters=k)
    else:
        new = SharedConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            bias,
            num_clusters=k,
        )
    new = new.to(module.weight.device)
    if bias:
        with torch.no_grad():
            new.bias.copy_(module.bias.detach().float())
    return new


def share_layer(module: nn.Module, *, bits: int, cfg: ShareConfig) -> tuple[SharedWeight, dict[str, Any]]:
    """Cluster the non-zero weights of one Linear/Conv2d; returns its shared twin and facts."""
    t0 = time.perf_counter()
    w = module.weight.detach()  # effective (masked) weight
    keep = w != 0  # pruned weights stay zero
    k = 1 << bits
    result = cluster_1d(w[keep].double().cpu().numpy(), k, init=cfg.init, algorithm=cfg.algorithm, seed=cfg.seed)
    codebook = torch.zeros(k, dtype=torch.float32)
    codebook[: len(result.centroids)] = torch.from_numpy(result.centroids).float()
    index = torch.zeros(w.shape, dtype=torch.long)
    index[keep.cpu()] = torch.from_numpy(result.labels + 1)  # 0 = pruned, 1..k = centroid
    new = _shared_twin(module, k)
    new.assign(codebook, index)
    facts = {
        "bits": bits,
        "clusters": k,
        "nonzero": int(keep.sum()),
        "numel": w.numel(),
        "algorithm": result.algorithm,
        "sse": result.sse,
        "seconds": time.perf_counter() - t0,
    }
    return new, facts


def cluster_weights(model: nn.Module, cfg: ShareConfig) -> dict[str, Any]:
    """Replace the layers ``cfg`` selects by shared-weight twins, in place (no training): the
    clustering of the ``share`` method. Returns ``{"layers": {name: facts}, "skipped": [{name, reason}]}``.
    """
    todo, skipped = _plan(model, cfg)
    layers = {}
    for name, bits in todo:
        new, facts = share_layer(get_module(model, name), bits=bits, cfg=cfg)
        replace_module(model, name, new)
        layers[name] = facts
        log.info("shared %s: %s", name, facts)
    return {"layers": layers, "skipped": skipped}


def _plan(model: nn.Module, cfg: ShareConfig) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
    """``([(name, bits)] to share, [{name, reason}] skipped)``; raises when nothing would be shared."""
    todo, skipped = [], []
    for name in select(model, cfg.include, cfg.exclude, types=SHAREABLE):
        module = get_module(model, name)
        bits = _bits_for(name, module, cfg)
        if bits is None:
            skipped.append({"name": name, "reason": "no selector of 'bits' matches it"})
        elif isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            skipped.append({"name": name, "reason": f"padding_mode {module.padding_mode!r} is not supported"})
        else:
            todo.append((name, bits))
    if not todo:
        raise NetslimError(
            f"share: no layer would be shared (include={cfg.include!r}, exclude={cfg.exclude!r}, "
            f"bits={cfg.bits!r}); supported types: Linear, Conv2d."
        )
    return todo, skipped


def finetune_centroids(model: nn.Module, task, *, cfg: FinetuneConfig | None = None) -> dict[str, Any]:
    """Train the centroids (gradients summed per cluster by the gather) and the other
    parameters; every weight stays on a centroid and pruned weights stay zero. ``cfg``
    defaults to ShareConfig's ``finetune`` (:data:`CENTROID_TRAINING`)."""
    cfg = cfg or FinetuneConfig(**CENTROID_TRAINING)
    if cfg.epochs == 0:
        return {"steps": 0}
    summary = fit(model, task, cfg)
    return {k: v for k, v in summary.items() if k != "history"}


@torch.no_grad()
def round_codebooks(model: nn.Module, dtype: torch.dtype = torch.float16) -> int:
    """Round every centroid to the nearest ``dtype`` value (stored exactly in the file)."""
    n = 0
    for m in model.modules():
        if isinstance(m, SharedWeight):
            m.codebook.copy_(m.codebook.to(dtype).to(m.codebook.dtype))
            n += 1
    return n


@torch.no_grad()
def round_dense(model: nn.Module) -> int:
    """Round every float32 parameter and buffer outside the codebooks to float16 values
    (kept in float32). Tensors outside float16's range are left alone. Returns the count."""
    n = 0
    for m in model.modules():
        tensors = list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
        for name, t in tensors:
            if t.dtype != torch.float32 or (isinstance(m, SharedWeight) and name == "codebook"):
                continue
            if t.numel() and float(t.abs().max()) < 65504:
                t.copy_(t.to(torch.float16).to(torch.float32))
                n += 1
    return n


def on_centroids(model: nn.Module) -> bool:
    """Every weight of every shared layer equals a centroid or (pruned) zero."""
    for m in model.modules():
        if isinstance(m, SharedWeight):
            w = m.weight.detach()
            table = torch.cat([m.codebook.detach().new_zeros(1), m.codebook.detach()])
            if not bool(torch.isin(w, table).all()):
                return False
    return True


def codebook_usage(model: nn.Module) -> dict[str, int]:
    return {
        n: int(np.count_nonzero(np.bincount(m.weight_index.cpu().numpy().reshape(-1), minlength=2)[1:]))
        for n, m in model.named_modules()
        if isinstance(m, SharedWeight)
    }
