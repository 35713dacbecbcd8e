"""Weight-only int8 / int4 / int2: packed group-wise codes, dequantized on the fly.

:class:`QuantizedLinear` and :class:`QuantizedEmbedding` store only the packed codes
(uint8), fp16 scales and zero points; ``forward`` rebuilds the float weight for that call
and drops it (nothing cached, so the memory and file stay ~bits/32 of fp32). RTN, HQQ
(here) and GPTQ (LLM one-shot) all produce this format through
:meth:`QuantizedLinear.from_codes`.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from netslim.api import method_function
from netslim.core.artifact_schema import check_layer_tensors, loaded
from netslim.core.config import MethodConfig, register
from netslim.core.errors import NetslimError, bad_param
from netslim.core.selectors import Selector, select
from netslim.core.serialize import register_module
from netslim.core.surgery import get_module, replace_module
from netslim.measure.counts import linear_macs, register_macs

from .packing import PARAM_DTYPE, check_group, check_pack_bits, dequantize_groups, pack, quantize_groups, unpack

log = logging.getLogger(__name__)


class PackedWeight(nn.Module):
    """Shared storage of a packed (rows, cols) weight: ``weight_packed``, ``scales``, ``zeros``."""

    def __init__(self, rows: int, cols: int, bits: int, group_size: int | None, device=None):
        super().__init__()
        check_pack_bits(bits, type(self).__name__)
        g = check_group(cols, group_size, type(self).__name__)
        self.bits, self.group_size, self.weight_bits = bits, group_size, bits
        self._declared = (rows, cols, g)  # what loaded tensors are checked against
        self._init_codes(device)
        self.register_buffer("scales", torch.ones(rows, cols // g, dtype=PARAM_DTYPE, device=device))
        self.register_buffer("zeros", torch.zeros(rows, cols // g, dtype=PARAM_DTYPE, device=device))

    def _init_codes(self, device) -> None:
        """The code buffer (a sparse subclass registers its own: :mod:`.sparse_lowbit`)."""
        rows, cols, _ = self._declared
        self.register_buffer(
            "weight_packed", torch.zeros(rows, cols * self.bits // 8, dtype=torch.uint8, device=device)
        )

    def _code_fields(self) -> dict:
        rows, cols, _ = self._declared
        return {"weight_packed": (self.weight_packed, (rows, cols * self.bits // 8), torch.uint8)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if loaded(state_dict, prefix, (*self._code_fields(), "scales", "zeros")):
            rows, cols, g = self._declared
            where = prefix[:-1] or type(self).__name__
            check_layer_tensors(
                where,
                {
                    **self._code_fields(),
                    "scales": (self.scales, (rows, cols // g), None),
                    "zeros": (self.zeros, (rows, cols // g), None),
                },
            )
            self._check_loaded_codes(where)

    def _check_loaded_codes(self, where: str) -> None:
        """Checks beyond shapes and dtypes (none for dense packed codes: every byte is valid)."""

    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """Fill from unpacked codes (R, C) in ``[0, 2^bits)`` and (R, C/g) scale / zero."""
        if codes.shape != (self.weight_packed.shape[0], self.weight_packed.shape[1] * 8 // self.bits):
            raise NetslimError(
                f"codes of shape {tuple(codes.shape)} do not fit {type(self).__name__} {self.extra_repr()}."
            )
        if scale.shape != self.scales.shape or zero.shape != self.zeros.shape:
            raise NetslimError(
                f"scale/zero must have shape {tuple(self.scales.shape)}; got "
                f"{tuple(scale.shape)} / {tuple(zero.shape)}."
            )
        if int(codes.min()) < 0 or int(codes.max()) >= 2**self.bits:
            raise NetslimError(f"codes must lie in [0, {2**self.bits - 1}] for {self.bits}-bit storage.")
        dev = self.weight_packed.device
        self.weight_packed.copy_(pack(codes.to(dev), self.bits))
        self.scales.copy_(scale.to(dev, PARAM_DTYPE))
        self.zeros.copy_(zero.to(dev, PARAM_DTYPE))

    def codes(self) -> torch.Tensor:
        return unpack(self.weight_packed, self.bits)  # (R, C) uint8

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_groups(self.codes(), self.scales, self.zeros, dtype)

    @property
    def storage_bits(self) -> float:
        """Bits per weight on disk, scales and zero points included."""
        n = self.weight_packed.numel() * 8 // self.bits
        return (self.weight_packed.numel() * 8 + (self.scales.numel() + self.zeros.numel()) * 16) / n


class QuantizedLinear(PackedWeight):
    """``y = x @ dequant(W).T + b`` with W stored as packed group-wise codes."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        group_size: int | None = 128,
        bias: bool = True,
        device=None,
    ):
        super().__init__(out_features, in_features, bits, group_size, device)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        *,
        bits: int,
        group_size: int | None,
        bias: torch.Tensor | None = None,
    ) -> QuantizedLinear:
        """The entry point for any rounding method (RTN, HQQ, GPTQ): codes (out, in) uint8."""
        out_f, in_f = codes.shape
        m = cls(in_f, out_f, bits, group_size, bias is not None, device=codes.device)
        m.set_codes(codes, scale, zero)
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().clone())
        return m

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        *,
        bits: int = 4,
        group_size: int | None = 128,
        symmetric: bool = False,
        method: str = "rtn",
    ) -> QuantizedLinear:
        codes, scale, zero = quantize_groups(linear.weight, bits, group_size, symmetric=symmetric, method=method)
        return cls.from_codes(codes, scale, zero, bits=bits, group_size=group_size, bias=linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        return F.linear(x, self.dequantize_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )


class QuantizedEmbedding(PackedWeight):
    """An embedding table stored packed; only the looked-up rows are dequantized."""

    OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        bits: int = 4,
        group_size: int | None = 128,
        padding_idx: int | None = None,
        out_dtype: str = "float32",
        device=None,
    ):
        super().__init__(num_embeddings, embedding_dim, bits, group_size, device)
        if out_dtype not in self.OUT_DTYPES:
            raise bad_param("QuantizedEmbedding", "out_dtype", f"one of {', '.join(self.OUT_DTYPES)}", out_dtype)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.out_dtype = out_dtype  # dtype of the looked-up rows (the model body's dtype)

    @classmethod
    def from_float(
        cls,
        emb: nn.Embedding,
        *,
        bits: int = 4,
        group_size: int | None = 128,
        symmetric: bool = False,
        method: str = "rtn",
    ) -> QuantizedEmbedding:
        codes, scale, zero = quantize_groups(emb.weight, bits, group_size, symmetric=symmetric, method=method)
        m = cls(emb.num_embeddings, emb.embedding_dim, bits, group_size, emb.padding_idx, device=codes.device)
        m.set_codes(codes, scale, zero)
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (...) -> (..., dim)
        flat = ids.reshape(-1)
        rows = dequantize_groups(
            unpack(self.weight_packed[flat], self.bits),
            self.scales[flat],
            self.zeros[flat],
            self.OUT_DTYPES[self.out_dtype],
        )
        return rows.reshape(*ids.shape, self.embedding_dim)


