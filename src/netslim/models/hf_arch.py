"""The ``"hf"`` architecture kind: how an artifact describes and rebuilds a transformers model.

:func:`describe_hf` writes ``{"class", "config", "source"}``, :func:`build_hf` rebuilds the
model from it (weights come later); the stored config never chooses an attention kernel
to fetch (:func:`safe_attn_config`). :func:`register_hf_types` teaches save/load and the MAC
counter the module types of one transformers family (Llama, BERT, GPT-2) on its first use;
:func:`finish_hf` is the last step of every loader of a transformers model.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from netslim.core.errors import NetslimError, shown
from netslim.core.serialize import register_module
from netslim.measure.counts import register_macs

from .hf_offline import transformers_module

log = logging.getLogger(__name__)

# Artifacts name their transformers class; it is looked up as an attribute of the
# transformers module and must be a PreTrainedModel subclass, so an artifact can never make
# netslim import an arbitrary string (see :func:`hf_class`).
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]{0,99}$")


def finish_hf(model: nn.Module, source: str) -> nn.Module:
    """A loaded transformers model as netslim keeps it: its source named, its family's types
    registered, fp32, eval mode."""
    model.netslim_source = source  # which tokenizer and reference model belong to it
    register_hf_types(model.config.model_type)
    return model.float().eval()


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
