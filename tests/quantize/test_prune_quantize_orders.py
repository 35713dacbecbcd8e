"""Issue 21: the prune/quantize orders as steps, their invariants, and the bad inputs they refuse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import netslim
from netslim.core.config import apply
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.patterns import declared_nm
from netslim.models import build_model
from netslim.prune import MagnitudePruneConfig, NMConfig
from netslim.quantize import sparse_codes as sc
from netslim.quantize.sparse_gptq import SparseGPTQConfig, sparse_gptq
from netslim.quantize.sparse_lowbit import SparseQuantizedLinear
from netslim.quantize.weight_only import QuantizedLinear
from netslim.recipe.spec import parse_recipe
from netslim.train.loop import FinetuneConfig


# ------------------------------------------------------------------------- recipe order
@pytest.mark.parametrize(
    "first, then",
    [
        ("ptq_int8", {"method": "magnitude", "sparsity": 0.5}),
        ("qat", {"method": "nm", "n": 2, "m": 4}),
        ("gptq", {"method": "sparsegpt", "sparsity": 0.5}),
        ("sparsegpt_gptq", {"method": "wanda", "sparsity": 0.5}),
    ],
)
def test_pruning_after_a_freezing_quantization_step_is_refused_naming_both(first, then):
    with pytest.raises(NetslimError, match=rf"step 2 \('{then['method']}'\) changes weights after '{first}' froze"):
        parse_recipe({"steps": [{"method": first}, then]})


def test_recipe_pruning_after_quantization_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "q_then_p.yaml"
    bad.write_text("steps:\n  - method: ptq_int8\n  - method: magnitude\n    sparsity: 0.5\n")
    env = {**os.environ, "NETSLIM_PROGRESS": "0", "NETSLIM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netslim.cli",
            "compress",
            str(bad),
            "--model",
            "lenet5",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "step 2 ('magnitude')" in proc.stderr and "'ptq_int8'" in proc.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- N:M invariant
def test_a_step_that_breaks_the_nm_pattern_fails_naming_itself(fmnist_small, tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5")
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    model = apply(model, NMConfig(n=2, m=4), ctx)
    assert declared_nm(model) == {"conv2": (2, 4), "fc1": (2, 4), "fc2": (2, 4)}
    # a new, looser unstructured mask: the 2:4 zeros become trainable again (still zero: passes)
    model = apply(model, MagnitudePruneConfig(sparsity=0.3, scope="layer"), ctx)
    with pytest.raises(
        NetslimError,
        match=r"finetune broke the 2:4 pattern of layer '(conv2|fc1|fc2)': \d+ "
        r"group\(s\) of 4 inputs hold up to [34] non-zeros",
    ):
        apply(model, FinetuneConfig(epochs=1, max_steps=2, batch_size=32, lr=0.5, select_best=False), ctx)


def test_steps_that_keep_the_nm_masks_pass_the_check(tmp_path):
    from netslim.quantize.ptq import PTQInt8Config

    class _Task:
        def calibration_inputs(self, n, seed=0):
            return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    ctx = StepContext(task=_Task(), out_dir=tmp_path)
    model = apply(build_model("lenet5"), NMConfig(n=2, m=4), ctx)
    q = apply(model, PTQInt8Config(calibration_samples=16, batch_size=16), ctx)  # checked inside apply()
    loaded = netslim.load(netslim.save(q, tmp_path / "nm.safetensors"))
    assert (loaded.fc1.layout.n, loaded.fc1.layout.m) == (2, 4)


# ------------------------------------------------------------------ LLM orders, tiny
@pytest.fixture(scope="module")
def calib():
    return torch.randint(0, 200, (8, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("order", ["prune_first", "quantize_first", "joint"])
def test_sparsegpt_gptq_orders_store_sparse_int4(order, calib, tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-llama").eval()
    ids = calib[:2]
    sparse_gptq(model, calib, order=order, sparsity=0.5, bits=4, group_size=32, num_samples=8, seq_len=32, batch_size=4)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(layers) == 14  # 7 Linears x 2 blocks
    for name, layer in layers.items():
        assert float((layer.dequantize_weight() == 0).float().mean()) >= 0.5, name
    with torch.no_grad():
        ref = model(ids).logits
    path = netslim.save(model, tmp_path / "m.safetensors")
    loaded = netslim.load(path)
    stored = [m for m in loaded.modules() if isinstance(m, SparseQuantizedLinear)]
    assert len(stored) == 14 and all(m.storage_bits < 4.5 for m in stored)  # < dense int4 g32 (4.5 bits/weight)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)


def test_sparsegpt_gptq_nm_declares_and_keeps_the_pattern(calib):
    torch.manual_seed(0)
    model = build_model("tiny-llama").eval()
    sparse_gptq(model, calib, order="joint", n=2, m=4, bits=4, group_size=32, num_samples=8, seq_len=32)
    assert len(declared_nm(model)) == 14
    for name in declared_nm(model):
        w = model.get_submodule(name).dequantize_weight()
        assert int(((sc.group_view(w, 4) != 0).sum(1) > 2).sum()) == 0, name


def test_sparsegpt_gptq_needs_pruning():
    with pytest.raises(ValueError, match="without pruning this is the 'gptq' step"):
        SparseGPTQConfig(sparsity=0.0)


def test_hqq_after_pruning_exits_2_naming_the_step(tmp_path):
    """At run time: the step that cannot keep the pruned zeros fails with one line, exit 2."""
    torch.manual_seed(0)
    art = netslim.save(build_model("lenet300").eval(), tmp_path / "lenet300.safetensors")
    recipe = tmp_path / "p_then_hqq.yaml"
    recipe.write_text(
        "dataset: fashion-mnist\nsteps:\n  - method: magnitude\n    sparsity: 0.5\n"
        "  - method: weight_only\n    bits: 4\n    group_size: null\n    rounding: hqq\n"
    )
    env = {**os.environ, "NETSLIM_PROGRESS": "0", "NETSLIM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netslim.cli",
            "compress",
            str(recipe),
            "--model",
            str(art),
            "--limit",
            "64",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and len(lines) <= 3, proc.stderr
    assert "step 2 (weight_only)" in proc.stderr and "is pruned" in proc.stderr
