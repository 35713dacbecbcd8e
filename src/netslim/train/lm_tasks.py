"""Text tasks (causal-LM perplexity, encoder fidelity) on the Python docs corpus.

* ``pydocs`` (:class:`CausalLMTask`): blocks of ``seq_len`` tokens; metric perplexity =
  exp(token-weighted mean NLL of next-token prediction), lower is better.
* ``pydocs-sentences`` (:class:`EmbeddingTask`): sentences; metric fidelity = mean cosine
  between the model's sentence embeddings and those of the unmodified model (built fresh
  by name), higher is better, 1.0 for the original. Training distils the embeddings.

Task splits map to corpus splits (see :mod:`netslim.data.pydocs`): "train" and
"calibration" -> calibration, "val" (or "validation") -> validation, "test" -> test.

Both classes also serve other text: a subclass overrides :meth:`CausalLMTask.documents` /
:meth:`EmbeddingTask.corpus_sentences` and passes its own ``tokenizer`` (and, for fidelity, a
``reference`` callable returning the unmodified model), as :mod:`netslim.train.file_tasks`
does for a user's files.

Importing this module registers both datasets and imports no transformers: tokenizers and
reference models are loaded by the constructors and on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netslim.core.errors import bad_param, unknown_name
from netslim.core.hooks import eval_mode
from netslim.train.tasks import Task, _device_of, register_task

_SPLITS = {
    "train": "calibration",
    "calibration": "calibration",
    "val": "validation",
    "validation": "validation",
    "test": "test",
}


def _corpus_split(split: str) -> str:
    if split not in _SPLITS:
        raise unknown_name("split", split, _SPLITS)
    return _SPLITS[split]


def _tokenizer(model_name: str):
    from netslim.models.hf import register_hf_models
    from netslim.models.hf_tokenizers import load_tokenizer

    register_hf_models()  # idempotent; makes build_model(model_name) work for the reference too
    return load_tokenizer(model_name)


def _positive(owner: str, field: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_param(owner, field, "an int >= 1" + (" or None" if allow_none else ""), value)


CE_CHUNK = 64  # tokens per cross-entropy call in nll: a 12 MiB log-softmax for SmolLM2 (49,152 words), not 96 MiB per 512-token block


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)


def encode_texts(tokenizer: Any, texts: list[str], max_length: int, fixed: bool = False) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (B, T): T = ``max_length`` if ``fixed``, else the longest."""
    enc = tokenizer(
        texts, padding="max_length" if fixed else True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# ------------------------------------------------------------------------ causal LM
class CausalLMTask(Task):
    """Perplexity of a causal LM on fixed-length blocks of the Python docs.

    Options: ``model_name`` (whose tokenizer; default "smollm2"), ``seq_len`` (512: long
    enough for real context, short enough for CPU), ``limit`` (at most this many blocks per
    split, taken from the start of the split: for quick runs; None = all), ``seed``
    (training order, calibration draws), ``eval_batch_size``, ``root`` (corpus folder),
    ``tokenizer`` (use this one instead of ``model_name``'s).
    """

    name = "pydocs"
    metric = "perplexity"
    higher_is_better = False

    def __init__(
        self,
        model_name: str = "smollm2",
        seq_len: int = 512,
        limit: int | None = None,
        seed: int = 0,
        eval_batch_size: int = 4,
        root: str | None = None,
        *,
        tokenizer: Any = None,
    ):
        owner = "CausalLMTask"
        _positive(owner, "limit", limit, allow_none=True)
        _positive(owner, "eval_batch_size", eval_batch_size)
        if not isinstance(seq_len, int) or seq_len < 2:
            raise bad_param(owner, "seq_len", "an int >= 2", seq_len)
        self.model_name, self.seq_len, self.limit, self.seed = model_name, seq_len, limit, seed
        self.eval_batch_size, self.root = eval_batch_size, root
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer(model_name)
        self._blocks: dict[str, torch.Tensor] = {}

    def documents(self, corpus: str) -> Iterable[str]:
        """The texts of a corpus split ("calibration", "validation", "test"), in order."""
        from netslim.data.pydocs import list_files, read_text

        return (read_text(p) for p in list_files(corpus, self.root))

    def blocks(self, split: str) -> torch.Tensor:
        """Token blocks (N, seq_len) of a split, tokenised once per task."""
        from netslim.data.files import token_blocks

        corpus = _corpus_split(split)
        if corpus not in self._blocks:
            what, fix = self._too_short(corpus)
            self._blocks[corpus] = token_blocks(
                self.tokenizer, self.documents(corpus), seq_len=self.seq_len, num_blocks=self.limit, what=what, fix=fix
            )
        return self._blocks[corpus]

    def _too_short(self, corpus: str) -> tuple[str, str]:
        """The name of a split in the "fewer than one block" error, and the fix appended to it."""
        return f"Text split {corpus!r}", ""

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        x = self.blocks("train")
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, max(1, len(x) - batch_size + 1), batch_size):  # full batches only
            yield {"input_ids": x[perm[i : i + batch_size]]}

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.blocks("train")) // batch_size)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"].to(_device_of(model))
        return model(input_ids=ids, labels=ids, use_cache=False).loss  # HF shifts the labels itself

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """Logits (B, L, vocab)."""
        ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
        return _logits(model(input_ids=ids.to(_device_of(model)), use_cache=False))

    @torch.no_grad()
    def nll(self, model: nn.Module, split: str = "test") -> tuple[float, int]:
        """Summed next-token NLL (nats) over every block of ``split``, and the token count."""
        x = self.blocks(split)
        dev = _device_of(model)
        total, count = 0.0, 0
        with eval_mode(model):
            for i in range(0, len(x), self.eval_batch_size):
                ids = x[i : i + self.eval_batch_size].to(dev)  # (B, L)
                logits = self.forward(model, ids)[:, :-1].float().flatten(0, 1)  # (B * (L-1), V)
                target = ids[:, 1:].flatten()
                for j in range(0, len(target), CE_CHUNK):  # log-softmax a chunk at a time: not a 2nd logits copy
                    total += F.cross_entropy(logits[j : j + CE_CHUNK], target[j : j + CE_CHUNK], reduction="sum").item()
                count += ids[:, 1:].numel()
        return total, count

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        total, count = self.nll(model, split)
        mean = total / count
        return {"perplexity": math.exp(mean), "loss": mean}

    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        x = self.blocks("test")
        idx = torch.arange(batch_size) % len(x)  # repeat blocks if the split is smaller
        return {"input_ids": x[idx].clone()}  # (B, seq_len)

    def calibration_inputs(self, num_samples: int, seed: int = 0) -> torch.Tensor:
        from netslim.data.calibration import take_samples

        return take_samples(self.blocks("calibration"), num_samples, seed)  # (n, seq_len)

    def calibration_tokens(self, num_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
        """``num_samples`` blocks of ``seq_len`` tokens drawn (by ``seed``) from this task's whole
        calibration split — the one-shot LLM methods' calibration set. Not shortened by ``limit``
        (which only shortens evaluation) and cut at the step's own ``seq_len``."""
        from netslim.data.calibration import take_samples
        from netslim.data.files import token_blocks

        what, fix = self._too_short("calibration")
        blocks = token_blocks(self.tokenizer, self.documents("calibration"), seq_len=seq_len, what=what, fix=fix)
        return take_samples(blocks, num_samples, seed)  # (n, seq_len), in corpus order

    @torch.no_grad()
    def generate_sample(self, model: nn.Module, prompt: str, max_new_tokens: int = 32) -> str:
        """Greedy continuation of ``prompt`` (for reports: what the compressed model says)."""
        _positive("generate_sample", "max_new_tokens", max_new_tokens)
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]  # (1, T)
        start = ids.shape[1]
        with eval_mode(model):
            # No KV cache: a few dozen tokens, and it works for any module that maps ids to logits.
            for _ in range(max_new_tokens):
                nxt = self.forward(model, ids)[0, -1].argmax().view(1, 1).cpu()
                ids = torch.cat([ids, nxt], dim=1)
                if nxt.item() == self.tokenizer.eos_token_id:
                    break
        return self.tokenizer.decode(ids[0, start:], skip_special_tokens=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_name": self.model_name, "seq_len": self.seq_len, "limit": self.limit}


# ------------------------------------------------------------------------- encoder
class EmbeddingTask(Task):
    """Fidelity of a sentence encoder to its unmodified self on Python docs sentences.

    Options: ``model_name`` (tokenizer and reference model; default "minilm"),
    ``max_length`` (128 tokens: truncation, and the fixed padded length of
    ``example_inputs`` / ``calibration_inputs``), ``limit`` (sentences per split, 2000 by
    default: evenly spread over the split so every document area is represented; None =
    all), ``seed``, ``eval_batch_size``, ``root``, ``tokenizer`` (instead of
    ``model_name``'s), ``reference`` (returns the unmodified model; default: build
    ``model_name`` from the zoo).
    """

    name = "pydocs-sentences"
    metric = "fidelity"
    higher_is_better = True

    def __init__(
        self,
        model_name: str = "minilm",
        max_length: int = 128,
        limit: int | None = 2000,
        seed: int = 0,
        eval_batch_size: int = 64,
        root: str | None = None,
        *,
        tokenizer: Any = None,
        reference: Callable[[], nn.Module] | None = None,
    ):
        owner = "EmbeddingTask"
        _positive(owner, "max_length", max_length)
        _positive(owner, "limit", limit, allow_none=True)
        _positive(owner, "eval_batch_size", eval_batch_size)
        self.model_name, self.max_length, self.limit, self.seed = model_name, max_length, limit, seed
        self.eval_batch_size, self.root = eval_batch_size, root
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer(model_name)
        self._sentences: dict[str, list[str]] = {}
        self._reference: dict[str, torch.Tensor] = {}
        self._reference_model: nn.Module | None = None
        self._build_reference = reference

    def corpus_sentences(self, corpus: str) -> list[str]:
        """Every sentence of a corpus split ("calibration", "validation", "test"), in order."""
        from netslim.data.pydocs import sentences

        return sentences(corpus, root=self.root)

    def sentences(self, split: str) -> list[str]:
        from netslim.data.files import spread

        corpus = _corpus_split(split)
        if corpus not in self._sentences:
            self._sentences[corpus] = spread(self.corpus_sentences(corpus), self.limit)
        return self._sentences[corpus]

    def encode(self, texts: list[str], fixed: bool = False) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (B, T): T = max_length if ``fixed``, else the longest."""
        return encode_texts(self.tokenizer, texts, self.max_length, fixed)

    @torch.no_grad()
    def embed(self, model: nn.Module, texts: list[str]) -> torch.Tensor:
        """Normalised sentence embeddings (N, H), in the order of ``texts``, on the CPU."""
        from netslim.models.hf import sentence_embeddings

        # Batches of similar length waste less compute on padding; the order is restored below.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        dev = _device_of(model)
        parts = []
        with eval_mode(model):
            for i in range(0, len(order), self.eval_batch_size):
                enc = self.encode([texts[j] for j in order[i : i + self.eval_batch_size]])
                parts.append(sentence_embeddings(model, {k: v.to(dev) for k, v in enc.items()}).cpu())
        out = torch.empty(len(texts), parts[0].shape[1])
        out[torch.tensor(order)] = torch.cat(parts)
        return out

    def reference_embeddings(self, split: str) -> torch.Tensor:
        """Embeddings (N, H) of the unmodified model, computed once per split and kept in memory."""
        corpus = _corpus_split(split)
        if corpus not in self._reference:
            if self._reference_model is None:
                from netslim.models.sources import open_model

                # A zoo name or a model directory: the original weights, as packaged / saved.
                build = self._build_reference or (lambda: open_model(self.model_name).model)
                self._reference_model = build()
            self._reference[corpus] = self.embed(self._reference_model, self.sentences(corpus))
        return self._reference[corpus]

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """``(inputs, reference embeddings)`` pairs from the calibration sentences."""
        texts, target = self.sentences("train"), self.reference_embeddings("train")
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(texts), generator=g)
        for i in range(0, max(1, len(texts) - batch_size + 1), batch_size):
            idx = perm[i : i + batch_size]
            yield self.encode([texts[j] for j in idx.tolist()]), target[idx]

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.sentences("train")) // batch_size)

    def loss(self, model: nn.Module, batch: tuple[dict[str, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        inputs, target = batch
        emb = self.forward(model, inputs)  # (B, H), unit norm
        return (1 - (emb * target.to(emb.device)).sum(-1)).mean()  # 1 - cosine

    def forward(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised sentence embeddings (B, H)."""
        from netslim.models.hf import sentence_embeddings

        dev = _device_of(model)
        return sentence_embeddings(model, {k: v.to(dev) for k, v in inputs.items()})

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        ref = self.reference_embeddings(split)
        cos = (self.embed(model, self.sentences(split)) * ref).sum(-1)  # (N,)
        fidelity = cos.mean().item()
        return {"fidelity": fidelity, "loss": 1 - fidelity}

    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        texts = self.sentences("test")
        return self.encode([texts[i % len(texts)] for i in range(batch_size)], fixed=True)

    def calibration_inputs(self, num_samples: int, seed: int = 0) -> dict[str, torch.Tensor]:
        from netslim.data.calibration import take_samples

        texts = self.sentences("calibration")
        idx = take_samples(torch.arange(len(texts)), num_samples, seed)
        return self.encode([texts[i] for i in idx.tolist()], fixed=True)  # (n, max_length) each

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_name": self.model_name, "max_length": self.max_length, "limit": self.limit}


register_task("pydocs", CausalLMTask)
register_task("pydocs-sentences", EmbeddingTask)
