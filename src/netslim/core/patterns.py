"""Declared sparsity patterns: an N:M layer stays N:M through every later step, or the step fails.

The ``nm`` step (and any method that prunes N:M) declares, on the model, which layers it
gave an ``n`` of every ``m`` pattern (:func:`declare_nm`). :func:`netslim.core.config.apply`
runs :func:`check_patterns` after every step: if a layer then holds more than ``n`` non-zero
weights in some group of ``m`` consecutive inputs (e.g. a dynamic-sparsity step regrew
weights, a new unstructured mask replaced the N:M one, a structured step changed the input
width), the step fails with one line naming the layer and the pattern - before a later
step or the N:M storage layout (:mod:`netslim.quantize.sparse_codes`) relies on it.

Layers are read through what every netslim layer exposes: ``dequantize_weight()`` for
quantized layers, ``weight`` otherwise (masks applied, CSR decoded). The declaration is
state on the model object (``netslim_nm``): it is not stored in artifacts, so a run resumed
from a checkpoint no longer checks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import model_validator
from torch import nn

from .config import MethodConfig
from .errors import NetslimError

ATTR = "netslim_nm"


def declare_nm(model: nn.Module, names: list[str], n: int, m: int) -> None:
    """Record that ``names`` hold (at most) ``n`` non-zeros in every group of ``m`` inputs."""
    table = dict(getattr(model, ATTR, None) or {})
    table.update({name: (int(n), int(m)) for name in names})
    model.__dict__[ATTR] = table  # a plain attribute (not a submodule, not state)


class NMFields(MethodConfig):
    """Base of a method config with optional N:M fields ``n`` / ``m`` (n kept of every m weights),
    which the subclass declares (in its own field order): given both or neither, with n < m; ``nm``."""

    if TYPE_CHECKING:  # pydantic fields of the subclass
        n: int | None
        m: int | None

    @model_validator(mode="after")
    def _nm_pair(self) -> NMFields:
        if (self.n is None) != (self.m is None):
            raise ValueError("'n' and 'm' go together (N:M keeps n of every m weights); give both or neither")
        if self.n is not None and self.m is not None and self.n >= self.m:
            raise ValueError("'n' must be < 'm' (N:M keeps n of every m weights)")
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        return None if self.n is None or self.m is None else (self.n, self.m)


def declared_nm(model: nn.Module) -> dict[str, tuple[int, int]]:
    return dict(getattr(model, ATTR, None) or {})


def effective_weight(layer: nn.Module) -> torch.Tensor | None:
    """The weight a layer computes with (quantized: dequantized; masked: masked), or None."""
    dequantize = getattr(layer, "dequantize_weight", None)
    if callable(dequantize):
        return dequantize()
    w = getattr(layer, "weight", None)
    return w.detach() if isinstance(w, torch.Tensor) else None


def nm_excess(w: torch.Tensor, n: int, m: int) -> tuple[int, int]:
    """(groups holding more than ``n`` non-zeros, their largest count) along the input dim of ``w``
    ((out, in) or (out, in, kh, kw): runs of ``m`` input channels at each kernel position)."""
    t = w.movedim(1, -1) if w.dim() > 2 else w
    if t.shape[-1] % m:
        return -1, 0
    counts = (t.reshape(-1, m) != 0).sum(1)
    over = counts > n
    return int(over.sum()), int(counts.max()) if counts.numel() else 0


def check_patterns(model: nn.Module, method: str) -> None:
    """NetslimError naming ``method`` when a layer declared N:M is no longer N:M (see the module docstring)."""
    for name, (n, m) in declared_nm(model).items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise NetslimError(
                f"{method} removed layer {name!r}, which an earlier step pruned {n}:{m}; "
                "the N:M pattern cannot be kept."
            ) from None
        w = effective_weight(layer)
        if w is None or w.dim() < 2:
            raise NetslimError(
                f"{method} turned layer {name!r} (pruned {n}:{m} earlier) into a "
                f"{type(layer).__name__} without a weight matrix; the N:M pattern is broken."
            )
        with torch.no_grad():
            bad, most = nm_excess(w, n, m)
        if bad:
            what = (
                f"its input width {w.shape[1]} is no longer a multiple of {m}"
                if bad < 0
                else f"{bad} group(s) of {m} inputs hold up to {most} non-zeros"
            )
            raise NetslimError(
                f"{method} broke the {n}:{m} pattern of layer {name!r}: {what} (at most {n} "
                f"allowed). Keep the N:M masks through this step, or prune N:M again after it."
            )
