"""Coverage, one architecture each: GPT-2 (fused q|k|v Conv1D), a ViT-style patch-embedding
transformer, a DenseNet-style concatenation block, a grouped conv (its own channels pruned alike
in every group).

Each: ~50 % of every prunable group removed -> forward works, output shape unchanged, params
fewer, ``netslim.save``/``netslim.load`` round-trip, masked model == shrunk model (1e-5).
The hand-written models are registered as zoo models here (as a user would) so that the
artifact knows how to build their base.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from structured_helpers import X, check_mask_equals_shrink, half_plan, n_params, randomize_bn
from torch import nn

import netslim
from netslim.core.errors import NetslimError
from netslim.core.graph import check_attention_leaf, trace_graph
from netslim.core.serialize import register_module
from netslim.models import build_model
from netslim.models.registry import ModelEntry, register_model
from netslim.prune.structured import (
    PrunePlan,
    apply_plan,
    plan_from_keep,
    plan_transformer,
    shrink_channels,
    shrink_ffn,
    shrink_heads,
    transformer_graph,
)

IDS = {"input_ids": torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))}


# ------------------------------------------------------------------------------ GPT-2
def _logits(m, x):
    return m(**x).logits


def test_gpt2_heads_slice_fused_qkv_per_third(tmp_path):
    model = build_model("tiny-gpt2")  # 4 heads of 16, n_embd 64
    graph = transformer_graph(model, kinds=("head",))
    assert len(graph.prunable()) == 2 and not graph.skipped
    plan = plan_from_keep(graph, {g.id: torch.tensor([1, 3]) for g in graph.prunable()})
    c_attn = next(e for e in plan.entries if e["module"] == "transformer.h.0.attn.c_attn" and e["param"] == "weight")
    heads = [list(range(h * 16, h * 16 + 16)) for h in (1, 3)]
    assert c_attn["dim"] == 1 and c_attn["keep"] == [i + third * 64 for third in range(3) for h in heads for i in h]
    shrunk = check_mask_equals_shrink(model, plan, IDS, tmp_path, _logits)
    attn = shrunk.transformer.h[0].attn
    assert (attn.num_heads, attn.split_size, attn.head_dim) == (2, 32, 16)
    assert attn.c_attn.weight.shape == (64, 96) and attn.c_proj.weight.shape == (32, 64)


def test_gpt2_heads_and_ffn_reload(tmp_path):
    tf = pytest.importorskip("transformers")
    model = build_model("tiny-gpt2")
    ref = copy.deepcopy(model)
    model, r_ffn = shrink_ffn(model, 0.5, criterion="l2")
    assert r_ffn["from_pretrained"] and model.config.n_inner == 128
    # FFN only: GPT-2's config says it (n_inner), so from_pretrained reloads it
    model.save_pretrained(tmp_path / "ffn")
    back = tf.GPT2LMHeadModel.from_pretrained(tmp_path / "ffn", local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(_logits(back, IDS), _logits(model, IDS), atol=1e-5, rtol=1e-5)
    # heads: GPT-2's config cannot say them (head size = n_embd / n_head); netslim.load can
    model, r_heads = shrink_heads(model, 0.5, criterion="l2")
    assert not r_heads["from_pretrained"] and model.transformer.h[1].attn.num_heads == 2
    y = _logits(model, IDS)
    # the blocks lose about half their weights (the 1024 x 64 position table is not prunable)
    assert y.shape == _logits(ref, IDS).shape and n_params(model.transformer.h) < 0.6 * n_params(ref.transformer.h)
    back = netslim.load(netslim.save(model, tmp_path / "g.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(_logits(back, IDS), y, atol=1e-6, rtol=1e-6)
    assert back.transformer.h[0].attn.split_size == 32


# ------------------------------------------------------------------------------ ViT
class Attention(nn.Module):
    """timm-style: fused qkv, heads from ``num_heads``/``head_dim``, output width from the heads."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim or dim // num_heads
        self.qkv = nn.Linear(dim, 3 * self.num_heads * self.head_dim)
        self.proj = nn.Linear(self.num_heads * self.head_dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, t, -1))


