"""GGUF (llama.cpp's file format) for Llama-family causal LMs: the tables that map it to
Hugging Face models, shared by the reader here and the writer in :mod:`netslim.export.gguf`,
and the reader behind ``--model file.gguf`` (and the ``smollm2`` zoo model).

* Architectures: llama.cpp's ``llama`` (HF Llama and Mistral; Q/K rows permuted) and ``qwen2``
  (HF Qwen2; not permuted). :data:`HF_TO_GGUF` and :data:`GGUF_ARCHS`.
* Tensor names come from the ``gguf`` package's own map (``get_tensor_name_map``), never a
  second copy: :func:`tensor_names`.
* Q/K rows: llama.cpp's ``llama`` architecture applies rotary embedding to adjacent pairs, HF
  to the two halves of each head, so its converter permutes the rows of ``q_proj`` / ``k_proj``
  (weights and biases). :func:`permute_rotary` and :func:`unpermute_rotary` are exact inverses.
* Reading (:func:`read_gguf`, :func:`load_gguf_model`): every metadata field is type- and
  range-checked, every tensor's name, type and shape checked against the model the metadata
  describes before anything large is allocated; a damaged file, an unknown architecture or an
  unsupported tensor type is one :class:`~netslim.core.errors.NetslimError` line.
* Q4_0 and Q8_0 matrices become netslim's :class:`~netslim.quantize.weight_only.QuantizedLinear`
  (``packed=True``): llama.cpp's codes and fp16 scales are copied as they are (Q4_0: 4-bit codes,
  zero 8; Q8_0: 8-bit codes ``q + 128``, zero 128; groups of 32), so the model computes exactly
  the weights in the file and exporting it again writes the same blocks. A tied embedding stays
  dense (one float table serves both ends). Every other type is dequantized to fp32 with the
  ``gguf`` package's reference formulas (Q4_1 is ``d * q + m``, which netslim's
  ``(q - zero) * scale`` cannot hold exactly).
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netslim.core.errors import NetslimError, shown

log = logging.getLogger(__name__)

# HF config.model_type -> llama.cpp architecture (what convert_hf_to_gguf.py writes for it).
HF_TO_GGUF = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# llama.cpp architecture -> (transformers model class, its config class, Q/K rows permuted)
GGUF_ARCHS = {"llama": ("LlamaForCausalLM", "LlamaConfig", True), "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", False)}
FAMILY_TEXT = "Llama-family causal LMs (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
BLOCK = 32  # values per Q4_0 / Q8_0 block
# Tensor types read (names of gguf.GGMLQuantizationType): float, the classic block types and
# the K-quants, all dequantized with the gguf package's numpy reference code.
READ_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
PACKED_TYPES = ("Q4_0", "Q8_0")  # read as netslim packed codes, exactly
_MAX_LAYERS, _MAX_WIDTH, _MAX_CONTEXT = 1024, 1 << 17, 1 << 24


def gguf_module():
    """The ``gguf`` package, or a NetslimError naming the extra that installs it."""
    try:
        import gguf
    except ImportError:
        raise NetslimError("GGUF files need the optional dependency 'gguf': pip install netslim[export].") from None
    return gguf


# ------------------------------------------------------------------ shared tables
def tensor_names(arch: str, n_layers: int, hf_keys) -> dict[str, str]:
    """HF state-dict key -> GGUF tensor name (``model.layers.0.self_attn.q_proj.weight`` ->
    ``blk.0.attn_q.weight``), from the gguf package's map; keys it does not name are left out."""
    gguf = gguf_module()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)
    out = {}
    for key in hf_keys:
        base, _, suffix = key.rpartition(".")
        name = names.get_name(base)
        if name is not None:
            out[key] = f"{name}.{suffix}"
    return out


def rotary_heads(arch: str, gguf_name: str, config: Any) -> int | None:
    """Heads whose rows llama.cpp permutes in tensor ``gguf_name`` (None: not permuted)."""
    if not GGUF_ARCHS[arch][2]:
        return None
    if ".attn_q." in gguf_name:
        return config.num_attention_heads
    if ".attn_k." in gguf_name:
        return config.num_key_value_heads
    return None


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF row order -> llama.cpp's: each head's two rotary halves interleaved as (dim/2, 2) pairs.

    Works on any tensor whose first dim is the output rows (weights, biases, packed codes,
    per-row block bytes)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`permute_rotary`."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------- reading
