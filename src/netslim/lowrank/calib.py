"""What rank selection needs from data: input Gram matrices and layer geometry.

Both are gathered with forward hooks on the original model, one pass over the inputs.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import nn

from netslim.core.surgery import get_module

from .conv import unfold_patches


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _chunks(inputs: Any, batch_size: int) -> Iterator[Any]:
    """Split a tensor (or a dict of tensors sharing dim 0) into batches."""
    if isinstance(inputs, dict):
        n = next(len(v) for v in inputs.values() if isinstance(v, torch.Tensor))
        for i in range(0, n, batch_size):
            yield {k: v[i:i + batch_size] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    else:
        for i in range(0, len(inputs), batch_size):
            yield inputs[i:i + batch_size]


def _run(model: nn.Module, batch: Any) -> None:
    dev = _device(model)
    if isinstance(batch, dict):
        model(**{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    else:
        model(batch.to(dev))


def _rows(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The layer's input as rows of the matrix it multiplies: (N, n).

    With a token ``mask`` (B, T) matching a (B, T, in) input, padding positions are
    dropped: they are not data, and in a padded batch they can outnumber the tokens.
    """
    if isinstance(module, nn.Conv2d):
        return unfold_patches(x, module)  # (B·L, in·kh·kw)
    if mask is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(x.device).bool()]  # (tokens, in)
    return x.reshape(-1, x.shape[-1])  # (B·T, in)


@torch.no_grad()
def input_grams(model: nn.Module, names: Sequence[str], inputs: Any, batch_size: int = 64,
                ) -> dict[str, torch.Tensor]:
    """``{name: XᵀX}`` (float64, n×n) of each layer's inputs over ``inputs``, plus "count"."""
    grams: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor | None] = [None]  # the current batch's attention mask, if any
    hooks = []
    for name in names:
        module = get_module(model, name)

        def hook(m, args, name=name):
            rows = _rows(m, args[0].detach(), mask[0]).double()  # (N, n)
            g = rows.T @ rows
            grams[name] = grams[name] + g if name in grams else g

        hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for batch in _chunks(inputs, batch_size):
            mask[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
            _run(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return grams


@torch.no_grad()
def layer_geometry(model: nn.Module, names: Sequence[str], example: Any) -> dict[str, dict[str, int]]:
    """Per layer, for one forward of ``example``: positions (tokens or output pixels) per
    sample and, for convs, input/output heights and widths."""
    geo: dict[str, dict[str, int]] = {}
    hooks = []
    for name in names:
        def hook(m, args, out, name=name):
            x = args[0]
            if isinstance(m, nn.Conv2d):
                geo[name] = {"h_in": x.shape[-2], "w_in": x.shape[-1], "h_out": out.shape[-2],
                             "w_out": out.shape[-1], "positions": out.shape[-2] * out.shape[-1]}
            else:
                geo[name] = {"positions": out.numel() // (out.shape[-1] * max(1, x.shape[0]))}

        hooks.append(get_module(model, name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        _run(model, example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return geo
