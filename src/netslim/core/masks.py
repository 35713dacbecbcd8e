"""Masks that survive training and can be made permanent.

A mask is a ``torch.nn.utils.parametrize`` parametrization: the module's ``weight``
becomes ``original * mask`` on every access, so optimizer updates (momentum, weight
decay included) never revive a masked weight in the forward pass, and the gradient of
masked entries is zero. ``make_permanent`` bakes the product into a plain parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import NetslimError


class Mask(nn.Module):
    """Parametrization ``w -> w * mask`` with the mask stored as a buffer."""

    mask: torch.Tensor  # a buffer (typed here: nn.Module.__getattr__ says Tensor | Module)

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().to(torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in _parametrizations(module)[name]:
        if isinstance(p, Mask):
            return p.mask
    return None


def set_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Attach (or replace) the mask of ``module.<name>``; the original is zeroed too.

    Zeroing the stored original keeps optimizer moments of masked entries inert and
    makes ``make_permanent`` exact. On a shape mismatch nothing is changed.
    """
    tensor = getattr(module, name)
    if mask.shape != tensor.shape:
        raise NetslimError(
            f"Mask shape {tuple(mask.shape)} does not match {type(module).__name__}.{name} "
            f"of shape {tuple(tensor.shape)}."
        )
    existing = get_mask(module, name)
    if existing is not None:
        existing.copy_(mask.to(existing.device, torch.bool))
    else:
        parametrize.register_parametrization(module, name, Mask(mask.to(tensor.device)))
    with torch.no_grad():
        orig = _parametrizations(module)[name].original
        current = get_mask(module, name)
        assert current is not None  # attached just above
        orig.mul_(current.to(orig.dtype))


def _parametrizations(module: nn.Module) -> Mapping[str, parametrize.ParametrizationList]:
    """``module.parametrizations`` (a ModuleDict of ParametrizationList), typed: nn.Module.__getattr__
    declares every attribute Tensor | Module."""
    return module.parametrizations  # type: ignore[return-value]


def masked_params(model: nn.Module) -> list[str]:
    """Qualified names ``module.param`` of every masked tensor."""
    out = []
    for mname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for pname in module.parametrizations:
                if get_mask(module, pname) is not None:
                    out.append(f"{mname}.{pname}" if mname else pname)
    return out


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake every mask into its tensor (zeros stay), removing the parametrizations."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for pname in list(_parametrizations(module)):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    return model


def baked_copy(module: nn.Module) -> nn.Module:
    """A plain Linear/Conv2d holding ``module``'s effective (masked) weight, on its device and dtype.

    Not ``make_permanent(copy.deepcopy(module))``: a deep copy of a parametrized module shares
    its dynamically created class, and removing the copy's parametrization deletes the
    original's ``weight`` property too.
    """
    m: Any = module  # its attributes, which nn.Module.__getattr__ types as Tensor | Module
    w = m.weight.detach()
    out: Any
    if isinstance(m, nn.Linear):
        out = nn.Linear(m.in_features, m.out_features, m.bias is not None, device=w.device, dtype=w.dtype)
    else:
        out = nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.bias is not None,
            m.padding_mode,
            device=w.device,
            dtype=w.dtype,
        )
    with torch.no_grad():
        out.weight.copy_(w)
        if m.bias is not None:
            out.bias.copy_(m.bias.detach())
    return out
