"""What a loaded sparse int4 layer keeps in memory, and what loading and decoding it allocate.

SmolLM2 SparseGPT 50 % + GPTQ w4, stored sparse, was 7.7 % smaller on disk than dense int4 but
measured larger when loaded (+179-192 vs +177 MiB). The layers themselves hold only the format
(one uint8 buffer: bitmask + packed non-zero codes; fp16 scales and zero points); the excess was
the load-time check unpacking every bitmask to a byte and a bool per weight (kept by glibc's
heap), and the file-mapped tensors being resident only where read (the bitmasks, not yet the
dense codes). These tests pin what the layer holds, that the check unpacks nothing, and that
the leaner decode gives the same codes and outputs bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import netslim
from netslim.models.hf_tiny import tiny_decoder
from netslim.quantize import sparse_codes as sc
from netslim.quantize.sparse_lowbit import SparseQuantizedLinear, dense_layer
from netslim.quantize.weight_only import QuantizedLinear

pytest.importorskip("transformers")

VOCAB, GROUP = 128, 32


def _pruned_int4_llama() -> torch.nn.Module:
    """A seeded random Llama (2 blocks), every block Linear 50 % pruned by magnitude per row and
    quantized to 4-bit RTN with integer zero points, group 32 (pruned weights at the zero point)."""
    model = tiny_decoder("Llama", 0, vocab_size=VOCAB, tie_word_embeddings=True)
    for name, mod in list(model.model.layers.named_modules()):
        if isinstance(mod, torch.nn.Linear):
            with torch.no_grad():
                w = mod.weight
                cut = w.abs().kthvalue(w.shape[1] // 2, dim=1, keepdim=True).values
                w[w.abs() <= cut] = 0.0  # exactly half of every row
            model.model.layers.get_submodule(name.rpartition(".")[0]).register_module(
                name.rpartition(".")[2], QuantizedLinear.from_float(mod, bits=4, group_size=GROUP)
            )
    return model


def _layer_bytes(layer: torch.nn.Module) -> int:
    """Bytes of every tensor the layer keeps: parameters, buffers and any tensor attribute (a cache)."""
    tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
    tensors += [v for v in vars(layer).values() if isinstance(v, torch.Tensor)]
    return sum({t.data_ptr(): t.nbytes for t in tensors}.values())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _pruned_int4_llama()
    path = netslim.save(model, tmp_path_factory.mktemp("sparse_int4") / "m.safetensors")
    return model, path


IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def test_loaded_sparse_int4_layers_hold_fewer_bytes_than_dense_int4_at_half_sparsity(saved):
    model, path = saved
    loaded = netslim.load(path)
    sparse = {n: m for n, m in loaded.named_modules() if isinstance(m, SparseQuantizedLinear)}
    assert len(sparse) == 2 * 7  # every block Linear stored sparse
    before = {n: _layer_bytes(m) for n, m in sparse.items()}
    with torch.no_grad():
        loaded(input_ids=IDS)
    for name, layer in sparse.items():
        dense = dense_layer(layer)
        assert type(dense) is QuantizedLinear
        assert _layer_bytes(layer) == before[name]  # a forward caches nothing (decoded per call)
        assert {k for k, _ in layer.named_buffers(recurse=False)} == {"weight_sparse", "scales", "zeros"}
        assert layer.weight_sparse.dtype == torch.uint8
        rows, cols = layer.out_features, layer.in_features
        # bitmask + the non-zero 4-bit codes + fp16 scales and zero points, nothing else
        fmt = rows * cols // 8 + layer.nnz // 2 + 2 * 2 * rows * cols // GROUP
        assert before[name] == fmt
        assert before[name] < _layer_bytes(dense), name  # 0.5 vs 0.625 bytes per weight at 50 %


def test_loaded_sparse_model_is_bit_exact_and_its_outputs_unchanged(saved):
    model, path = saved
    loaded = netslim.load(path)
    for name, mod in model.named_modules():
        if isinstance(mod, QuantizedLinear):
            back = loaded.get_submodule(name)
            assert isinstance(back, SparseQuantizedLinear), name
            assert torch.equal(back.codes(), mod.codes()) and torch.equal(back.scales, mod.scales)
            assert torch.equal(back.zeros, mod.zeros)
            x = torch.randn(3, mod.in_features, generator=torch.Generator().manual_seed(2))
            assert torch.equal(back(x), mod(x))  # the dense layer's output, bit for bit
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS)[0], model(input_ids=IDS)[0])


def test_the_load_check_counts_bitmask_bits_without_unpacking_them(saved, monkeypatch):
    _, path = saved

    def unpacked(*a, **k):
        raise AssertionError("the load-time check unpacked a bitmask")

    monkeypatch.setattr(sc, "unpack_bits", unpacked)
    loaded = netslim.load(path)
    assert any(isinstance(m, SparseQuantizedLinear) for m in loaded.modules())


def _index_put_decode(index, values, fill, layout, bits, shape, nnz):
    """The bitmask decode as it was (bool-mask assignment, which builds an int64 index): the reference."""
    out = fill.expand(shape).clone()
    flags = ((index.reshape(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)
    out[flags[: int(torch.tensor(shape).prod())].bool().reshape(shape)] = sc._unpack_stream(values, bits, nnz)
    return out


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 40),
    bits=st.integers(2, 8),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_bitmask_decode_and_count_equal_the_unpacked_reference(rows, cols, bits, keep, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (rows, cols)
    fill = torch.randint(0, 2**bits, (rows, 1), generator=g).to(torch.uint8).expand(shape)
    codes = torch.randint(0, 2**bits, shape, generator=g).to(torch.uint8)
    codes = torch.where(torch.rand(shape, generator=g) < keep, codes, fill)
    layout = sc.Layout("mask")
    index, values, nnz = sc.encode(codes, fill, layout, bits)
    decoded = sc.decode(index, values, fill, layout, bits, shape, nnz)
    assert torch.equal(decoded, codes) and torch.equal(
        decoded, _index_put_decode(index, values, fill, *[layout, bits, shape, nnz])
    )
    numel = rows * cols
    assert sc.count_bits(index, numel) == nnz == int(sc.unpack_bits(index, numel).sum())
    noisy = index.clone()
    if numel % 8:  # padding bits past the last flag do not count
        noisy[-1] |= 0xFF << (numel % 8) & 0xFF
    assert sc.count_bits(noisy, numel) == nnz
    for count in range(0, numel + 1, max(1, numel // 7)):  # every prefix length, partial last byte included
        assert sc.count_bits(index, count) == int(sc.unpack_bits(index, count).sum())
