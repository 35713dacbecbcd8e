"""What an exported ONNX graph takes and returns.

A CNN or any plain module exports as it is: its ``forward`` on one tensor (or keyword tensors).
A Hugging Face model exports through :class:`GraphForward`, a wrapper whose traced forward
takes tensors only and returns tensors only - never the model's ``ModelOutput``, and by default
never a KV cache (``use_cache=False``):

==========================  =====================================  ==============================
model kind                  graph inputs                           graph outputs
==========================  =====================================  ==============================
causal LM                   ``input_ids``, ``attention_mask``      ``logits`` (B, T, vocab)
sequence classifier         ``input_ids``, ``attention_mask``      ``logits`` (B, labels)
encoder (``*Model``)        ``input_ids``, ``attention_mask``      ``last_hidden_state`` (B, T, H)
masked LM (``*ForMaskedLM``)  ``input_ids``, ``attention_mask``    ``logits``, ``last_hidden_state``
image classifier            ``pixel_values``                       ``logits``
==========================  =====================================  ==============================

Batch and sequence axes are symbolic. A masked LM also returns its last hidden state: that is
what netslim scores it by (embedding fidelity). A task's inputs without ``attention_mask``
(causal-LM blocks) get one of ones. Other Hugging Face models (encoder-decoders, vision
backbones) are refused before any tracing.

**Decoder step with a KV cache** (``kv_cache=True``, a causal LM of a family in
:data:`KV_CACHE_FAMILIES`: Llama (SmolLM2), Mistral, Qwen2, Phi-3, GPT-2):
:class:`CachedGraphForward` - one call is a prefill (past length 0)
or any number of new tokens after a cached past, the names Optimum / ONNX Runtime GenAI use:

* inputs ``input_ids`` (B, T), ``attention_mask`` (B, P + T: the past's positions and the new
  ones, 0 = padding), ``position_ids`` (B, T), and per layer ``past_key_values.<i>.key`` /
  ``.value`` (B, kv heads, P, head dim), float32;
* outputs ``logits`` (B, T, vocab) and per layer ``present.<i>.key`` / ``.value``
  (B, kv heads, P + T, head dim): the next call's past.

Batch, T, P (from 0) and P + T are symbolic. Inside the traced forward the past tensors fill
transformers' own ``DynamicCache``, which the model updates as in PyTorch (the attention, its
mask and the cache concatenation are the model's code), so the graph computes what
``model(..., past_key_values=cache, use_cache=True)`` computes (a sliding window, Mistral's,
stays a mask: the present keeps every position). Other families - a cache that is not one key /
value pair per layer (hybrid sliding / global layers, recurrent state, encoder-decoders), or one
not checked yet - are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError

TEXT_INPUTS = ("input_ids", "attention_mask")
# families whose KV-cache decoder step is exported and checked (tests/quantize/test_onnx_kv_cache.py):
# one key / value pair per layer in DynamicCache (mistral's sliding window is a mask on a full past)
KV_CACHE_FAMILIES = ("llama", "mistral", "qwen2", "phi3", "gpt2")
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
_OUTPUTS = {"causal_lm": ("logits",), "text_classification": ("logits",), "image_classification": ("logits",)}
CONFIG_KEYS = ("num_labels", "id2label", "label2id", "num_channels", "image_size", "model_type")


class GraphForward(nn.Module):
    """A Hugging Face model behind a tensors-in, tensors-out forward (see the module docstring).

    The model is kept as ``self.model``: the exported initializers are named
    ``model.<module path>.<tensor>``, and :func:`netslim.models.onnx_graph.layer_name` strips
    that prefix again.
    """

    def __init__(self, model: nn.Module, kind: str, masked_lm: bool):
        super().__init__()
        self.model, self.kind, self.masked_lm = model, kind, masked_lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        extra: dict[str, Any] = {"return_dict": True}
        if self.kind == "causal_lm":
            extra["use_cache"] = False  # no KV cache object in the graph
        if self.masked_lm:
            extra["output_hidden_states"] = True
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if self.masked_lm:
            return out.logits, out.hidden_states[-1]
        if self.kind == "embedding":
            return (out.last_hidden_state,)
        return (out.logits,)


class CachedGraphForward(GraphForward):
    """:class:`GraphForward` of a causal LM's decoder step with a KV cache (module docstring):
    ``(input_ids, attention_mask, position_ids, *past)`` -> ``(logits, *present)``, the past and
    present as ``key, value`` of layer 0, then layer 1, ..."""

    def __init__(self, model: nn.Module):
        super().__init__(model, "causal_lm", False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        from netslim.models.hf_offline import transformers_module

        cache = transformers_module().DynamicCache([(past[i], past[i + 1]) for i in range(0, len(past), 2)])
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


class ImageGraphForward(GraphForward):
    """:class:`GraphForward` of an image classifier: ``pixel_values`` in, ``logits`` out."""

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.model(pixel_values=pixel_values, return_dict=True).logits,)


@dataclass
class GraphSpec:
    """What :func:`graph_module` decided: the module to trace, its example, names and kind."""

    module: nn.Module
    example: Any  # a tensor, or a dict of tensors in graph-input order
    kind: str  # netslim.train.object_tasks.MODEL_KINDS
    outputs: tuple[str, ...]
    config: dict[str, Any]  # the labels / channels a task needs from the model
    # symbolic axes per input, name -> {axis: (symbol, minimum)}; None: the exporter's default
    dims: dict[str, dict[int, tuple[str, int]]] | None = None


def graph_module(model: nn.Module, example: Any, kv_cache: bool = False) -> GraphSpec:
    """The module and example to trace for ``model`` (see the module docstring); ``kv_cache``:
    the decoder step of a causal LM (:func:`decoder_spec`)."""
    from netslim.train.object_tasks import model_kind

    kind = model_kind(model)
    if kv_cache:
        return decoder_spec(model, example, kind)
    if kind == "module":
        if _is_hf(model):
            raise NetslimError(
                f"ONNX export of {type(model).__name__}: a Hugging Face model exports when it is a causal LM, an "
                "encoder (or masked LM), a sequence classifier or an image classifier; this one is none of them "
                "(encoder-decoder or vision backbone), whose inputs and outputs netslim cannot name."
            )
        return GraphSpec(model, example, kind, ("output",), {})
    masked = type(model).__name__.endswith("ForMaskedLM")
    outputs = ("logits", "last_hidden_state") if masked else _OUTPUTS.get(kind, ("last_hidden_state",))
    if kind == "image_classification":
        if not isinstance(example, torch.Tensor):
            example = example.get("pixel_values") if isinstance(example, dict) else None
            if example is None:
                raise NetslimError(f"ONNX export of {type(model).__name__}: example inputs need pixel_values.")
    else:
        example = text_example(example, type(model).__name__)
    wrapper = ImageGraphForward if kind == "image_classification" else GraphForward
    return GraphSpec(wrapper(model, kind, masked), example, kind, outputs, hf_config(model))


def kv_layout(model: nn.Module) -> tuple[int, int, int]:
    """``(layers, kv heads, head dim)`` of a causal LM's KV cache, from its config."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, kv_heads, head_dim


