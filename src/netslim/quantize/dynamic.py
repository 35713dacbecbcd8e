"""Dynamic int8 and bf16 inference for Linear-heavy models (transformers, MLPs).

* :class:`DynamicInt8Linear`: int8 weights (symmetric, per output channel) and int8
  activations quantized per token at run time (symmetric, absmax); the matmul runs on
  ``torch._int_mm`` (int8 x int8 -> int32: VNNI/AMX on CPU, tensor cores on CUDA) and the
  int32 result is rescaled by ``s_token * s_channel``.
  ``kernel="onednn"`` instead runs one fused oneDNN op (CPU only) with *per-tensor*
  activation scales: fewer passes over memory, less fidelity on outlier-heavy activations.
* :class:`BF16Linear`: the weight stored in bf16 and the matmul run in bf16 (AMX on this
  CPU); activations are cast in and out, so the rest of the model stays fp32.
"""
from __future__ import annotations

import logging
import warnings
from typing import Literal

import torch
import torch.nn.functional as F

from pydantic import Field
from torch import nn

from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError, bad_param
from netslim.core.selectors import select
from netslim.core.serialize import register_module
from netslim.core.surgery import get_module, replace_module
from netslim.measure.counts import register_macs

from .int8_modules import _engine

log = logging.getLogger(__name__)
# torch 2.13 flags quantized-tensor creation as deprecated; quantize_per_channel is used here
# only as a fused float -> int8 kernel, so silence exactly that message.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
KERNELS = ("int_mm", "onednn")
QMAX = 127  # symmetric int8 without -128: |q| <= 127 keeps x and -x symmetric