class HardCodedAttention(Attention):
    """The same weights, but the output width is hard-coded: removing a head breaks it."""

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, attn_cls=Attention):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attn_cls(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """Conv stem -> patch-embedding conv -> tokens (B, T, D) -> 2 pre-norm blocks -> mean -> head."""

    def __init__(self, dim: int = 32, heads: int = 4, hardcoded: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.patch = nn.Conv2d(16, dim, 7, stride=7)  # 28x28 -> 4x4 = 16 tokens
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        cls = HardCodedAttention if hardcoded else Attention
        self.blocks = nn.ModuleList([Block(dim, heads, cls) for _ in range(2)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(self.stem(x)).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(1))


register_model(ModelEntry("test-tiny-vit", TinyViT, "classification", "fashion-mnist", "test ViT"))
register_module(Attention, lambda m: {"dim": m.proj.out_features, "num_heads": m.num_heads, "head_dim": m.head_dim})


def test_vit_channels_ffn_and_heads(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_model("test-tiny-vit"))
    graph = trace_graph(model, X)
    kinds = {g.name: g.kind for g in graph.prunable()}
    # the conv stem's channels, each block's heads and FFN neurons; nothing else
    assert kinds == {
        "stem.0": "channel",
        "blocks.0.attn": "head",
        "blocks.0.fc1": "channel",
        "blocks.1.attn": "head",
        "blocks.1.fc1": "channel",
    }
    # the residual stream (patch conv -> tokens -> every block -> norm) is locked: LayerNorm
    stream = next(g for g in graph.groups if g.name == "patch")
    assert stream.locked and any(s.module == "blocks.1.attn.proj" for s, _ in stream.slots)
    assert any(s.module == "blocks.1.norm2" for s, _ in stream.slots)
    plan = half_plan(graph)
    assert {a["attr"]: a["value"] for a in plan.attrs if a["module"] == "blocks.0.attn"} == {"num_heads": 2}
    shrunk = check_mask_equals_shrink(model, plan, X, tmp_path)
    assert shrunk.blocks[0].attn.qkv.out_features == 3 * 2 * 8 and shrunk.blocks[0].fc1.out_features == 32
    assert shrunk.stem[0].out_channels == 8 and shrunk.patch.in_channels == 8


def test_vit_prune_channels_end_to_end():
    model = randomize_bn(build_model("test-tiny-vit"))
    y = model(X)
    model, report = shrink_channels(model, X, ratio=0.5, scope="uniform")
    assert model(X).shape == y.shape and report["params_after"] < report["params_before"]
    assert {g["kind"] for g in report["groups"]} == {"channel", "head"}


def test_attention_whose_forward_ignores_num_heads_is_skipped():
    model = TinyViT(hardcoded=True).eval()
    assert check_attention_leaf(model.blocks[0].attn) is not None
    graph = trace_graph(model, X)
    assert not any(g.kind == "head" for g in graph.prunable())
    assert any(s["name"] == "blocks.0.attn" and "attention heads kept" in s["reason"] for s in graph.skipped)
    # what is left (the stem, the FFNs) still prunes, and the model still runs
    plan = half_plan(graph)
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    with torch.no_grad():
        assert shrunk(X).shape == model(X).shape


# ------------------------------------------------------------------------- DenseNet
class DenseNetBlock(nn.Module):
    """DenseNet-style: BN-ReLU-conv layers, each seeing the concatenation of all earlier maps."""

    def __init__(self, growth: int = 6):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.l1 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, growth, 3, padding=1))
        self.l2 = nn.Sequential(nn.BatchNorm2d(8 + growth), nn.ReLU(), nn.Conv2d(8 + growth, growth, 3, padding=1))
        self.trans = nn.Sequential(nn.BatchNorm2d(8 + 2 * growth), nn.ReLU(), nn.Conv2d(8 + 2 * growth, 12, 1))
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x0 = self.stem(x)
        x1 = torch.cat([x0, self.l1(x0)], 1)
        x2 = torch.cat([x1, self.l2(x1)], 1)
        return self.fc(self.trans(x2).mean((2, 3)))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped, not depthwise
        self.c2 = nn.Conv2d(8, 12, 1)
        self.bn2 = nn.BatchNorm2d(12)
        self.c3 = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = self.g(torch.relu(self.bn1(self.c1(x))))
        x = self.c3(torch.relu(self.bn2(self.c2(x))))
        return self.fc(x.mean((2, 3)))


register_model(ModelEntry("test-densenet-block", DenseNetBlock, "classification", "fashion-mnist", "test"))
register_model(ModelEntry("test-grouped", GroupedNet, "classification", "fashion-mnist", "test"))


def test_densenet_concat_block(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_model("test-densenet-block"))
    graph = trace_graph(model, X)
    assert not graph.skipped
    stem = next(g for g in graph.groups if g.name == "stem")
    # stem's channels are read by l1, l2 and trans at offset 0 of each concatenation
    consumers = {s.module for s, _ in stem.slots if s.role == "in"}
    assert consumers == {"l1.2", "l2.2", "trans.2"}
    l1 = next(g for g in graph.groups if g.name == "l1.2")
    plan = plan_from_keep(graph, {stem.id: torch.arange(8), l1.id: torch.tensor([0, 5])})
    keep = {(e["module"], e["param"]): e["keep"] for e in plan.entries}
    assert keep[("trans.2", "weight")] == list(range(8)) + [8, 13] + list(range(14, 20))  # offsets 8 and 14
    assert keep[("l2.0", "running_var")] == list(range(8)) + [8, 13]
    plan = half_plan(graph)
    shrunk = check_mask_equals_shrink(model, plan, X, tmp_path)
    assert shrunk.trans[2].in_channels == 4 + 3 + 3 and shrunk.fc.in_features == 6


def test_grouped_conv_prunes_its_channels_alike_in_every_group(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_model("test-grouped"))
    graph = trace_graph(model, X)
    assert not graph.skipped
    # groups=2: c1's channels (g's input) and g's own channels are pruned as positions within
    # each half, so both groups of g keep the same number of input and output channels
    sizes = {g.name: g.size for g in graph.prunable()}
    assert sizes == {"c1": 4, "g": 4, "c2": 12, "c3": 6}
    plan = half_plan(graph)
    keep = {(e["module"], e["param"], e["dim"]): e["keep"] for e in plan.entries}
    kept_g = keep[("g", "weight", 0)]
    assert len(kept_g) == 4 and [i - 4 for i in kept_g[2:]] == kept_g[:2]  # the same positions in both halves
    assert keep[("g", "weight", 1)] == [i for i in keep[("c1", "weight", 0)] if i < 4]  # positions within a group
    shrunk = check_mask_equals_shrink(model, plan, X, tmp_path)
    assert (shrunk.g.in_channels, shrunk.g.out_channels, shrunk.g.groups) == (4, 4, 2)
    assert shrunk.g.weight.shape == (4, 2, 3, 3) and shrunk.c1.out_channels == 4 and shrunk.c2.in_channels == 4


def test_plan_attrs_round_trip_as_json():
    model = build_model("tiny-gpt2")
    plan, _ = plan_transformer(model, "head", 0.5)
    again = PrunePlan.from_dict(plan.to_dict())
    assert again.attrs == plan.attrs and {a["attr"] for a in plan.attrs} == {"num_heads", "split_size"}


def test_layernorm_features_are_locked_but_the_ffn_behind_it_prunes():
    class LNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.b, self.c = nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 10), nn.Linear(10, 3)

        def forward(self, x):
            return self.c(torch.relu(self.b(self.ln(self.a(x)))))

    model = LNNet().eval()
    x = torch.randn(4, 8)
    graph = trace_graph(model, x)
    a = next(g for g in graph.groups if g.name == "a")
    assert "LayerNorm" in a.locked and ("ln", "weight", 0) in {(s.module, s.param, s.dim) for s, _ in a.slots}
    plan = half_plan(graph)
    assert [g["name"] for g in plan.groups] == ["b"]
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    masked = apply_plan(copy.deepcopy(model), plan, "mask")
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), masked(x), atol=1e-5, rtol=1e-5)


