"""Structured pruning that physically shrinks models (recipe methods in brackets).

* :func:`netslim.core.graph.trace_graph`: coupled-channel groups of a traceable CNN;
  :func:`transformer_graph`: attention-head and FFN-neuron groups of a Hugging Face model;
* :func:`group_scores` (l1, l2, l2_bn, bn_scale, taylor, activation, random, or a group criterion
  registered with :func:`netslim.prune.register_criterion`) and :func:`choose_keep`
  (global / uniform / per-layer ratios, minimum keep ratio, rounding to multiples);
* :class:`PrunePlan` / :func:`apply_plan` (``mode="mask"`` or ``"shrink"``) / :func:`replay`;
* the methods (recipe steps; in Python ``fn(model, data=None, **options) -> model``, made by
  :func:`netslim.api.method_function`, the step's notes on ``netslim.report_of(model)``):
  :func:`prune_channels` [channels], :func:`prune_heads` [heads], :func:`prune_ffn` [ffn],
  :func:`drop_layers` [layers], :func:`prune_width` [width];
* their building blocks, one pass without fine-tuning, ``(model, report)``: :func:`shrink_channels`
  (CNN channels, on example inputs), :func:`shrink_heads`, :func:`shrink_ffn`,
  :func:`drop_transformer_blocks`, CNN residual blocks: :func:`drop_residual_blocks`;
  :func:`shrink_width`: the hidden size (residual stream) of a transformer.
"""

from __future__ import annotations

from torch import nn

from netslim.core.serialize import register_plan_replay

from .blocks import block_costs, drop_residual_blocks, residual_block_influence, residual_blocks
from .channels import plan_channels, shrink_channels, total_macs
from .hf import transformer_graph
from .importance import group_scores
from .plan import PrunePlan, apply_plan, plan_from_keep
from .select import choose_keep
from .steps import (
    ChannelsConfig,
    FFNConfig,
    HeadsConfig,
    LayersConfig,
    WidthConfig,
    drop_layers,
    prune_channels,
    prune_ffn,
    prune_heads,
    prune_width,
)
from .transformer import block_influence, drop_transformer_blocks, plan_transformer, shrink_ffn, shrink_heads
from .width import WIDTH_RULES, plan_width, shrink_width


def replay(model: nn.Module, plans: list[dict], mode: str = "shrink") -> nn.Module:
    """Apply the prune plans stored in an artifact's ``info["prune_plans"]`` to a fresh original model."""
    for p in plans:
        apply_plan(model, PrunePlan.from_dict(p), mode)
    return model


def _replay_records(model: nn.Module, records: list[dict]) -> nn.Module:
    """netslim.load: the plans a saved model went through (``netslim_plans``), onto its base."""
    return replay(model, [r["plan"] for r in records])


register_plan_replay(_replay_records)


__all__ = [
    "ChannelsConfig",
    "FFNConfig",
    "HeadsConfig",
    "LayersConfig",
    "PrunePlan",
    "WIDTH_RULES",
    "WidthConfig",
    "apply_plan",
    "plan_width",
    "shrink_width",
    "block_costs",
    "block_influence",
    "choose_keep",
    "drop_layers",
    "drop_residual_blocks",
    "drop_transformer_blocks",
    "group_scores",
    "plan_channels",
    "plan_from_keep",
    "plan_transformer",
    "prune_channels",
    "prune_ffn",
    "prune_heads",
    "prune_width",
    "shrink_channels",
    "shrink_ffn",
    "shrink_heads",
    "replay",
    "residual_block_influence",
    "residual_blocks",
    "total_macs",
    "transformer_graph",
]
