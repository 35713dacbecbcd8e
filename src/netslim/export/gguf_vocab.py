"""The tokenizer part of a GGUF file (``tokenizer.ggml.*``), for :mod:`netslim.export.gguf`.

Where the model's tokenizer came from decides how it is written:

* a GGUF file (the ``smollm2`` zoo model, a model opened with ``--model file.gguf``): every
  ``tokenizer.*`` field is copied from that file unchanged — the vocabulary llama.cpp already reads;
* a Hugging Face fast tokenizer (a model directory, the tiny test models): converted as
  llama.cpp's ``convert_hf_to_gguf.py`` does, with the ``gguf`` package's own readers:
  byte-level BPE (GPT-2 / Llama 3 / Qwen2 / SmolLM style) as ``gpt2`` with merges and a
  pre-tokenizer name, sentencepiece-style BPE with byte fallback (Llama 2 / Mistral) as
  ``llama`` (``gguf.LlamaHfVocab``).

The pre-tokenizer name (``tokenizer.ggml.pre``) is recognised as llama.cpp recognises it: the
sha256 of the ids the tokenizer gives :data:`CHECK_TEXT`. Unknown tokenizers get ``default``,
and the export notes say so (llama.cpp then splits text with its default regex).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from netslim.core.errors import NetslimError, shown

# llama.cpp's check text (convert_hf_to_gguf.py, get_vocab_base_pre) and the hashes of a few
# Llama-family pre-tokenizers; the names are llama.cpp's.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
    "3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
    "'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
}


def source_gguf(source: str | None) -> Path | None:
    """The GGUF file a tokenizer source names (``smollm2``: its packaged file), else None."""
    if source == "smollm2":
        from netslim.models.hf_offline import smollm2_gguf

        return smollm2_gguf()
    if source and str(source).lower().endswith(".gguf") and Path(source).is_file():
        return Path(source)
    return None


def add_tokenizer(writer: Any, source: str | None, vocab_size: int) -> dict:
    """Write ``tokenizer.*`` for the tokenizer ``source`` names; returns what was written (for notes)."""
    if source is None:
        raise NetslimError(
            "GGUF export needs the model's tokenizer (llama.cpp cannot run without one), and this "
            "model names none: open it from a zoo name, a Hugging Face directory or a .gguf file, or "
            "set model.netslim_source to its tokenizer directory."
        )
    path = source_gguf(source)
    if path is not None:
        return _copy_from_gguf(writer, path, vocab_size)
    from netslim.models.hf_tokenizers import load_tokenizer

    tok = load_tokenizer(source)
    if not getattr(tok, "is_fast", False):
        raise NetslimError(
            f"GGUF export needs a fast (tokenizer.json) tokenizer; {shown(source, 80)} gives {type(tok).__name__}."
        )
    return _from_hf(writer, tok, vocab_size)


def _copy_from_gguf(writer: Any, path: Path, vocab_size: int) -> dict:
    from netslim.models.gguf_io import gguf_module, open_reader

    gguf = gguf_module()
    reader = open_reader(path)
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        n = None if tokens is None else len(tokens.data)
        raise NetslimError(f"{path}: its vocabulary has {n} tokens; the model's embedding has {vocab_size} rows.")
    for key, f in fields.items():
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if len(f.types) != 2:
                raise NetslimError(f"{path}: tokenizer field {key} is a nested array; it cannot be copied.")
            writer.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[1])
        else:
            writer.add_key_value(key, f.contents(), f.types[0])
    model = fields["tokenizer.ggml.model"].contents() if "tokenizer.ggml.model" in fields else None
    pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else None
    return {"source": f"copied from {path.name}", "model": model, "pre": pre, "tokens": vocab_size}


def _from_hf(writer: Any, tok: Any, vocab_size: int) -> dict:
    """An HF fast tokenizer as llama.cpp's converter writes it (saved to a temporary directory,
    where the gguf package's readers take it from)."""
    from netslim.models.gguf_io import gguf_module

    gguf = gguf_module()
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise NetslimError(
            f"GGUF export writes BPE tokenizers (byte-level or with byte fallback); this one is "
            f"{shown(model.get('type'), 40)}."
        )
    too_big = [i for i in tok.get_vocab().values() if i >= vocab_size]
    if too_big:
        raise NetslimError(
            f"The tokenizer has token id {max(too_big)}, beyond the model's {vocab_size} embedding rows."
        )
    with tempfile.TemporaryDirectory(prefix="netslim-gguf-tok-") as tmp:
        tok.save_pretrained(tmp)
        if model.get("byte_fallback"):
            kind, pre = "llama", None
            _sentencepiece_vocab(writer, gguf, Path(tmp), vocab_size, _merges(model.get("merges") or []))
        else:
            kind, pre = "gpt2", _pre_name(tok)
            _byte_level_vocab(writer, gguf, tok, vocab_size, pre)
            merges = _merges(model.get("merges") or [])
            if merges:
                writer.add_token_merges(merges)
        special = gguf.SpecialVocab(tmp, load_merges=False, n_vocab=vocab_size)
        adds = _adds_specials(tok)  # what the tokenizer does, written even where its config is silent
        for role in ("bos", "eos"):
            special.add_special_token.setdefault(role, adds[role])
        special.add_to_gguf(writer, quiet=True)
    out = {"source": "Hugging Face tokenizer", "model": kind, "pre": pre, "tokens": vocab_size}
    if kind == "gpt2":
        out["pre_recognised"] = pre != "default"
        if not merges:  # GGUF cannot hold an empty array; llama.cpp requires the key for gpt2 vocabularies
            out["warning"] = (
                "the tokenizer has no merges, so tokenizer.ggml.merges is not written; llama.cpp "
                "and transformers need it to load this vocabulary"
            )
    return out


