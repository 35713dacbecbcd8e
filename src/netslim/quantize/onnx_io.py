"""What an exported ONNX graph takes and returns.

A CNN or any plain module exports as it is: its ``forward`` on one tensor (or keyword tensors).
A Hugging Face model exports through :class:`GraphForward`, a wrapper whose traced forward
takes tensors only and returns tensors only - never the model's ``ModelOutput``, and never a
KV cache (``use_cache=False``: a causal LM's ``DynamicCache`` is what ``torch.export`` cannot
put in a graph):

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim.core.errors import NetslimError

TEXT_INPUTS = ("input_ids", "attention_mask")
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


def graph_module(model: nn.Module, example: Any) -> GraphSpec:
    """The module and example to trace for ``model`` (see the module docstring)."""
    from netslim.train.object_tasks import model_kind

    kind = model_kind(model)
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