def kv_names(layers: int) -> tuple[list[str], list[str]]:
    """Graph names of the past inputs and present outputs: key then value, layer by layer."""
    parts = [f"{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return [PAST_PREFIX + p for p in parts], [PRESENT_PREFIX + p for p in parts]


def decoder_spec(model: nn.Module, example: Any, kind: str) -> GraphSpec:
    """:class:`GraphSpec` of :class:`CachedGraphForward`: traced on the example's ids after a past
    of 2 positions (zeros), mask of ones, positions counted on from the past."""
    who = type(model).__name__
    family = getattr(getattr(model, "config", None), "model_type", None)
    if kind != "causal_lm" or family not in KV_CACHE_FAMILIES:
        what = f"model kind {kind!r}" if kind != "causal_lm" else f"model type {family!r}"
        raise NetslimError(
            f"ONNX export of {who} with kv_cache: {what} is not supported; a KV-cache decoder step exports for "
            f"causal LMs of model type {', '.join(KV_CACHE_FAMILIES)} (export without kv_cache for the others)."
        )
    ids = text_example(example, who)["input_ids"]
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise NetslimError(
            f"ONNX export of {who} with kv_cache: example input_ids must be (batch, tokens) with at least 2 "
            f"tokens; got shape {list(ids.shape)}."
        )
    layers, kv_heads, head_dim = kv_layout(model)
    (b, t), past_len = ids.shape, 2
    past_names, present_names = kv_names(layers)
    example = {
        "input_ids": ids,
        "attention_mask": torch.ones(b, past_len + t, dtype=torch.long),
        "position_ids": torch.arange(past_len, past_len + t).expand(b, t).contiguous(),
        **{n: torch.zeros(b, kv_heads, past_len, head_dim) for n in past_names},
    }
    batch, seq = ("batch", 1), ("sequence", 1)
    dims = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: ("total_sequence", 1)},
        "position_ids": {0: batch, 1: seq},
        **{n: {0: batch, 2: ("past_sequence", 0)} for n in past_names},
    }
    outputs = ("logits", *present_names)
    return GraphSpec(CachedGraphForward(model), example, kind, outputs, hf_config(model), dims)


def text_example(example: Any, who: str) -> dict[str, torch.Tensor]:
    """``{input_ids, attention_mask}`` from a task's inputs (a mask of ones when absent)."""
    if isinstance(example, torch.Tensor):
        example = {"input_ids": example}
    if not isinstance(example, dict) or "input_ids" not in example:
        raise NetslimError(
            f"ONNX export of {who}: example inputs must hold input_ids; got "
            f"{sorted(example) if isinstance(example, dict) else type(example).__name__}."
        )
    ids = example["input_ids"]
    mask = example.get("attention_mask")
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask}


def hf_config(model: nn.Module) -> dict[str, Any]:
    """The config entries tasks read from a model (labels, channels), JSON-ready."""
    cfg = getattr(model, "config", None)
    out: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, dict):
            value = {str(k): v for k, v in value.items()}
        if isinstance(value, (int, str, dict, list)) and not isinstance(value, bool):
            out[key] = value
    return out


def _is_hf(model: nn.Module) -> bool:
    import sys

    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def reference_outputs(spec: GraphSpec, inputs: Any) -> tuple[torch.Tensor, ...]:
    """The PyTorch outputs the graph must reproduce, for ``inputs`` shaped like the example."""
    module = spec.module
    if isinstance(module, GraphForward):
        inputs = inputs if module.kind == "image_classification" else text_example(inputs, "the model")
    out = module(**inputs) if isinstance(inputs, dict) else module(inputs)
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(out)
    first = out.logits if hasattr(out, "logits") else out[0]
    return (first,)
