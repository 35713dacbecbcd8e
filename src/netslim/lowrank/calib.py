"""What rank selection needs from data: input Gram matrices and layer geometry.

Both are gathered with forward hooks on the original model, one pass over the inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from netslim.core.hooks import eval_mode
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
            yield {k: v[i : i + batch_size] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    else:
        for i in range(0, len(inputs), batch_size):
            yield inputs[i : i + batch_size]


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
def input_grams(
    model: nn.Module,
    names: Sequence[str],
    inputs: Any,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """``{name: XᵀX}`` (float64, n×n) of each layer's inputs over ``inputs``, plus "count"."""
    grams: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor | None] = [None]  # the current batch's attention mask, if any

    def hook(name):
        def fn(m, args):
            rows = _rows(m, args[0].detach(), mask[0]).double()  # (N, n)
            g = rows.T @ rows
            grams[name] = grams[name] + g if name in grams else g

        return fn

    with eval_mode(model, [(get_module(model, n), hook(n)) for n in names], kind="pre"):
        for batch in _chunks(inputs, batch_size):
            mask[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
            _run(model, batch)
    return grams


@torch.no_grad()
def layer_geometry(model: nn.Module, names: Sequence[str], example: Any) -> dict[str, dict[str, int]]:
    """Per layer, for one forward of ``example``: positions (tokens or output pixels) per
    sample and, for convs, input/output heights and widths."""
    geo: dict[str, dict[str, int]] = {}

    def hook(name):
        def fn(m, args, out):
            x = args[0]
            if isinstance(m, nn.Conv2d):
                geo[name] = {
                    "h_in": x.shape[-2],
                    "w_in": x.shape[-1],
                    "h_out": out.shape[-2],
                    "w_out": out.shape[-1],
                    "positions": out.shape[-2] * out.shape[-1],
                }
            else:
                geo[name] = {"positions": out.numel() // (out.shape[-1] * max(1, x.shape[0]))}

        return fn

    with eval_mode(model, [(get_module(model, n), hook(n)) for n in names]):
        _run(model, example)
    return geo


def _main_output(out: Any) -> torch.Tensor:
    """The tensor a model's outputs are compared by: logits, last hidden states or the tensor."""
    for attr in ("logits", "last_hidden_state"):
        if hasattr(out, attr):
            return getattr(out, attr)
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


@torch.no_grad()
def model_outputs(model: nn.Module, inputs: Any, batch_size: int = 64) -> list[torch.Tensor]:
    """Per batch, the model's main output as float rows (padding tokens dropped): [(N_b, D)]."""
    outs = []
    dev = _device(model)
    with eval_mode(model):
        for batch in _chunks(inputs, batch_size):
            if isinstance(batch, dict):
                y = _main_output(
                    model(**{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
                )
                mask = batch.get("attention_mask")
            else:
                y, mask = _main_output(model(batch.to(dev))), None
            y = y.float()
            if mask is not None and y.ndim == 3 and tuple(y.shape[:2]) == tuple(mask.shape):
                outs.append(y[mask.to(y.device).bool()])  # (tokens, D)
            else:
                outs.append(y.reshape(y.shape[0], -1))  # (B, D)
    return outs


def output_distortion(model: nn.Module, reference: list[torch.Tensor], inputs: Any, batch_size: int = 64) -> float:
    """‖f(x) − f_ref(x)‖² / ‖f_ref(x)‖² over ``inputs``, with ``reference`` from :func:`model_outputs`."""
    err = ref = 0.0
    for y, r in zip(model_outputs(model, inputs, batch_size), reference):
        err += float((y - r).double().pow(2).sum())
        ref += float(r.double().pow(2).sum())
    return err / max(ref, 1e-300)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has its input."""


@torch.no_grad()
def paired_grams(
    original: nn.Module,
    current: nn.Module,
    name: str,
    inputs: Any,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For layer ``name``: ``(X̂ᵀX̂, XᵀX̂)`` (float64, n×n), X the rows the layer gets in ``original``
    and X̂ those it gets in ``current`` (e.g. after earlier layers were factorized), same inputs."""
    rows: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor | None] = [None]

    def hook(key):
        def fn(m, args):
            rows[key] = _rows(m, args[0].detach(), mask[0]).double()  # (N, n)
            raise _Stop  # nothing after this layer is needed

        return fn

    gram = cross = None
    with (
        eval_mode(original, [(get_module(original, name), hook("x"))], kind="pre"),
        eval_mode(current, [(get_module(current, name), hook("xh"))], kind="pre"),
    ):
        for batch in _chunks(inputs, batch_size):
            mask[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
            for model in (original, current):
                try:
                    _run(model, batch)
                except _Stop:
                    pass
            x, xh = rows.pop("x"), rows.pop("xh")
            g, c = xh.T @ xh, x.T @ xh
            gram, cross = (g, c) if gram is None else (gram + g, cross + c)
    return gram, cross


def _forward(model: nn.Module, batch: Any) -> Any:
    dev = _device(model)
    if isinstance(batch, dict):
        return model(**{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return model(batch.to(dev))


def _output_rows(module: nn.Module, g: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A layer's output (or its gradient) as rows of output features: (N, out)."""
    if isinstance(module, nn.Conv2d):
        return g.movedim(1, -1).reshape(-1, g.shape[1])  # (B·H·W, out)
    if mask is not None and g.ndim == 3 and tuple(g.shape[:2]) == tuple(mask.shape):
        return g[mask.to(g.device).bool()]  # (tokens, out)
    return g.reshape(-1, g.shape[-1])


def output_gradient_grams(
    model: nn.Module, names: Sequence[str], inputs: Any, batch_size: int = 16, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``{name: GᵀG}`` (float64, out×out): G the rows of ∂(vᵀ f(x))/∂(layer output), v ~ N(0, I)
    drawn per output element (zero on padding tokens), f the model's main output.

    In expectation over v this is the Gauss-Newton metric Jᵀ J of ‖f(x) − f_ref(x)‖² with
    respect to the layer's output: which output directions of the layer the model's output
    is sensitive to. One backward pass per batch; the model's parameters are not modified
    and get no ``.grad``.
    """
    grams: dict[str, torch.Tensor] = {}
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = {n: get_module(model, n) for n in names}

    def hook(name):
        def fn(m, args, out):
            outs[name].append(out)

        return fn

    # The layers' outputs must be in the autograd graph even for a frozen model: let their
    # weights require grad for the duration (autograd.grad below never writes .grad).
    flags = [(p, p.requires_grad) for n in names for p in modules[n].parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    try:
        with eval_mode(model, [(modules[n], hook(n)) for n in names], grad=True):
            for batch in _chunks(inputs, batch_size):
                mask = batch.get("attention_mask") if isinstance(batch, dict) else None
                y = _main_output(_forward(model, batch)).float()
                v = torch.randn(y.shape, generator=gen).to(y.device)
                if mask is not None and y.ndim == 3 and tuple(y.shape[:2]) == tuple(mask.shape):
                    v = v * mask.to(y.device, y.dtype).unsqueeze(-1)
                keys = [(n, i) for n in names for i in range(len(outs[n]))]
                grads = torch.autograd.grad((y * v).sum(), [outs[n][i] for n, i in keys], allow_unused=True)
                for (n, _), g in zip(keys, grads):
                    if g is None:
                        continue
                    rows = _output_rows(modules[n], g.detach(), mask).double()  # (N, out)
                    gram = rows.T @ rows
                    grams[n] = grams[n] + gram if n in grams else gram
                for n in names:
                    outs[n].clear()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return grams
