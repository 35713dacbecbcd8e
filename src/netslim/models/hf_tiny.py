"""``tiny-llama`` (GQA), ``tiny-bert``, ``tiny-gpt2``: seeded random transformers for tests.

Two layers, hidden 64, the byte-level vocabulary of :func:`netslim.models.hf_tokenizers.byte_tokenizer`:
nothing is read or downloaded, and the same seed gives the same weights. :func:`tiny_decoder` is
the one builder of a test's own small decoder (another family, size, seed or tied head).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .hf_arch import finish_hf
from .hf_offline import transformers_module
from .hf_tokenizers import byte_special_ids

TINY_VOCAB = 512  # > the 256 bytes + specials of the byte tokenizer; a round size like real vocabularies


def _seeded(cls_name: str, source: str, seed: int, config: dict[str, Any]) -> nn.Module:
    """transformers' ``cls_name`` built from ``config`` under ``seed``, as netslim keeps it (finish_hf)."""
    cls = getattr(transformers_module(), cls_name)
    cfg = cls.config_class(**config)
    with torch.random.fork_rng(devices=[]):  # seeded init without moving the caller's RNG
        torch.manual_seed(seed)
        model = cls(cfg)
    return finish_hf(model, source)


def _causal_specials() -> dict[str, int]:
    """The byte tokenizer's ``<|endoftext|>`` as BOS, EOS and pad: the tiny causal LMs' special ids."""
    eos = byte_special_ids("causal")["eos"]
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}


def tiny_decoder(family: str = "Llama", seed: int = 0, **config: Any) -> nn.Module:
    """A seeded random ``<family>ForCausalLM`` (Llama, Mistral, Qwen2, Phi3, Gemma2, ...): 2 layers,
    hidden 64, 4 query heads on 2 KV heads, MLP 128, vocabulary :data:`TINY_VOCAB`. ``config``:
    fields of the family's transformers config that replace these or the family's own defaults."""
    base = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    return _seeded(f"{family}ForCausalLM", f"tiny-{family.lower()}", seed, {**base, **config})


def tiny_llama(seed: int = 0) -> nn.Module:
    """2-layer Llama with grouped-query attention (4 query heads, 2 KV heads), hidden 64."""
    specials = _causal_specials()
    return tiny_decoder("Llama", seed, max_position_embeddings=1024, tie_word_embeddings=False, **specials)


def tiny_bert(seed: int = 0) -> nn.Module:
    """2-layer BERT encoder, hidden 64, 4 heads."""
    pad = byte_special_ids("bert")["pad"]
    config = {"vocab_size": TINY_VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config |= {"intermediate_size": 128, "max_position_embeddings": 512, "pad_token_id": pad}
    return _seeded("BertModel", "tiny-bert", seed, config)


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """2-layer GPT-2 (Conv1D projections, tied LM head), hidden 64, 4 heads."""
    config = {"vocab_size": TINY_VOCAB, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1024}
    config |= _causal_specials()
    return _seeded("GPT2LMHeadModel", "tiny-gpt2", seed, config)
