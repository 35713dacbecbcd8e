"""Transformer groups by walking the Hugging Face module structure (no tracing).

Per block, two kinds of groups:

* ``head``: the attention heads. BERT: query/key/value rows and output.dense columns, one
  unit = ``head_dim`` indices. Llama with grouped-query attention: one unit = one key/value
  head *with the query heads that read it* (``num_key_value_groups`` of them), so q_proj
  rows move in slices of ``groups * head_dim`` and k/v rows in slices of ``head_dim``; the
  query-to-kv ratio, which Llama keeps as a module attribute, never changes.
* ``neuron``: the FFN intermediate neurons. BERT: intermediate.dense rows, output.dense
  columns. Llama: gate/up rows, down columns. GPT-2: c_fc columns, c_proj rows (Conv1D
  stores weights as (in, out)).

* GPT-2 (fused q|k|v ``Conv1D``, weight (in, out)): one head is ``head_dim`` columns in each
  of the three thirds of ``c_attn`` (a three-segment layout of one space) and ``head_dim``
  rows of ``c_proj``; the attention's ``num_heads`` and ``split_size`` follow. GPT-2's config
  cannot say it (its head size is ``n_embd / n_head``): pruned heads reload with
  ``netslim.load`` (the attention is a registered module type whose spec carries its head
  count), not with ``from_pretrained``; pruned FFN neurons (``n_inner``) reload with both.

When every block ends with the same count, the model config is updated
(``intermediate_size``, Llama's ``num_attention_heads``/``num_key_value_heads``), so the
result also reloads with ``from_pretrained``; otherwise ``netslim.load`` rebuilds the
per-block shapes from the changed-module specs it stores.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from netslim.core.graph import DependencyGraph, GraphBuilder, Segment

log = logging.getLogger(__name__)


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "model_type")


def _add_linear(b: GraphBuilder, name: str, m: nn.Module, dim_out: bool, layout: tuple[Segment, ...]) -> None:
    """Slots of a Linear (``dim_out``: its output rows carry the units; else its input columns)."""
    if dim_out:
        b.add(f"{name}", "weight", 0, layout)
        if m.bias is not None:
            b.add(name, "bias", 0, layout)
    else:
        b.add(name, "weight", 1, layout, role="in")


def _bert_attention(b: GraphBuilder, name: str, m: nn.Module) -> None:
    sa = m.self
    n, hd = sa.query.out_features // sa.attention_head_size, sa.attention_head_size
    s = b.space(n, f"{name}.self", "head")
    lay = (Segment(s, n, hd),)
    for p in ("query", "key", "value"):
        _add_linear(b, f"{name}.self.{p}", getattr(sa, p), True, lay)
    _add_linear(b, f"{name}.output.dense", m.output.dense, False, lay)


def _llama_attention(b: GraphBuilder, name: str, m: nn.Module) -> None:
    hd, rep = m.head_dim, m.num_key_value_groups
    n_kv = m.k_proj.out_features // hd
    s = b.space(n_kv, name, "head")
    _add_linear(b, f"{name}.q_proj", m.q_proj, True, (Segment(s, n_kv, rep * hd),))
    _add_linear(b, f"{name}.k_proj", m.k_proj, True, (Segment(s, n_kv, hd),))
    _add_linear(b, f"{name}.v_proj", m.v_proj, True, (Segment(s, n_kv, hd),))
    _add_linear(b, f"{name}.o_proj", m.o_proj, False, (Segment(s, n_kv, rep * hd),))


def _ffn(
    b: GraphBuilder, name: str, rows: list[tuple[str, nn.Module]], cols: list[tuple[str, nn.Module]], size: int
) -> None:
    s = b.space(size, name, "neuron")
    lay = (Segment(s, size),)
    for n, m in rows:
        _add_linear(b, n, m, True, lay)
    for n, m in cols:
        _add_linear(b, n, m, False, lay)


def _gpt2_mlp(b: GraphBuilder, name: str, m: nn.Module) -> None:
    # Conv1D: weight (in, out), bias (out,): c_fc's units are its weight *columns*
    size = m.c_fc.nf
    s = b.space(size, name, "neuron")
    lay = (Segment(s, size),)
    b.add(f"{name}.c_fc", "weight", 1, lay)
    b.add(f"{name}.c_fc", "bias", 0, lay)
    b.add(f"{name}.c_proj", "weight", 0, lay, role="in")


def _gpt2_attention(b: GraphBuilder, name: str, m: nn.Module) -> None:
    n, hd = m.num_heads, m.head_dim
    s = b.space(n, name, "head")
    seg = Segment(s, n, hd)
    b.add(f"{name}.c_attn", "weight", 1, (seg, seg, seg))  # columns: q heads | k heads | v heads
    b.add(f"{name}.c_attn", "bias", 0, (seg, seg, seg))
    b.add(f"{name}.c_proj", "weight", 0, (seg,), role="in")
    b.attr(s, name, "num_heads")
    b.attr(s, name, "split_size", hd)  # forward splits c_attn's output into q, k, v by it


def transformer_graph(model: nn.Module, kinds: tuple[str, ...] = ("head", "neuron")) -> DependencyGraph:
    """Head and FFN-neuron groups of a Hugging Face BERT, Llama (GQA) or GPT-2 model."""
    b = GraphBuilder()
    if not _is_hf(model):
        b.skip(type(model).__name__, "not a Hugging Face transformer: use channel pruning (torch.fx graph)")
        return b.build("hf")
    found = False
    for name, m in model.named_modules():
        cls = type(m).__name__
        if cls.endswith("Attention") and hasattr(m, "self") and hasattr(m, "output") and hasattr(m.self, "query"):
            found = True
            if "head" in kinds:
                _bert_attention(b, name, m)
        elif all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "num_key_value_groups")):
            found = True
            if "head" in kinds:
                if isinstance(m.q_proj, nn.Linear):
                    _llama_attention(b, name, m)
                else:
                    b.skip(name, f"q_proj is a {type(m.q_proj).__name__}, not a Linear")
        elif cls == "GPT2Attention":
            found = True
            if "head" in kinds:
                if getattr(m, "is_cross_attention", False) or m.split_size != m.num_heads * m.head_dim:
                    b.skip(name, "GPT-2 cross-attention (separate q_attn) is kept")
                else:
                    _gpt2_attention(b, name, m)
        elif all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj")) and isinstance(m.up_proj, nn.Linear):
            found = True
            if "neuron" in kinds:
                _ffn(
                    b,
                    name,
                    [(f"{name}.gate_proj", m.gate_proj), (f"{name}.up_proj", m.up_proj)],
                    [(f"{name}.down_proj", m.down_proj)],
                    m.up_proj.out_features,
                )
        elif hasattr(m, "intermediate") and hasattr(m, "output") and hasattr(m.intermediate, "dense"):
            found = True
            if "neuron" in kinds:
                _ffn(
                    b,
                    f"{name}.intermediate",
                    [(f"{name}.intermediate.dense", m.intermediate.dense)],
                    [(f"{name}.output.dense", m.output.dense)],
                    m.intermediate.dense.out_features,
                )
        elif cls == "GPT2MLP":
            found = True
            if "neuron" in kinds:
                _gpt2_mlp(b, name, m)
    if not found:
        b.skip(
            type(model).__name__, f"no attention/FFN structure netslim knows in model_type {model.config.model_type!r}"
        )
    return b.build("hf")


def _uniform(counts: list[int]) -> int | None:
    return counts[0] if counts and all(c == counts[0] for c in counts) else None


def hf_fixups(model: nn.Module, graph: DependencyGraph, keep: dict[int, torch.Tensor]) -> tuple[dict, list[dict]]:
    """Config updates and module attributes that go with ``keep`` (for the plan)."""
    config: dict[str, Any] = {}
    attrs: list[dict[str, Any]] = []
    counts: dict[str, list[int]] = {"head": [], "neuron": []}
    for g in graph.groups:
        n = len(keep[g.id]) if g.id in keep else g.size
        if g.kind not in counts or not g.prunable:
            continue
        counts[g.kind].append(n)
        if g.kind == "head" and g.id in keep and graph.kind == "hf":  # the generic graph finds its own attrs
            m = model.get_submodule(g.name)
            if hasattr(m, "attention_head_size"):  # BERT: informative attributes, not used by forward
                attrs += [
                    {"module": g.name, "attr": "num_attention_heads", "value": n},
                    {"module": g.name, "attr": "all_head_size", "value": n * m.attention_head_size},
                ]

    cfg = model.config
    heads, neurons = _uniform(counts["head"]), _uniform(counts["neuron"])
    pruned = [g for g in graph.groups if g.kind == "neuron" and g.id in keep]
    if neurons is not None and pruned:
        for key in ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", "d_ff", "ffn_hidden_size"):
            if getattr(cfg, key, None) == pruned[0].size or (key == "n_inner" and cfg.model_type == "gpt2"):
                config[key] = neurons
                break
    llama_like = hasattr(cfg, "num_key_value_heads") and getattr(cfg, "head_dim", None)
    if heads is not None and llama_like and any(g.id in keep for g in graph.groups if g.kind == "head"):
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        config.update(num_key_value_heads=heads, num_attention_heads=heads * rep, head_dim=cfg.head_dim)
    return config, attrs


def drop_blocks(model: nn.Module, indices: list[int]) -> nn.Module:
    """Remove whole decoder/encoder blocks, renumbering layer indices (KV cache) and the config."""
    layers, owner, attr = block_list(model)
    drop = set(int(i) for i in indices)
    kept = [blk for i, blk in enumerate(layers) if i not in drop]
    setattr(owner, attr, nn.ModuleList(kept))
    for i, blk in enumerate(kept):
        for m in blk.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    cfg = model.config
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(cfg, key) and getattr(cfg, key) is not None:
            setattr(cfg, key, len(kept))
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop]
    return model


def block_list(model: nn.Module) -> tuple[nn.ModuleList, nn.Module, str]:
    """The transformer's list of blocks, with the module holding it and its attribute name:
    ``(blocks, owner, attr)``; a NetslimError when the model has none of the known layouts."""
    for path in ("model.layers", "layers", "encoder.layer", "bert.encoder.layer", "transformer.h", "h"):
        owner_path, _, attr = path.rpartition(".")
        try:
            owner = model.get_submodule(owner_path) if owner_path else model
        except AttributeError:
            continue
        blocks = getattr(owner, attr, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks, owner, attr
    from netslim.core.errors import NetslimError

    raise NetslimError(
        f"Cannot find the block list of a {type(model).__name__} (looked for model.layers, "
        "encoder.layer, transformer.h)."
    )