def quantized_linear_kwargs(m: QuantizedLinear) -> dict:
    """The constructor arguments (JSON) of a QuantizedLinear, or of a subclass's packed part."""
    return {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bits": m.bits,
        "group_size": m.group_size,
        "bias": m.bias is not None,
    }


def _emb_kwargs(m: QuantizedEmbedding) -> dict:
    return {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "bits": m.bits,
        "group_size": m.group_size,
        "padding_idx": m.padding_idx,
        **({} if m.out_dtype == "float32" else {"out_dtype": m.out_dtype}),
    }


register_module(QuantizedLinear, quantized_linear_kwargs)
register_module(QuantizedEmbedding, _emb_kwargs)
register_macs(QuantizedLinear, linear_macs)


# ---------------------------------------------------------------------------- method
class WeightOnlyConfig(MethodConfig):
    """Weight-only quantization of Linear (and optionally Embedding) layers into packed codes.

    ``group_size`` None means one group per output row (per channel). Layers whose input
    width the group size does not divide are skipped and reported.
    """

    method = "weight_only"
    freezes = True  # packed buffers are not trainable
    float_layers_only = True  # selects nn.Linear / nn.Embedding only: packed layers are left as they are
    bits: Literal[2, 4, 8] = 4
    group_size: int | None = Field(128, description="32, 64, 128 (any divisor of in_features) or None")
    symmetric: bool = False
    rounding: Literal["rtn", "hqq"] = "rtn"
    embeddings: bool = Field(False, description="also quantize nn.Embedding tables")
    include: Selector = None
    exclude: Selector = None

    @classmethod
    def example(cls) -> WeightOnlyConfig:
        return cls(group_size=None)  # per channel: fits every layer of the small zoo models

    @field_validator("group_size")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and (v < 8 or v & (v - 1)):
            raise ValueError("must be a power of two >= 8 (32, 64, 128 usual) or None for per channel")
        return v

    def preflight(self, model, task) -> list[dict] | None:
        """Before a recipe runs: some selected layer fits ``group_size``; returns the ones skipped."""
        return None if model is None else _plan(model, self)[1]