def test_plan_json_is_compact_and_decodes_exactly():
    """Shared kept-index lists are stored once, increasing ones as bitmasks; both decode to the
    exact entries, and plans written with inline lists (older artifacts) still load."""
    model = build_model("resnet20")
    graph = trace_graph(model, X[:1])
    plan = half_plan(graph)
    d = plan.to_dict()
    assert len(d["keeps"]) < len(d["entries"]) and all(isinstance(k, str) for k in d["keeps"])
    again = PrunePlan.from_dict(json.loads(json.dumps(d)))
    assert again.entries == plan.entries
    inline = {**d, "entries": plan.entries}
    del inline["keeps"]
    assert PrunePlan.from_dict(inline).entries == plan.entries
    odd = PrunePlan(
        [
            {"module": "fc", "param": "weight", "dim": 1, "keep": [3, 1, 200, 0]},
            {"module": "fc", "param": "bias", "dim": 0, "keep": []},
            {"module": "fc", "param": "x", "dim": 0, "keep": [0, 7, 8, 1000]},
        ]
    )
    assert PrunePlan.from_dict(odd.to_dict()).entries == odd.entries
    with pytest.raises(NetslimError, match="keep list 5"):
        PrunePlan.from_dict({"keeps": ["f"], "entries": [{"module": "fc", "param": "weight", "dim": 0, "keep": 5}]})
    with pytest.raises(NetslimError, match="hex bitmask"):
        PrunePlan.from_dict({"keeps": ["xyz"], "entries": [{"module": "fc", "param": "weight", "dim": 0, "keep": 0}]})
