"""Weight-only and dynamic int8 quantization of a streamed model (its tensors on disk).

Both convert modules one at a time with no calibration, so a streamed run reads each unit
that holds selected layers (a decoder block, or the embedding / LM head), converts it with
the same constructors as the in-memory step (:meth:`QuantizedLinear.from_float`,
:meth:`DynamicInt8Linear.from_float`, ...), writes it and releases it
(:meth:`netslim.core.stream_io.BlockStream.each_unit`): the same tensors as in memory.
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.stream_io import IN_MEMORY_HINT, register_streaming
from netslim.core.surgery import get_module, replace_module

from .dynamic import DynamicInt8Config, DynamicInt8Linear, _conv1d_layers, _linear_names, _onednn_ok
from .weight_only import QuantizedEmbedding, QuantizedLinear, WeightOnlyConfig, _plan, _refuse_sparse_hqq


@register_streaming(WeightOnlyConfig)
def _stream_weight_only(sm, cfg: WeightOnlyConfig, ctx, stream) -> None:
    # Selection and group checks on the skeleton (shapes only); HQQ's check of pruned layers reads
    # weights, so it runs per unit once the unit's tensors are read.
    names, skipped = _plan(sm.model, cfg.model_copy(update={"rounding": "rtn"}))
    for s in skipped:
        ctx.skip(s["name"], s["reason"])

    def convert(unit: str, root: nn.Module, members: list[str]) -> None:
        if cfg.rounding == "hqq":
            _refuse_sparse_hqq(sm.model, members)
        with torch.no_grad():
            for name in members:
                mod = get_module(sm.model, name)
                cls = QuantizedLinear if isinstance(mod, nn.Linear) else QuantizedEmbedding
                replace_module(
                    sm.model,
                    name,
                    cls.from_float(
                        mod, bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric, method=cfg.rounding
                    ),
                )

    stream.each_unit(names, convert)
    ctx.notes[cfg.method] = {
        "layers": len(names),
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "rounding": cfg.rounding,
        "skipped": len(skipped),
    }


@register_streaming(DynamicInt8Config)
def _stream_dynamic_int8(sm, cfg: DynamicInt8Config, ctx, stream) -> None:
    from .int8_body import fuse_activations

    if cfg.compute_dtype != "float32":
        raise NetslimError(
            f"dynamic_int8 with compute_dtype {cfg.compute_dtype!r} casts the whole model, which "
            f"cannot stream; use compute_dtype float32 or {IN_MEMORY_HINT}."
        )
    for name in _conv1d_layers(sm.model, cfg):
        ctx.skip(
            name,
            "dynamic_int8: a transformers Conv1D (GPT-2's Linear, weight stored (in, out)) is not "
            "converted, only nn.Linear layers are; it stays fp32",
        )
    linears = _linear_names(sm.model, cfg)
    embeddings = []
    if cfg.embeddings:
        from netslim.core.selectors import select

        embeddings = select(sm.model, cfg.include, cfg.exclude, types=(nn.Embedding,))
    fused: list[str] = []

    def convert(unit: str, root: nn.Module, members: list[str]) -> None:
        with torch.no_grad():
            for name in members:
                mod = get_module(sm.model, name)
                new = (
                    DynamicInt8Linear.from_float(mod, activations=cfg.activations)
                    if isinstance(mod, nn.Linear)
                    else QuantizedEmbedding.from_float(mod, bits=8, group_size=None, symmetric=True)
                )
                replace_module(sm.model, name, new)
            if cfg.fuse_activations:
                fused.extend(fuse_activations(sm.model, [n for n in members if n in set(linears)]))

    stream.each_unit(linears + embeddings, convert)
    ctx.notes[cfg.method] = {
        "layers": len(linears),
        "embeddings": len(embeddings),
        "activations": cfg.activations,
        "compute_dtype": cfg.compute_dtype,
        "fused_activations": len(fused),
        "cpu_kernel": "onednn qlinear" if _onednn_ok() else "torch._int_mm",
    }
