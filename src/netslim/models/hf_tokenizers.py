"""Tokenizers of the Hugging Face models: the packaged ones, a model directory's, a GGUF file's,
and a byte-level tokenizer built in code for the tiny test models (nothing read or downloaded)."""

from __future__ import annotations

import functools
from pathlib import Path

from netslim.core.errors import NetslimError, unknown_name

from .hf_offline import minilm_dir, smollm2_gguf, transformers_module

_BYTE_SPECIALS = {
    "causal": {"eos": "<|endoftext|>"},
    "bert": {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"},
}


def byte_special_ids(kind: str) -> dict[str, int]:
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
    ids = byte_special_ids(kind)
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
