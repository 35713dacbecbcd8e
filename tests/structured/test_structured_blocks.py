"""CNN residual blocks removed whole (replaced by the identity): candidates, influence, plan
round trip, recipe step and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from structured_helpers import X, n_params, randomize_bn
from torch import nn

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.serialize import read_description
from netslim.models import build_model
from netslim.prune.structured import (
    PrunePlan,
    apply_plan,
    block_costs,
    drop_residual_blocks,
    replay,
    residual_block_influence,
    residual_blocks,
    shrink_channels,
    total_macs,
)

RESNET20_BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def _silence(block: nn.Module) -> None:
    """Zero a BasicBlock's residual branch: relu(0 + x) = x for the (non-negative) block input,
    so the block is exactly the identity and removing it must not change the output."""
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()


def test_candidates_are_the_identity_shortcut_blocks():
    # downsampling blocks (1x1 conv shortcut, shape changes) are not removable
    assert residual_blocks(build_model("resnet20").eval(), X) == RESNET20_BLOCKS
    mbv2 = build_model("mobilenetv2").eval()
    expected = [n for n, m in mbv2.named_modules() if getattr(m, "use_residual", False)]
    assert expected and residual_blocks(mbv2, X) == expected
    assert residual_blocks(build_model("vgg11bn").eval(), X) == []


def test_a_two_branch_sum_that_does_not_add_the_input_is_not_a_residual_block():
    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.a(x) + self.b(x)

    class Res(TwoBranch):
        def forward(self, x):
            return torch.relu(self.a(x)) + nn.functional.dropout(x, 0.0)  # not an identity shortcut module

    model = nn.Sequential(nn.Conv2d(1, 4, 1), TwoBranch(), Res()).eval()
    assert residual_blocks(model, X) == []


def test_dropping_identity_blocks_is_exact_and_round_trips(tmp_path):
    model = randomize_bn(build_model("resnet20"))
    for name in ("layer1.1", "layer3.2"):
        _silence(model.get_submodule(name))
    with torch.no_grad():
        y_ref = model(X)
    shrunk, report = drop_residual_blocks(copy.deepcopy(model), X, names=["layer1.1", "layer3.2"])
    assert isinstance(shrunk.layer1[1], nn.Identity) and isinstance(shrunk.layer3[2], nn.Identity)
    assert report["params_after"] == n_params(shrunk) < n_params(model)
    assert total_macs(shrunk, X[:1]) < total_macs(model, X[:1])
    with torch.no_grad():
        torch.testing.assert_close(shrunk(X), y_ref, atol=1e-5, rtol=1e-5)
    path = netslim.save(shrunk, tmp_path / "m.safetensors", info={"prune_plans": [report["plan"]]})
    back = netslim.load(path)
    assert isinstance(back.layer1[1], nn.Identity)
    again = replay(copy.deepcopy(model), read_description(path)["info"]["prune_plans"])
    with torch.no_grad():
        torch.testing.assert_close(back(X), shrunk(X), atol=0, rtol=0)
        torch.testing.assert_close(again(X), shrunk(X), atol=0, rtol=0)


def test_influence_ranks_a_silenced_block_first():
    model = randomize_bn(build_model("resnet20"))
    _silence(model.layer2[2])
    influence = residual_block_influence(model, RESNET20_BLOCKS, [X])
    assert influence[RESNET20_BLOCKS.index("layer2.2")] < 1e-5
    assert (influence[[i for i, n in enumerate(RESNET20_BLOCKS) if n != "layer2.2"]] > 1e-3).all()
    _, report = drop_residual_blocks(model, X, 1, batches=[X])
    assert report["dropped"] == ["layer2.2"]


def test_influence_per_ms_removes_slow_blocks_first():
    model = randomize_bn(build_model("resnet20"))
    influence = residual_block_influence(model, RESNET20_BLOCKS, [X])
    most = RESNET20_BLOCKS[int(influence.argmax())]
    # the most influential block, made a million times slower than the rest, has the lowest
    # influence per ms: it goes first; by influence alone it stays
    costs = {n: 1e6 if n == most else 1.0 for n in RESNET20_BLOCKS}
    _, by_ms = drop_residual_blocks(copy.deepcopy(model), X, 1, batches=[X], by="influence_per_ms", costs=costs)
    _, by_inf = drop_residual_blocks(copy.deepcopy(model), X, 1, batches=[X])
    assert by_ms["dropped"] == [most] and by_inf["dropped"] != [most]
    measured = block_costs(model, RESNET20_BLOCKS, X, repeats=3)
    assert set(measured) == set(RESNET20_BLOCKS) and all(0 < v < 1e4 for v in measured.values())
    with pytest.raises(NetslimError, match="costs"):
        drop_residual_blocks(copy.deepcopy(model), X, 1, batches=[X], by="influence_per_ms", costs={"layer1.0": 1.0})
    with pytest.raises(NetslimError, match="by"):
        drop_residual_blocks(copy.deepcopy(model), X, 1, batches=[X], by="flops")


def test_blocks_then_channels_replay_on_the_original(tmp_path):
    model = randomize_bn(build_model("resnet20"))
    pruned, r1 = drop_residual_blocks(copy.deepcopy(model), X, names=["layer1.0", "layer1.2"])
    pruned, r2 = shrink_channels(pruned, X[:1], target_macs=0.6, round_to=4)
    plans = [r1["plan"], r2["plan"]]
    path = netslim.save(pruned, tmp_path / "m.safetensors", info={"prune_plans": plans})
    again = replay(copy.deepcopy(model), read_description(path)["info"]["prune_plans"])
    with torch.no_grad():
        torch.testing.assert_close(again(X), pruned(X), atol=0, rtol=0)
        torch.testing.assert_close(netslim.load(path)(X), pruned(X), atol=0, rtol=0)


def test_recipe_step_layers_on_a_cnn(fmnist_small, tmp_path):
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    model = apply(
        build_model("resnet20"), make_config({"method": "layers", "count": 2, "calibration_samples": 32}), ctx
    )
    assert sum(isinstance(m, nn.Identity) for m in model.modules()) == 2
    note = ctx.notes["layers"][0]
    assert len(note["dropped"]) == 2 and set(note["dropped"]) <= set(RESNET20_BLOCKS)
    model = apply(build_model("resnet20"), make_config({"method": "layers", "indices": [0]}), ctx)
    assert isinstance(model.layer1[0], nn.Identity)
    model = apply(build_model("resnet20"), make_config({"method": "layers", "names": ["layer3.1"]}), ctx)
    assert isinstance(model.layer3[1], nn.Identity)
    # nothing removable: the model passes unchanged and the report says why
    lenet = build_model("lenet300")
    assert apply(lenet, make_config({"method": "layers", "count": 1}), ctx) is lenet
    assert "no residual block" in ctx.skipped[-1]["reason"] and len(ctx.notes["layers"]) == 3


def test_bad_input_names_the_allowed_blocks():
    model = build_model("resnet20").eval()
    with pytest.raises(NetslimError, match="layer1.0"):
        drop_residual_blocks(model, X, names=["layer2.0"])  # a downsampling block
    with pytest.raises(NetslimError, match="count"):
        drop_residual_blocks(model, X, 8, batches=[X])
    with pytest.raises(NetslimError, match="calibration"):
        drop_residual_blocks(model, X, 1)
    with pytest.raises(NetslimError, match="no residual block"):
        drop_residual_blocks(build_model("vgg11bn").eval(), X, names=["features.0"])
    with pytest.raises(NetslimError, match="masks"):
        apply_plan(model, PrunePlan(drop_modules=["layer1.0"]), "mask")
    with pytest.raises(NetslimError):
        apply_plan(build_model("lenet300"), PrunePlan(drop_modules=["layer1.0"]), "shrink")
    with pytest.raises(ValueError, match="exactly one"):
        make_config({"method": "layers", "count": 1, "names": ["layer1.0"]})
    assert residual_blocks(model, X) == RESNET20_BLOCKS  # nothing changed by the failed calls