def _plan(model: nn.Module, cfg: WeightOnlyConfig) -> tuple[list[str], list[dict]]:
    """``(names to quantize, [{name, reason}] of the selected layers group_size does not fit)``;
    raises when nothing fits."""
    types = (nn.Linear, nn.Embedding) if cfg.embeddings else (nn.Linear,)
    names = select(model, cfg.include, cfg.exclude, types=types)
    fits, skipped = [], []
    for name in names:
        mod = get_module(model, name)
        cols = mod.in_features if isinstance(mod, nn.Linear) else mod.embedding_dim
        if cfg.group_size is not None and cols % cfg.group_size:
            skipped.append(
                {"name": name, "reason": f"group_size {cfg.group_size} does not divide its {cols} input features"}
            )
        else:
            fits.append(name)
    if not fits:
        raise NetslimError(
            f"weight_only quantizes no layer: none of {len(names)} selected layers fits group_size={cfg.group_size}."
        )
    if cfg.rounding == "hqq":
        _refuse_sparse_hqq(model, fits)
    return fits, skipped


SPARSE_SHARE = 0.1  # a layer with a mask or at least this share of exact zeros is a pruned layer


def _refuse_sparse_hqq(model: nn.Module, names: list[str]) -> None:
    """HQQ's zero points are floats: no code stands for 0.0, so a pruned weight would come back
    non-zero (and the sparse low-bit storage could not leave it out). Refused before any layer changes."""
    from netslim.core.masks import get_mask

    for name in names:
        mod = get_module(model, name)
        w = mod.weight.detach()
        if w.is_meta:  # a streamed run's skeleton: the streamed step checks each layer once it is read
            continue
        share = float((w == 0).float().mean()) if w.numel() else 0.0
        if get_mask(mod) is not None or share >= SPARSE_SHARE:
            raise NetslimError(
                f"weight_only (rounding 'hqq'): layer {name!r} is pruned ({share:.0%} zeros); HQQ's "
                "float zero points have no code for 0.0, so its pruned weights would not stay zero "
                "and its sparse format cannot carry the scheme; use rounding 'rtn' (integer zero "
                "points) or exclude the layer."
            )


@register(WeightOnlyConfig)
def run_weight_only(model: nn.Module, cfg: WeightOnlyConfig, ctx) -> nn.Module:
    """Replace the selected Linear/Embedding layers of ``model`` (in place) by packed ones."""
    done, skipped = _plan(model, cfg)
    for s in skipped:
        log.info("weight_only: skipping %s: %s", s["name"], s["reason"])
        ctx.skip(s["name"], s["reason"])
    with torch.no_grad():
        for name in done:
            mod = get_module(model, name)
            cls = QuantizedLinear if isinstance(mod, nn.Linear) else QuantizedEmbedding
            new = cls.from_float(
                mod, bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric, method=cfg.rounding
            )
            replace_module(model, name, new)
    ctx.notes[cfg.method] = {
        "layers": len(done),
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "rounding": cfg.rounding,
        "skipped": len(skipped),
    }
    return model


quantize_weights = method_function(WeightOnlyConfig, "quantize_weights")