def quantize_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 per row: (M, K) float -> (M, K) int8, (M, 1) float32 scale."""
    lo, hi = torch.aminmax(x.float(), dim=1, keepdim=True)  # one pass for both ends
    scale = torch.maximum(-lo, hi).clamp_min(1e-12) / QMAX     # (M, 1)
    if x.device.type == "cpu":
        # One fused pass (scale, round half to even, saturate) instead of four elementwise ops;
        # |x / scale| <= 127 by construction, so -128 never occurs.
        zeros = torch.zeros(x.shape[0], dtype=torch.long)
        q = torch.quantize_per_channel(x.float(), scale.squeeze(1).double(), zeros, 0, torch.qint8).int_repr()
    else:
        q = torch.round(x.float() * (1.0 / scale)).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """(M, K) int8 @ (K, N) int8 -> (M, N) int32.

    ``torch._int_mm`` on CPU takes any shape; on CUDA it needs M > 16 and K, N multiples of
    8, so other shapes fall back to an exact float32 product (exact while K * 127^2 < 2^24,
    i.e. K <= 1040; beyond that the fallback rounds like an fp32 matmul would).
    """
    m, k = a.shape
    n = b_t.shape[1]
    if a.device.type == "cuda" and (m <= 16 or k % 8 or n % 8):
        return (a.float() @ b_t.float()).round().to(torch.int32)
    return torch._int_mm(a, b_t)


class DynamicInt8Linear(nn.Module):
    """Linear with int8 per-channel weights and per-token dynamic int8 activations."""

    weight_bits = 8

    def __init__(self, in_features: int, out_features: int, bias: bool = True, kernel: str = "int_mm", device=None):
        super().__init__()
        if kernel not in KERNELS:
            raise bad_param("DynamicInt8Linear", "kernel", f"one of {', '.join(KERNELS)}", kernel)
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self._packed = None
        # (out, in) row-major: passed to _int_mm as its transpose (K, N) column-major,
        # the layout the CPU kernel handles fastest (measured: no copy per call).
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, kernel: str = "int_mm") -> "DynamicInt8Linear":
        w = linear.weight.detach()
        if not torch.isfinite(w).all():
            raise NetslimError("Cannot quantize a Linear weight with NaN or Inf values.")
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, kernel, device=w.device)
        q, s = quantize_per_row(w)
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(s.squeeze(1))
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().float().clone())
        return m

    def dequantize_weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        return super()._load_from_state_dict(*args, **kwargs)

    def _onednn(self, x2: torch.Tensor) -> torch.Tensor:
        """One fused oneDNN op: per-tensor dynamic activation quantization, int8 GEMM, fp32 out."""
        if self._packed is None:
            zeros = torch.zeros(self.out_features, dtype=torch.long)
            qw = torch._make_per_channel_quantized_tensor(self.weight_int8.cpu(), self.weight_scale.double().cpu(),
                                                          zeros, 0)
            bias = None if self.bias is None else self.bias.detach().float().cpu()
            with _engine("onednn"):
                self._packed = torch.ops.quantized.linear_prepack(qw, bias)
        with _engine("onednn"):
            return torch.ops.quantized.linear_dynamic(x2.float().contiguous(), self._packed, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        lead = x.shape[:-1]
        if self.kernel == "onednn" and x.device.type == "cpu":
            return self._onednn(x.reshape(-1, self.in_features)).to(x.dtype).reshape(*lead, self.out_features)
        xq, sx = quantize_per_row(x.reshape(-1, self.in_features))  # (M, K) int8, (M, 1)
        acc = int8_matmul(xq, self.weight_int8.t())                    # (M, N) int32
        y = torch.mul(acc, self.weight_scale).mul_(sx)                 # int32 * fp32 -> fp32 in one pass, then in place
        if self.bias is not None:
            y.add_(self.bias)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class BF16Linear(nn.Module):
    """Linear whose weight is stored in bf16 and whose matmul runs in bf16."""

    weight_bits = 16

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.bfloat16, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16, device=device)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "BF16Linear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        m.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16))
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().to(torch.bfloat16))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def _kw(m) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


register_module(DynamicInt8Linear, lambda m: {**_kw(m), "kernel": m.kernel})
register_module(BF16Linear, _kw)
for _cls in (DynamicInt8Linear, BF16Linear):
    register_macs(_cls, lambda m, inputs, out: int(out.numel() // out.shape[-1]) * m.in_features * m.out_features)


class DynamicInt8Config(MethodConfig):
    """Dynamic int8: int8 weights per channel, activations quantized per token at run time."""

    method = "dynamic_int8"
    freezes = True
    kernel: Literal["int_mm", "onednn"] = Field(
        "int_mm", description="int_mm: per-token activations, torch._int_mm (any device); "
        "onednn: per-tensor activations, one fused oneDNN op (CPU only)")
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)


class BF16Config(MethodConfig):
    """bf16 weights and matmuls for the selected Linear layers (half the bytes, AMX speed)."""

    method = "bf16"
    freezes = True
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)


def _swap_linears(model: nn.Module, cfg, cls, **kwargs) -> list[str]:
    names = select(model, cfg.include, cfg.exclude, types=(nn.Linear,))
    if not names:
        raise NetslimError(f"{cfg.method}: the model has no nn.Linear layer to convert.")
    with torch.no_grad():
        for name in names:
            replace_module(model, name, cls.from_float(get_module(model, name), **kwargs))
    return names


def dynamic_int8(model: nn.Module, cfg: DynamicInt8Config | None = None) -> nn.Module:
    """Replace the selected Linear layers by :class:`DynamicInt8Linear` (in place)."""
    cfg = cfg or DynamicInt8Config()
    _swap_linears(model, cfg, DynamicInt8Linear, kernel=cfg.kernel)
    return model


def bf16_linears(model: nn.Module, cfg: BF16Config | None = None) -> nn.Module:
    """Replace the selected Linear layers by :class:`BF16Linear` (in place)."""
    _swap_linears(model, cfg or BF16Config(), BF16Linear)
    return model


@register(DynamicInt8Config)
def _apply_dynamic(model, cfg: DynamicInt8Config, ctx):
    names = _swap_linears(model, cfg, DynamicInt8Linear, kernel=cfg.kernel)
    ctx.notes["dynamic_int8"] = {"layers": len(names), "kernel": cfg.kernel}
    return model


@register(BF16Config)
def _apply_bf16(model, cfg: BF16Config, ctx):
    ctx.notes["bf16"] = {"layers": len(_swap_linears(model, cfg, BF16Linear))}
    return model
