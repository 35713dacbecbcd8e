"""The generic graph follows a dense layer written as a matrix product (``x @ self.weight.T + b``,
``x @ W``), as Falcon's ``FalconLinear`` is: its input columns, output rows and the bias added
after are slots, inside an attention core too (fused q|k|v with a bias), so Falcon's heads,
FFN neurons and channels prune. A product of two computed tensors is still not understood: the
units reaching it are kept, and ``skipped`` says so.
"""

from __future__ import annotations

import copy

import pytest
import torch
from structured_helpers import n_params
from torch import nn

import netslim
from netslim.core.trace import export_graph
from netslim.prune.structured import apply_plan, plan_from_keep, shrink_heads
from netslim.prune.structured.generic import structured_graph


def _half(graph, kinds=None):
    return plan_from_keep(
        graph, {g.id: torch.arange(0, g.size, 2) for g in graph.prunable() if kinds is None or g.kind in kinds}
    )


def _check(model, plan, x, out, tmp_path):
    """Masked == shrunk (an identity-preserving plan), fewer parameters, save + load equal."""
    masked = apply_plan(copy.deepcopy(model), plan, "mask")
    shrunk = apply_plan(copy.deepcopy(model), plan, "shrink")
    with torch.no_grad():
        y, y_ref = out(shrunk, x), out(model, x)
        torch.testing.assert_close(y, out(masked, x), atol=1e-5, rtol=1e-4)
    assert y.shape == y_ref.shape and n_params(shrunk) < n_params(model)
    return shrunk


class MatmulMLP(nn.Module):
    """Dense layers as products: ``x @ W1.T + b1`` (weight (out, in)), ``h @ W2`` (weight (in, out))."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(12, 6, generator=g))
        self.b1 = nn.Parameter(torch.randn(12, generator=g))
        self.w2 = nn.Parameter(torch.randn(12, 5, generator=g))
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.relu(torch.relu(x @ self.w1.T + self.b1) @ self.w2))


def test_matrix_products_by_a_parameter_are_dense_layers(tmp_path):
    model, x = MatmulMLP().eval(), torch.randn(4, 6)
    graph = export_graph(model, x)
    slots = {(s.module, s.param, s.dim, s.role) for s in graph.slots}
    # hidden units of w1: its rows, b1, and the rows of w2 (stored (in, out)); w2's outputs: its columns
    assert {
        ("", "w1", 0, "out"),
        ("", "b1", 0, "out"),
        ("", "w2", 0, "in"),
        ("", "w2", 1, "out"),
        ("head", "weight", 1, "in"),
    } <= slots
    assert sorted(g.size for g in graph.prunable()) == [5, 12]
    _check(model, _half(graph), x, lambda m, x: m(x), tmp_path)


def test_a_product_of_two_computed_tensors_is_kept_and_said():
    class Gram(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            h = self.proj(x)
            return self.out(h @ h.transpose(-1, -2) @ h)

    graph = export_graph(Gram().eval(), torch.randn(2, 3, 4))
    assert not graph.prunable()
    assert any("op matmul is not understood" in s["reason"] for s in graph.skipped)


tf = pytest.importorskip("transformers")
FALCON = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def falcon(**kw):
    torch.manual_seed(0)
    model = tf.FalconForCausalLM(tf.FalconConfig(**FALCON, **kw)).eval()
    return model, {"input_ids": torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(1))}


def logits(model, x):
    return model(**x).logits


@pytest.mark.parametrize(
    "kw,heads",
    [
        (dict(new_decoder_architecture=True, num_kv_heads=2), 2),  # GQA: per-group q|q|k|v blocks of one fused matrix
        (dict(new_decoder_architecture=True, num_kv_heads=2, bias=True), 2),  # with the bias added after the product
        (
            dict(new_decoder_architecture=False, multi_query=False, bias=True),
            4,
        ),  # classic multi-head, interleaved q|k|v
    ],
    ids=["gqa", "gqa-bias", "mha-bias"],
)
def test_falcon_heads_ffn_and_channels_prune(kw, heads, tmp_path):
    model, x = falcon(**kw)
    graph = structured_graph(model, x)
    assert not graph.skipped
    by_kind = {}
    for g in graph.prunable():
        by_kind.setdefault(g.kind, []).append(g.size)
    assert by_kind == {"head": [heads, heads], "neuron": [128, 128]}
    shrunk = _check(model, _half(graph), x, logits, tmp_path)
    back = netslim.load(netslim.save(shrunk, tmp_path / "falcon.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(logits(back, x), logits(shrunk, x), atol=1e-6, rtol=1e-6)


def test_falcon_multi_query_keeps_its_heads_and_says_why():
    model, x = falcon(new_decoder_architecture=False, multi_query=True)
    before = n_params(model)
    model, report = shrink_heads(model, 0.5, example_inputs=x)
    assert n_params(model) == before
    assert "all heads share their keys and values" in " ".join(s["reason"] for s in report["skipped"])
    graph = structured_graph(model, x)
    assert [g.kind for g in graph.prunable()] == ["neuron", "neuron"]  # the FFN still prunes