@dataclass
class GGUFModel:
    """What :func:`read_gguf` found: config, dense tensors (HF keys) and packed layers."""

    arch: str
    config: Any
    dense: dict[str, torch.Tensor]
    packed: dict[str, tuple] = field(default_factory=dict)  # module name -> (codes, scale, zero, bits)
    types: dict[str, str] = field(default_factory=dict)  # GGUF tensor name -> its type


def open_reader(path: Path):
    """A ``gguf.GGUFReader`` of ``path``; a NetslimError (one line) for a file it cannot parse."""
    gguf = gguf_module()
    try:
        return gguf.GGUFReader(str(path))
    except (
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        OverflowError,
        UnicodeDecodeError,
        struct.error,
        MemoryError,
        OSError,
    ) as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise NetslimError(
            f"{path}: not a readable GGUF file ({type(e).__name__}: {why}); it may be truncated or damaged."
        ) from None


def scalar_fields(reader) -> dict[str, Any]:
    """Metadata scalars and strings (arrays, e.g. the vocabulary, left out)."""
    gguf = gguf_module()
    out = {}
    for key, f in reader.fields.items():
        if f.types and f.types[0] != gguf.GGUFValueType.ARRAY:
            try:
                out[key] = f.contents()
            except (ValueError, UnicodeDecodeError, IndexError) as e:
                raise NetslimError(f"GGUF metadata {shown(key, 80)} cannot be read: {str(e)[:120]}.") from None
    return out