def _merges(merges: list) -> list[str]:
    """tokenizer.json merges (``"a b"`` strings, or ``[a, b]`` pairs since tokenizers 0.20) as
    llama.cpp's ``"a b"`` strings; a space inside a part is written as chr(ord(" ") + 256), as the gguf
    package does."""
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(p, str) for p in m):
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in p) for p in m))
        else:
            raise NetslimError(f"The tokenizer's merges hold {shown(m, 60)}; expected 'a b' or [a, b].")
    return out


def _adds_specials(tok: Any) -> dict[str, bool]:
    """Whether encoding a text puts BOS before it / EOS after it."""
    ids = tok("a")["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return {
        "bos": bool(ids) and bos is not None and ids[0] == bos,
        "eos": len(ids) > 1 and eos is not None and ids[-1] == eos,
    }


def _pre_name(tok: Any) -> str:
    ids = tok.backend_tokenizer.encode(CHECK_TEXT).ids  # = tok.encode(CHECK_TEXT), without the length warning
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    return KNOWN_PRE.get(digest, "default")


def _byte_level_vocab(writer: Any, gguf: Any, tok: Any, vocab_size: int, pre: str) -> None:
    """Tokens by id ([PAD<i>] for unused ids), their types, as convert_hf_to_gguf.get_vocab_base."""
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)


def _sentencepiece_vocab(writer: Any, gguf: Any, tmp: Path, vocab_size: int, merges: list[str]) -> None:
    """Sentencepiece-style BPE (byte fallback) as llama.cpp's ``llama`` vocabulary. llama.cpp merges
    the adjacent pair whose joined token scores highest, so scores follow the merge order: the
    token of merge k scores -k; other normal tokens score below every merge; bytes, control and
    user-defined tokens 0 (gguf.LlamaHfVocab, which reads the rest, gives every token -1000)."""
    try:
        vocab = gguf.LlamaHfVocab(tmp)
    except (FileNotFoundError, TypeError, KeyError) as e:
        raise NetslimError(
            f"GGUF export cannot read this byte-fallback BPE tokenizer as llama.cpp's 'llama' "
            f"vocabulary: {str(e)[:160]}"
        ) from None
    rank: dict[bytes, int] = {}
    for k, m in enumerate(merges):
        rank.setdefault(m.replace(" ", "", 1).encode(), k)
    tokens, scores, types = [], [], []
    for text, _, kind in vocab.all_tokens():
        i = len(tokens)
        tokens.append(text)
        types.append(kind)
        if kind != gguf.TokenType.NORMAL:
            scores.append(0.0)
        else:
            scores.append(float(-rank[text]) if text in rank else float(-(len(merges) + i)))
    if len(tokens) > vocab_size:
        raise NetslimError(f"The tokenizer has {len(tokens)} tokens; the model has {vocab_size} embedding rows.")
    for i in range(len(tokens), vocab_size):  # ids the embedding has and the tokenizer does not use
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
