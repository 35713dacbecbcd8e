"""GGUF export for llama.cpp: ``export: {format: gguf, dtype: f16 | f32 | q8_0 | q4_0}``.

Llama-family causal LMs only (``LlamaForCausalLM``, ``MistralForCausalLM`` as llama.cpp's
``llama`` architecture; ``Qwen2ForCausalLM`` as ``qwen2``), dense or with netslim's packed
weight-only layers. Names, Q/K row order and the tokenizer follow llama.cpp's
``convert_hf_to_gguf.py`` (tables shared with the reader: :mod:`netslim.models.gguf_io`).

What ``dtype`` does to each weight matrix (norms and biases are always F32):

* ``f32`` / ``f16``: the weight as the model computes it (packed layers dequantized); F32 is exact.
* ``q8_0``: a packed layer whose groups fit Q8_0 (group size a multiple of 32, integer zero
  points, ``code - zero`` in [-128, 127]: netslim int8 symmetric, and any 4-bit layer with
  integer zeros) is written **exactly**: its codes and fp16 scales copied. Every other matrix is
  quantized to Q8_0 from its float weights with llama.cpp's reference rounding (near-lossless);
  the notes count them and give the error.
* ``q4_0``: a packed layer on the Q4_0 grid (group size a multiple of 32, integer zeros,
  ``code - zero`` in [-8, 7]: netslim 4-bit symmetric, whose zero is 8) is written **exactly**,
  codes and scales bit for bit. A packed layer off that grid is refused (one line naming it)
  unless ``requantize: true``, which re-quantizes it (and float matrices) to Q4_0 and reports
  how many and the weight error. Without ``requantize``, matrices netslim left in float (the
  embedding and LM head after GPTQ, excluded layers) are written as Q8_0, as llama.cpp's own
  quantizer keeps those sensitive tensors at higher precision; a model with no layer on the
  grid is refused.

A matrix whose rows are not a multiple of 32 long cannot be blocked and is written F16 (noted).
The file is written to a temporary name in the target folder and renamed: nothing half-written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from netslim.core.errors import NetslimError, bad_param, shown
from netslim.core.export import register_exporter
from netslim.models.gguf_io import (
    BLOCK,
    FAMILY_TEXT,
    GGUF_ARCHS,
    HF_TO_GGUF,
    gguf_module,
    permute_rotary,
    rotary_heads,
    tensor_names,
)

log = logging.getLogger(__name__)

DTYPES = ("f32", "f16", "q8_0", "q4_0")
_GRID = {"q4_0": (-8, 7), "q8_0": (-128, 127)}  # code - zero ranges the two block types hold


@dataclass
class _Tally:
    """What the export did to each matrix, for the notes."""

    exact: list[str] = field(default_factory=list)  # packed codes copied as they are
    from_float: list[str] = field(default_factory=list)  # float matrices quantized (Q8_0, or Q4_0 if asked)
    requantized: list[str] = field(default_factory=list)  # packed layers off the grid, quantized again
    f16_fallback: list[str] = field(default_factory=list)  # rows not a multiple of 32
    off_grid: list[tuple[str, str]] = field(default_factory=list)  # (layer, why): refused without requantize
    types: dict[str, int] = field(default_factory=dict)
    max_abs_error: float = 0.0
    err_sq: float = 0.0
    ref_sq: float = 0.0

    def error(self, ref: torch.Tensor, written: torch.Tensor) -> None:
        d = written.double() - ref.double()
        self.max_abs_error = max(self.max_abs_error, float(d.abs().max()))
        self.err_sq += float((d * d).sum())
        self.ref_sq += float((ref.double() ** 2).sum())


def export_gguf(
    model: nn.Module, path: Path, info: dict | None = None, *, dtype: str = "f16", requantize: bool = False
) -> tuple[Path, dict]:
    """Write ``model`` to ``path`` as GGUF; returns ``(path, notes)`` (see the module docstring)."""
    gguf = gguf_module()
    if dtype not in DTYPES:
        raise bad_param("the gguf export", "dtype", f"one of {', '.join(DTYPES)}", dtype)
    arch = family(model)
    config = model.config
    warnings = _config_checks(config)
    tally = _Tally()
    tensors = _encode_all(model, arch, dtype, requantize, tally)  # every refusal happens here, before writing
    if dtype == "q4_0" and not requantize:
        if tally.off_grid:
            name, why = tally.off_grid[0]
            more = f" (+{len(tally.off_grid) - 1} more)" if len(tally.off_grid) > 1 else ""
            raise NetslimError(
                f"GGUF q4_0: layer {name} is not on llama.cpp's Q4_0 grid ({why}){more}; quantize "
                "with bits 4, symmetric, group_size a multiple of 32 (weight_only or gptq), export "
                "dtype q8_0 or f16, or set requantize: true to re-quantize it."
            )
        if not tally.exact:
            raise NetslimError(
                "GGUF q4_0: no layer is on llama.cpp's Q4_0 grid (the model has no netslim 4-bit "
                "symmetric layers with group_size a multiple of 32); quantize it first (weight_only "
                "or gptq with bits 4, symmetric: true, group_size 32), or set requantize: true."
            )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        _metadata(writer, gguf, config, arch, dtype, (info or {}).get("model"))
        from .gguf_vocab import add_tokenizer

        vocab = add_tokenizer(writer, getattr(model, "netslim_source", None), config.vocab_size)
        for name, (array, raw) in tensors.items():
            writer.add_tensor(name, array, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    notes = _notes(arch, dtype, requantize, tally, vocab, warnings)
    log.info("gguf: wrote %s (%s, %d tensors: %s)", path, dtype, len(tensors), notes["tensor_types"])
    return path, notes


def family(model: nn.Module) -> str:
    """llama.cpp's architecture for ``model``, or the one-line refusal naming the supported families."""
    cls = parametrize.type_before_parametrizations(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in HF_TO_GGUF or not cls.endswith("ForCausalLM"):
        raise NetslimError(
            f"GGUF export supports {FAMILY_TEXT}; got {cls}" + (f" (model_type {model_type!r})." if model_type else ".")
        )
    return HF_TO_GGUF[model_type]


def _rope(config: Any) -> tuple[float, str, float | None]:
    params = getattr(config, "rope_parameters", None) or {}
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    kind = params.get("rope_type", "default")
    return theta, kind, params.get("factor")


def _config_checks(config: Any) -> list[str]:
    """Refuse what llama.cpp's architectures cannot express; return warnings for what they ignore."""
    if getattr(config, "hidden_act", "silu") != "silu":
        raise NetslimError(
            f"GGUF export: hidden_act {shown(config.hidden_act, 40)} is not SiLU; llama.cpp's llama "
            "and qwen2 architectures compute SiLU-gated MLPs."
        )
    _, kind, _ = _rope(config)
    if kind not in ("default", "linear"):
        raise NetslimError(
            f"GGUF export: rope type {shown(kind, 40)} is not supported (netslim writes 'default' "
            "and 'linear' rope scaling)."
        )
    warnings = []
    window = getattr(config, "sliding_window", None)
    if (
        window
        and (config.model_type == "mistral" or getattr(config, "use_sliding_window", False))
        and window < config.max_position_embeddings
    ):
        warnings.append(
            f"sliding-window attention ({window} tokens) is not written: llama.cpp attends to the "
            "whole context, so outputs differ on sequences longer than the window"
        )
    return warnings


# ------------------------------------------------------------------------- tensors
def _encode_all(model: nn.Module, arch: str, dtype: str, requantize: bool, tally: _Tally) -> dict:
    """GGUF name -> (numpy array, raw type or None), in the order llama.cpp's converter writes."""
    config = model.config
    cls = parametrize.type_before_parametrizations(model)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    if _tied(model):
        shapes.pop("lm_head.weight", None)
    names = tensor_names(arch, config.num_hidden_layers, shapes)
    unnamed = sorted(set(shapes) - set(names))
    if unnamed:
        raise NetslimError(f"GGUF export: llama.cpp has no tensor for {unnamed[0]}.")
    out = {}
    for key, name in names.items():
        module_name, _, param = key.rpartition(".")
        module = model.get_submodule(module_name)
        heads = rotary_heads(arch, name, config)
        if param == "weight" and len(shapes[key]) == 2:
            array, raw = _matrix(module, module_name, shapes[key], dtype, requantize, tally)
            if array is None:
                continue
        else:
            t = getattr(module, param, None)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shapes[key]:
                raise NetslimError(f"GGUF export: {key} is {_what(t)}; the config implies shape {list(shapes[key])}.")
            array, raw = t.detach().float().cpu().numpy(), None
        if heads:
            array = permute_rotary(torch.from_numpy(np.ascontiguousarray(array)), heads).numpy()
        kind = "F32" if raw is None and array.dtype == np.float32 else "F16" if raw is None else raw.name
        tally.types[kind] = tally.types.get(kind, 0) + 1
        out[name] = (np.ascontiguousarray(array), raw)
    return out


def _what(t: Any) -> str:
    return f"of shape {list(t.shape)}" if isinstance(t, torch.Tensor) else "missing"


def _tied(model: nn.Module) -> bool:
    """The LM head and the embedding are one tensor (llama.cpp: no ``output`` tensor)."""
    emb = getattr(model.get_input_embeddings(), "weight", None)
    head = getattr(model.get_output_embeddings(), "weight", None)
    return emb is not None and head is emb


def _packed(module: nn.Module) -> bool:
    from netslim.quantize.weight_only import PackedWeight

    return isinstance(module, PackedWeight)


def float_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight a layer computes with, as float32 (masks applied, packed codes decoded)."""
    for attr in ("dequantize_weight", "dense_2d", "dense_weight"):  # packed / int8 / CSR / low-rank layers
        fn = getattr(module, attr, None)
        if callable(fn):
            return fn().detach().float().cpu()
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise NetslimError(f"GGUF export: a {type(module).__name__} layer has no weight matrix netslim can write.")
    return w.detach().float().cpu()


def _matrix(module: nn.Module, where: str, shape: tuple, dtype: str, requantize: bool, tally: _Tally):
    """One weight matrix -> (array, raw type), recording what happened in ``tally``."""
    gguf = gguf_module()
    q4, q8 = gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0
    if dtype in _GRID and _packed(module):
        grid = grid_codes(module, *_GRID[dtype])
        if not isinstance(grid, str):
            tally.exact.append(where)
            return encode_blocks(*grid, dtype), (q4 if dtype == "q4_0" else q8)
    w = float_weight(module)
    if tuple(w.shape) != shape:
        raise NetslimError(
            f"GGUF export: {where} has a weight of shape {list(w.shape)}; the config implies "
            f"{list(shape)} (structurally pruned layers must keep the config's widths)."
        )
    if not bool(torch.isfinite(w).all()):
        raise NetslimError(f"GGUF export: {where} has NaN or infinite weights.")
    if dtype == "f32":
        return w.numpy(), None
    if dtype == "f16" or w.shape[1] % BLOCK:
        if dtype != "f16":
            tally.f16_fallback.append(where)
        return w.half().numpy(), None
    target = q8
    if dtype == "q4_0":
        if requantize:
            target = q4
            (tally.requantized if _packed(module) else tally.from_float).append(where)
        elif _packed(module):
            tally.off_grid.append((where, grid))
            return None, None  # refused in export_gguf, before anything is written
        else:
            tally.from_float.append(where)
    else:
        (tally.requantized if _packed(module) else tally.from_float).append(where)
    blocks = gguf.quants.quantize(w.numpy(), target)  # llama.cpp's reference rounding
    tally.error(w, torch.from_numpy(gguf.quants.dequantize(blocks, target)))
    return blocks, target


def grid_codes(module: nn.Module, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor] | str:
    """A packed layer's ``(code - zero)`` (R, C) int16 and per-32-block fp16 scales (R, C/32) when every
    group fits ``[lo, hi]`` with an integer zero and a group size that 32 divides; else why not."""
    codes, scales, zeros = module.codes(), module.scales, module.zeros
    rows, cols = codes.shape
    g = cols // scales.shape[1]
    if g % BLOCK:
        return f"group_size {g} is not a multiple of {BLOCK}"
    z = zeros.float()
    if not torch.equal(z, z.round()):
        return "its zero points are not integers"
    q = codes.to(torch.int16).reshape(rows, -1, g) - z.to(torch.int16).unsqueeze(-1)  # (R, C/g, g)
    if int(q.min()) < lo or int(q.max()) > hi:
        return f"code - zero spans [{int(q.min())}, {int(q.max())}], beyond [{lo}, {hi}]"
    return q.reshape(rows, cols), scales.to(torch.float16).repeat_interleave(g // BLOCK, dim=1)


def encode_blocks(q: torch.Tensor, scale: torch.Tensor, dtype: str) -> np.ndarray:
    """``q`` (R, C) signed values and fp16 block scales (R, C/32) -> (R, bytes per row) uint8 in
    llama.cpp's layout: per block the fp16 ``d``, then Q4_0's 16 bytes (value j in the low nibble
    of byte j, value j + 16 in its high nibble) or Q8_0's 32 signed bytes."""
    rows, cols = q.shape
    d = scale.contiguous().cpu().numpy().astype(np.float16).view(np.uint8).reshape(rows, cols // BLOCK, 2)
    qb = q.cpu().numpy().reshape(rows, cols // BLOCK, BLOCK)
    if dtype == "q4_0":
        nib = (qb + 8).astype(np.uint8)
        body = nib[..., :16] | (nib[..., 16:] << 4)
    else:
        body = qb.astype(np.int8).view(np.uint8)
    return np.concatenate([d, body], axis=-1).reshape(rows, -1)


# ------------------------------------------------------------------------ metadata
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


def _metadata(writer: Any, gguf: Any, config: Any, arch: str, dtype: str, name: str | None) -> None:
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(str(name or GGUF_ARCHS[arch][0]))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta, kind, factor = _rope(config)
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[dtype]))
    if dtype in _GRID:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _notes(arch: str, dtype: str, requantize: bool, tally: _Tally, vocab: dict, warnings: list[str]) -> dict:
    notes: dict[str, Any] = {
        "architecture": arch,
        "dtype": dtype,
        "tensor_types": dict(sorted(tally.types.items())),
        "exact_layers": len(tally.exact),
        "tokenizer": vocab,
    }
    if tally.from_float:
        target = "Q4_0" if dtype == "q4_0" and requantize else "Q8_0"
        notes["quantized_from_float"] = {
            "layers": len(tally.from_float),
            "type": target,
            "examples": tally.from_float[:4],
        }
    if tally.requantized:
        notes["requantized"] = {
            "layers": len(tally.requantized),
            "type": dtype.upper(),
            "examples": tally.requantized[:4],
        }
    if tally.from_float or tally.requantized:
        notes["weight_error"] = {
            "max_abs": tally.max_abs_error,
            "relative_fro": (tally.err_sq / tally.ref_sq) ** 0.5 if tally.ref_sq else 0.0,
        }
    if tally.f16_fallback:
        notes["f16_fallback"] = {
            "layers": len(tally.f16_fallback),
            "why": f"rows not a multiple of {BLOCK}",
            "examples": tally.f16_fallback[:4],
        }
    if warnings:
        notes["warnings"] = warnings
    return notes


register_exporter("gguf", export_gguf, ".gguf")
