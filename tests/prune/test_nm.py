"""N:M pruning: exactly N kept in every block of M consecutive input weights."""

import pytest
import torch
import yaml
from torch import nn

from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.masks import get_mask
from netslim.prune import NMConfig, nm_mask, nm_prune, prunable_layers


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 10),
    )


def blocks(w: torch.Tensor, m: int) -> torch.Tensor:
    """Independent oracle layout: for a conv, blocks run along in-channels at each (kh, kw)."""
    if w.dim() == 4:
        out_, in_, kh, kw = w.shape
        return torch.stack(
            [w[o, i : i + m, y, x] for o in range(out_) for y in range(kh) for x in range(kw) for i in range(0, in_, m)]
        )
    return torch.stack([w[o, i : i + m] for o in range(w.shape[0]) for i in range(0, w.shape[1], m)])


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_every_block_keeps_exactly_n_largest(n, m):
    model = small_cnn()
    before = {name: mod.weight.detach().clone() for name, mod in prunable_layers(model)}
    nm_prune(model, n=n, m=m)
    for name, mod in prunable_layers(model):
        if mod.weight.shape[1] % m:
            assert get_mask(mod) is None, name  # skipped: input dim not a multiple of m
            continue
        kept = blocks(get_mask(mod), m)  # (blocks, m)
        assert (kept.sum(1) == n).all(), name
        mags = blocks(before[name].abs(), m)
        smallest_kept = torch.where(kept, mags, torch.inf).min(1).values
        largest_dropped = torch.where(~kept, mags, -torch.inf).max(1).values
        assert (smallest_kept >= largest_dropped).all(), name


def test_nm_mask_on_known_values():
    w = torch.tensor([[1.0, -5.0, 3.0, 0.5, 9.0, 8.0, -7.0, 6.0]])
    assert nm_mask(w.abs(), 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]


def test_skipped_layers_are_reported(fmnist_small, tmp_path):
    model = small_cnn()
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    apply(model, make_config({"method": "nm", "n": 2, "m": 8}), ctx)
    skipped = {s["name"]: s["reason"] for s in ctx.skipped}
    assert "0" in skipped and "not a multiple of m=8" in skipped["0"]  # Conv2d(1, ...)
    assert "7" in skipped  # Linear(12, 10): 12 % 8 != 0
    assert ctx.notes["nm"]["layers"]["5"]["sparsity"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"n": 5, "m": 4}, "'n' must be <= 'm'"),
        ({"n": 0}, "'n'"),
        ({"m": 0}, "'m'"),
        ({"criterion": "hessian"}, "criterion"),
    ],
)
def test_bad_input_names_the_field(bad, field):
    with pytest.raises(NetslimError, match=field):
        make_config({"method": "nm", **bad})
    with pytest.raises(NetslimError, match=field):
        nm_prune(small_cnn(), **bad)


def test_no_layer_divisible_raises():
    with pytest.raises(NetslimError, match="divisible by 'm'=16"):
        nm_prune(nn.Sequential(nn.Linear(6, 3)), n=2, m=16)


def test_config_round_trips_through_yaml():
    cfg = NMConfig(n=4, m=8, exclude="type:Conv2d")
    assert make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
