"""Weight-only int4 layers on PyTorch's CPU int4 GEMM, for inference (decoding).

A :class:`~netslim.quantize.weight_only.QuantizedLinear` computes ``x @ dequant(W).T``: it
rebuilds the whole fp32 weight on every call, which dominates decoding (one token per call):
SmolLM2's ``int4_smollm2`` artifact decoded at 0.20x fp32's tokens/s (issue 25).
:func:`use_int4_kernel` swaps each eligible layer for an :class:`Int4KernelLinear` that keeps
the codes packed in the layout of ``aten._weight_int4pack_mm_for_cpu`` and multiplies in bf16
(activations, scales and zero points in bf16; accumulation in fp32).

Same weights: PyTorch's kernel computes ``(q - 8) * S + Z`` per group, netslim stores
``(q - z) * s``; with ``S = s`` and ``Z = (8 - z) * s`` the two are equal up to bf16 rounding of
``S``, ``Z`` and the activations (a test bounds the difference). For inference only: the
swapped model is not saved (save the model before swapping); layers the kernel cannot take
(not 4-bit, a group size other than 32 / 64 / 128 / 256, a tensor not on the CPU) stay as they
are and are listed.
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.surgery import replace_module

from .weight_only import QuantizedLinear

KERNEL_GROUPS = (32, 64, 128, 256)
INNER_K_TILES = 2


def _kernel_ops() -> tuple | None:
    ops = torch.ops.aten
    if hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu"):
        return ops._convert_weight_to_int4pack_for_cpu, ops._weight_int4pack_mm_for_cpu
    return None


_OPS = _kernel_ops()  # looked up once: the forward runs per decoded token


def why_not(m: QuantizedLinear) -> str | None:
    """Why the CPU int4 kernel cannot run ``m`` (None when it can)."""
    if _OPS is None:
        return "this PyTorch has no aten._weight_int4pack_mm_for_cpu"
    if m.bits != 4:
        return f"{m.bits}-bit codes (the kernel takes 4-bit)"
    if m.group_size not in KERNEL_GROUPS:
        return f"group size {m.group_size} (the kernel takes {', '.join(map(str, KERNEL_GROUPS))})"
    if m.weight_packed.device.type != "cpu":
        return f"on {m.weight_packed.device.type} (the kernel is the CPU one)"
    if type(m) is not QuantizedLinear:
        return f"a {type(m).__name__} (sparse or other codes)"
    return None


class Int4KernelLinear(nn.Module):
    """``y = x @ W.T + b`` on ``aten._weight_int4pack_mm_for_cpu`` (see the module docstring)."""

    def __init__(self, m: QuantizedLinear):
        super().__init__()
        problem = why_not(m)
        if problem is not None:
            raise NetslimError(f"Int4KernelLinear: cannot take this layer: {problem}.")
        convert, _ = _OPS  # type: ignore[misc]
        self.in_features, self.out_features, self.group_size = m.in_features, m.out_features, m.group_size
        codes = m.codes().to(torch.int32)  # (out, in) in [0, 16)
        scale = m.scales.float()  # (out, in / g)
        zero = m.zeros.float()
        sz = torch.stack([scale, (8.0 - zero) * scale], dim=-1)  # (out, in / g, 2)
        self.register_buffer("packed", convert(codes.contiguous(), INNER_K_TILES), persistent=False)
        self.register_buffer("scales_and_zeros", sz.transpose(0, 1).contiguous().to(torch.bfloat16), persistent=False)
        bias = None if m.bias is None else m.bias.detach().float().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, mm = _OPS  # type: ignore[misc]
        shape = x.shape
        y = mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.packed, self.group_size, self.scales_and_zeros)
        y = y.float()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def use_int4_kernel(model: nn.Module) -> dict[str, list[str] | dict[str, str]]:
    """Swap (in place) every :class:`QuantizedLinear` the CPU int4 kernel can run for an
    :class:`Int4KernelLinear`; returns ``{"swapped": [...], "kept": {name: why}}``. A model
    with no such layer is an error (nothing would change)."""
    swapped, kept = [], {}
    for name, m in list(model.named_modules()):
        if not isinstance(m, QuantizedLinear):
            continue
        problem = why_not(m)
        if problem is None:
            replace_module(model, name, Int4KernelLinear(m))
            swapped.append(name)
        else:
            kept[name] = problem
    if not swapped:
        detail = f": {next(iter(kept.items()))}" if kept else ""
        raise NetslimError(f"use_int4_kernel: no weight-only int4 layer the CPU kernel can run{detail}.")
    return {"swapped": swapped, "kept": kept}