def read_gguf(path: str | Path, *, packed: bool = True) -> GGUFModel:
    """Config and weights of a Llama-family GGUF file, validated (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise NetslimError(f"GGUF file {str(path)!r} does not exist.")
    reader = open_reader(path)
    meta = scalar_fields(reader)
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHS:
        raise NetslimError(
            f"{path.name}: GGUF architecture {shown(arch, 60)} is not supported; netslim reads "
            f"{', '.join(repr(a) for a in GGUF_ARCHS)} ({FAMILY_TEXT})."
        )
    tensors = {}
    for t in reader.tensors:
        if t.name in tensors:
            raise NetslimError(f"{path.name}: tensor {shown(t.name, 80)} appears twice.")
        tensors[t.name] = t
    config = _config(path, arch, meta, tensors)
    cls = _model_class(arch)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    names = tensor_names(arch, config.num_hidden_layers, shapes)
    unnamed = sorted(set(shapes) - set(names))
    if unnamed:  # a parameter llama.cpp has no tensor for: it would stay at its random initial value
        raise NetslimError(f"{path.name}: GGUF has no tensor name for {unnamed[0]} of {GGUF_ARCHS[arch][0]}.")
    to_hf = {g: k for k, g in names.items()}
    _check_tensors(path, tensors, to_hf, shapes)
    out = GGUFModel(arch, config, {})
    tied_embedding = "model.embed_tokens.weight" if config.tie_word_embeddings else None
    for name, t in tensors.items():
        key, kind = to_hf[name], t.tensor_type.name
        out.types[name] = kind
        heads = rotary_heads(arch, name, config)
        if (
            packed
            and kind in PACKED_TYPES
            and key.endswith(".weight")
            and len(shapes[key]) == 2
            and key != tied_embedding
        ):
            out.packed[key[: -len(".weight")]] = _packed_codes(path, t, kind, heads)
        else:
            out.dense[key] = _dense(path, t, heads)
    return out


def _model_class(arch: str) -> type:
    from netslim.models.hf_offline import transformers_module

    return getattr(transformers_module(), GGUF_ARCHS[arch][0])


def _int(path: Path, meta: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = meta.get(key, default)
    if value is None:
        raise NetslimError(f"{path.name}: GGUF metadata {key!r} is missing.")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise NetslimError(
            f"{path.name}: GGUF metadata {key!r} must be an integer in [{lo}, {hi}]; got {shown(value, 60)}."
        )
    return int(value)


def _float(path: Path, meta: dict, key: str, lo: float, hi: float, default: float | None = None) -> float:
    value = meta.get(key, default)
    if value is None:
        raise NetslimError(f"{path.name}: GGUF metadata {key!r} is missing.")
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not math.isfinite(float(value))
        or not lo < float(value) <= hi
    ):
        raise NetslimError(
            f"{path.name}: GGUF metadata {key!r} must be a number in ({lo}, {hi}]; got {shown(value, 60)}."
        )
    return float(value)


def _config(path: Path, arch: str, meta: dict, tensors: dict) -> Any:
    """The transformers config the metadata describes (every field checked)."""
    from netslim.models.hf_offline import transformers_module

    tf = transformers_module()
    p = f"{arch}."
    hidden = _int(path, meta, p + "embedding_length", 1, _MAX_WIDTH)
    heads = _int(path, meta, p + "attention.head_count", 1, 4096)
    kv_heads = _int(path, meta, p + "attention.head_count_kv", 1, heads, default=heads)
    if heads % kv_heads:
        raise NetslimError(f"{path.name}: {kv_heads} key/value heads do not divide {heads} attention heads.")
    head_dim = _int(path, meta, p + "attention.key_length", 2, _MAX_WIDTH, default=hidden // heads or 1)
    if _int(path, meta, p + "attention.value_length", 1, _MAX_WIDTH, default=head_dim) != head_dim:
        raise NetslimError(f"{path.name}: key and value head sizes differ; netslim reads equal ones only.")
    if _int(path, meta, p + "rope.dimension_count", 1, _MAX_WIDTH, default=head_dim) != head_dim or head_dim % 2:
        raise NetslimError(
            f"{path.name}: rotary embedding over part of a head (rope.dimension_count != {head_dim}) is not supported."
        )
    if "rope_freqs.weight" in tensors:
        raise NetslimError(
            f"{path.name}: per-frequency rope factors (tensor rope_freqs, Llama 3.1-style rope "
            "scaling) are not supported by netslim's GGUF reader."
        )
    theta = _float(path, meta, p + "rope.freq_base", 0.0, 1e12, default=10000.0)
    rope = {"rope_type": "default", "rope_theta": theta}
    scaling = meta.get(p + "rope.scaling.type", "none")
    if scaling == "linear":
        rope = {
            "rope_type": "linear",
            "rope_theta": theta,
            "factor": _float(path, meta, p + "rope.scaling.factor", 0.0, 1e6),
        }
    elif scaling != "none":
        raise NetslimError(
            f"{path.name}: rope scaling {shown(scaling, 40)} is not supported; netslim reads 'none' and 'linear'."
        )
    embd = tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2:
        raise NetslimError(f"{path.name}: no 2-D token_embd.weight tensor (the token embedding).")
    vocab = int(embd.shape[1])  # GGUF shapes list the fastest dim first: (hidden, vocab)
    _int(path, meta, p + "vocab_size", vocab, vocab, default=vocab)
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_int(path, meta, p + "feed_forward_length", 1, _MAX_WIDTH),
        num_hidden_layers=_int(path, meta, p + "block_count", 1, _MAX_LAYERS),
        max_position_embeddings=_int(path, meta, p + "context_length", 1, _MAX_CONTEXT),
        rms_norm_eps=_float(path, meta, p + "attention.layer_norm_rms_epsilon", 0.0, 1.0),
        rope_parameters=rope,
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=_token_id(path, meta, "bos", vocab),
        eos_token_id=_token_id(path, meta, "eos", vocab),
        pad_token_id=_token_id(path, meta, "padding", vocab),
    )
    if arch == "llama":
        kwargs.update(attention_bias="blk.0.attn_q.bias" in tensors, mlp_bias="blk.0.ffn_up.bias" in tensors)
    return getattr(tf, GGUF_ARCHS[arch][1])(**kwargs)


def _token_id(path: Path, meta: dict, role: str, vocab: int) -> int | None:
    key = f"tokenizer.ggml.{role}_token_id"
    return None if key not in meta else _int(path, meta, key, 0, vocab - 1)


def _check_tensors(path: Path, tensors: dict, to_hf: dict, shapes: dict) -> None:
    """Every tensor known, of a readable type and of the shape the config implies; none missing."""
    unknown = sorted(n for n in tensors if n not in to_hf)
    if unknown:
        raise NetslimError(
            f"{path.name}: unexpected tensor {shown(unknown[0], 80)}"
            + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + " for the architecture and sizes in its metadata."
        )
    missing = sorted(g for g in to_hf if g not in tensors)
    if missing:
        raise NetslimError(
            f"{path.name}: tensor {missing[0]} is missing"
            + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
            + "."
        )
    for name, t in tensors.items():
        kind = t.tensor_type.name
        if kind not in READ_TYPES:
            raise NetslimError(
                f"{path.name}: tensor {name} has type {kind}, which netslim does not read; "
                f"supported: {', '.join(READ_TYPES)}."
            )
        got, want = tuple(int(d) for d in reversed(t.shape)), shapes[to_hf[name]]
        if got != want:
            raise NetslimError(f"{path.name}: tensor {name} has shape {list(got)}; the metadata implies {list(want)}.")


def _dense(path: Path, t, heads: int | None) -> torch.Tensor:
    gguf = gguf_module()
    w = torch.from_numpy(np.array(gguf.dequantize(t.data, t.tensor_type), dtype=np.float32))  # a copy
    w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # (out, in) / (n,)
    if not bool(torch.isfinite(w).all()):
        raise NetslimError(f"{path.name}: tensor {t.name} holds NaN or infinite values.")
    return unpermute_rotary(w, heads) if heads else w


def _packed_codes(path: Path, t, kind: str, heads: int | None) -> tuple:
    """Q4_0 / Q8_0 blocks -> (codes uint8 (R, C), scale fp16 (R, C/32), zero fp16, bits), exactly."""
    rows, cols = (int(d) for d in reversed(t.shape))
    blocks = np.asarray(t.data, dtype=np.uint8).reshape(rows, cols // BLOCK, -1)  # (R, C/32, bytes per block)
    scale = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]  # (R, C/32)
    if not np.isfinite(scale).all():
        raise NetslimError(f"{path.name}: tensor {t.name} holds NaN or infinite block scales.")
    if kind == "Q4_0":  # 16 bytes: value j in the low nibble of byte j, value j+16 in its high nibble
        qs = blocks[..., 2:]
        codes, bits, zero = np.concatenate([qs & 0x0F, qs >> 4], axis=-1), 4, 8.0
    else:  # Q8_0: 32 signed bytes, stored as unsigned codes q + 128
        codes, bits, zero = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8), 8, 128.0
    codes_t = torch.from_numpy(np.ascontiguousarray(codes.reshape(rows, cols)))
    scale_t = torch.from_numpy(np.ascontiguousarray(scale))
    if heads:
        codes_t, scale_t = unpermute_rotary(codes_t, heads), unpermute_rotary(scale_t, heads)
    return codes_t, scale_t, torch.full_like(scale_t, zero), bits


def load_gguf_model(path: str | Path, *, packed: bool = True, source: str | None = None) -> nn.Module:
    """The transformers model of a Llama-family GGUF file (see :func:`read_gguf`), in eval mode.
    ``source``: where its tokenizer comes from (default: this file)."""
    from netslim.core.surgery import replace_module
    from netslim.models.hf_arch import register_hf_types
    from netslim.models.hf_offline import quiet_loading
    from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear

    path = Path(path)
    found = read_gguf(path, packed=packed)
    with quiet_loading():
        model = _model_class(found.arch)(found.config)
    for name, (codes, scale, zero, bits) in found.packed.items():
        old = model.get_submodule(name)
        if isinstance(old, nn.Embedding):
            new = QuantizedEmbedding(old.num_embeddings, old.embedding_dim, bits, BLOCK, old.padding_idx)
            new.set_codes(codes, scale, zero)
        else:
            bias = found.dense.pop(f"{name}.bias", None)
            new = QuantizedLinear.from_codes(codes, scale, zero, bits=bits, group_size=BLOCK, bias=bias)
        replace_module(model, name, new)
    result = model.load_state_dict(found.dense, strict=False)
    packed_keys = {k for k in model.state_dict() if k.rpartition(".")[0] in found.packed}
    missing = (
        set(result.missing_keys) - packed_keys - ({"lm_head.weight"} if found.config.tie_word_embeddings else set())
    )
    if missing or result.unexpected_keys:
        raise NetslimError(
            f"{path.name}: tensors do not fit the model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(result.unexpected_keys)[:3]}."
        )
    if found.config.tie_word_embeddings:
        model.tie_weights()
    model.netslim_source = source or str(path.resolve())
    register_hf_types(model.config.model_type)
    return model.eval()


def gguf_tokenizer(path: str | Path):
    """The HF fast tokenizer a GGUF file describes (transformers' converter of its ``tokenizer.ggml.*``)."""
    from netslim.models.hf_offline import transformers_module

    tf = transformers_module()
    path = Path(path)
    reader = open_reader(path)
    if "tokenizer.ggml.model" not in reader.fields:
        raise NetslimError(f"{path}: the GGUF file holds no tokenizer (no tokenizer.ggml.model).")
    try:
        return tf.PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except (ValueError, KeyError, TypeError, OSError, IndexError) as e:
        raise NetslimError(f"{path}: transformers cannot build its tokenizer: {str(e).splitlines()[0][:200]}") from None
