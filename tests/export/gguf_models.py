"""Helpers of the GGUF tests: tiny Llama / Mistral / Qwen2 models with a tiny trained BPE
tokenizer, and an independent numpy implementation of llama.cpp's reference dequantization
(ggml-quants.c ``dequantize_row_q4_0`` / ``dequantize_row_q8_0``) used as the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

VOCAB = 300
SPM_VOCAB = 360  # byte fallback: 256 byte tokens + characters + merges
TEXT = (
    "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, item):\n        self.items.append(item)\n"
    "The Python standard library module provides functions for working with files and text. "
) * 4


def bpe_tokenizer_dir(path: Path, *, byte_fallback: bool = False) -> Path:
    """A tiny tokenizer saved as a Hugging Face directory: byte-level BPE (GPT-2 / SmolLM style,
    with merges) or, with ``byte_fallback``, a sentencepiece-style BPE (Llama 2 / Mistral)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if byte_fallback:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        specials = ["<unk>", "<s>", "</s>"]
        alphabet = [f"<0x{i:02X}>" for i in range(256)]
        trainer = trainers.BpeTrainer(
            vocab_size=SPM_VOCAB - 10, special_tokens=specials + alphabet, show_progress=False
        )
        tok.train_from_iterator([TEXT], trainer)
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=256
        )
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB - 20,
            special_tokens=["<|endoftext|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator([TEXT], trainer)
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", model_max_length=256
        )
    fast.save_pretrained(str(path))
    return path


def tiny_lm(
    kind: str, tokenizer_dir: Path, *, seed: int = 0, tie: bool = False, vocab: int = VOCAB, intermediate: int = 128
):
    """A 2-layer random ``kind`` (llama / mistral / qwen2) causal LM with GQA (4 heads, 2 KV heads),
    hidden 64, vocabulary 300; its tokenizer is ``tokenizer_dir``."""
    import transformers

    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[kind]
    cfg = getattr(transformers, f"{name}Config")(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=50000.0,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, f"{name}ForCausalLM")(cfg)
        for p in model.parameters():  # random norms and biases too: a permutation error cannot hide
            if p.dim() == 1:
                p.data.normal_(1.0 if p.shape[0] == 64 else 0.0, 0.1)
    model.netslim_source = str(tokenizer_dir)
    return model.eval()


# ------------------------------------------------------------ the oracle (llama.cpp's formulas)
def ref_dequantize(kind: str, raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``raw`` tensor data as gguf.GGUFReader gives it -> float32 (rows, cols), by ggml-quants.c's
    reference formulas written out here (not gguf.quants)."""
    rows, cols = shape
    if kind == "F32":
        return np.asarray(raw, dtype=np.float32).reshape(rows, cols)
    if kind == "F16":
        return np.asarray(raw).view(np.float16).astype(np.float32).reshape(rows, cols)
    size = {"Q4_0": 18, "Q8_0": 34}[kind]
    b = np.asarray(raw, dtype=np.uint8).reshape(rows * cols // 32, size)
    out = np.empty((rows * cols // 32, 32), dtype=np.float32)
    for i in range(b.shape[0]):
        d = np.float32(b[i, :2].view(np.float16)[0])
        if kind == "Q4_0":
            for j in range(16):
                out[i, j] = np.float32((int(b[i, 2 + j]) & 0x0F) - 8) * d
                out[i, j + 16] = np.float32((int(b[i, 2 + j]) >> 4) - 8) * d
        else:
            out[i] = b[i, 2:].view(np.int8).astype(np.float32) * d
    return out.reshape(rows, cols)
