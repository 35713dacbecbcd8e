"""Whole sublayers removed from a transformer block (CoFi's attention-layer and FFN-layer masks).

A block keeps its place (and its index, so the KV cache and the layer count stay as they are);
one of its two sublayers computes nothing:

* BERT (post-norm: ``LayerNorm(sublayer(x) + x)``): what is left is the LayerNorm of the
  input. :class:`SkippedBertAttention` replaces ``layer.attention`` (returns ``(LN(x), None)``
  as ``BertAttention`` does); :class:`SkippedBertOutput` replaces ``layer.output`` (``LN(x)``
  of its residual input) and ``layer.intermediate`` becomes ``nn.Identity``. The LayerNorms
  keep their state-dict names (``attention.output.LayerNorm``, ``output.LayerNorm``).
* pre-norm families (Llama, Mistral, Qwen2, GPT-2: ``x + sublayer(norm(x))``): the sublayer
  is a :class:`ZeroBranch` adding nothing to the residual stream.

All three are registered module types, so ``netslim.save`` / ``netslim.load`` rebuild them.
The config cannot say a block without attention: such models reload with ``netslim.load``.
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.serialize import register_module


class _Output(nn.Module):
    """Holds the LayerNorm under BERT's name (``attention.output.LayerNorm``)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)


class SkippedBertAttention(nn.Module):
    """A BERT attention block with every head removed: ``LayerNorm(x)``."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.output = _Output(hidden_size, eps)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.output.LayerNorm(hidden_states), None


class SkippedBertOutput(nn.Module):
    """A BERT FFN output with every neuron removed: ``LayerNorm(residual input)``."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor)


class ZeroBranch(nn.Module):
    """A pre-norm sublayer removed: it adds zeros to the residual stream (``(zeros, None)`` for attention)."""

    def __init__(self, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = bool(returns_tuple)

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        z = torch.zeros_like(x)
        return (z, None) if self.returns_tuple else z


def _ln_kwargs(m) -> dict:
    ln = m.output.LayerNorm if isinstance(m, SkippedBertAttention) else m.LayerNorm
    return {"hidden_size": int(ln.normalized_shape[0]), "eps": float(ln.eps)}


register_module(SkippedBertAttention, _ln_kwargs)
register_module(SkippedBertOutput, _ln_kwargs)
register_module(ZeroBranch, lambda m: {"returns_tuple": m.returns_tuple})


def sublayer_family(block: nn.Module) -> str:
    """'bert' (post-norm attention / intermediate / output), 'llama' (self_attn / mlp) or 'gpt2' (attn / mlp)."""
    if all(hasattr(block, a) for a in ("attention", "intermediate", "output")):
        return "bert"
    if hasattr(block, "self_attn") and hasattr(block, "mlp"):
        return "llama"
    if hasattr(block, "attn") and hasattr(block, "mlp"):
        return "gpt2"
    raise NetslimError(
        f"Cannot remove a whole sublayer of a {type(block).__name__}: netslim knows BERT blocks "
        "(attention / intermediate / output) and pre-norm blocks (self_attn or attn, and mlp)."
    )


def _bert_norm(module: nn.Module) -> nn.LayerNorm:
    return module.output.LayerNorm if hasattr(module, "output") else module.LayerNorm


def skip_attention(block: nn.Module) -> None:
    """Replace the attention sublayer of ``block`` (in place)."""
    family = sublayer_family(block)
    if family == "bert":
        ln = _bert_norm(block.attention)
        new = SkippedBertAttention(ln.normalized_shape[0], ln.eps).to(ln.weight.device)
        new.output.LayerNorm.load_state_dict(ln.state_dict())
        block.attention = new
    else:
        setattr(block, "self_attn" if family == "llama" else "attn", ZeroBranch(True))


def skip_ffn(block: nn.Module) -> None:
    """Replace the FFN sublayer of ``block`` (in place)."""
    family = sublayer_family(block)
    if family == "bert":
        ln = block.output.LayerNorm
        new = SkippedBertOutput(ln.normalized_shape[0], ln.eps).to(ln.weight.device)
        new.LayerNorm.load_state_dict(ln.state_dict())
        block.output, block.intermediate = new, nn.Identity()
    else:
        block.mlp = ZeroBranch(False)
