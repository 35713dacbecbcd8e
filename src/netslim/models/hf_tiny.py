"""``tiny-llama`` (GQA), ``tiny-bert``, ``tiny-gpt2``: seeded random transformers for tests.

Two layers, hidden 64, the byte-level vocabulary of :func:`netslim.models.hf_tokenizers.byte_tokenizer`:
nothing is read or downloaded, and the same seed gives the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .hf_arch import finish_hf
from .hf_offline import transformers_module
from .hf_tokenizers import byte_special_ids

TINY_VOCAB = 512  # > the 256 bytes + specials of the byte tokenizer; a round size like real vocabularies


def _seeded(cls_name: str, config_name: str, seed: int, **config: Any) -> nn.Module:
    tf = transformers_module()
    cfg = getattr(tf, config_name)(**config)
    with torch.random.fork_rng(devices=[]):  # seeded init without moving the caller's RNG
        torch.manual_seed(seed)
        model = getattr(tf, cls_name)(cfg)
    return model


def tiny_llama(seed: int = 0) -> nn.Module:
    """2-layer Llama with grouped-query attention (4 query heads, 2 KV heads), hidden 64."""
    ids = byte_special_ids("causal")
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
    return finish_hf(model, "tiny-llama")


def tiny_bert(seed: int = 0) -> nn.Module:
    """2-layer BERT encoder, hidden 64, 4 heads."""
    ids = byte_special_ids("bert")
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
    return finish_hf(model, "tiny-bert")


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """2-layer GPT-2 (Conv1D projections, tied LM head), hidden 64, 4 heads."""
    ids = byte_special_ids("causal")
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
    return finish_hf(model, "tiny-gpt2")
