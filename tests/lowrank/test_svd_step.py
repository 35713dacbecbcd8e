"""The ``svd`` step: config validation and YAML round-trip, budgets on real models, skips."""

from __future__ import annotations

import pytest
import torch
import yaml

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.lowrank import LowRankLinear, SVDConfig, TuckerConv2d, svd_compress
from netslim.measure import count_params, macs_per_layer

X1 = torch.zeros(1, 1, 28, 28)


def test_config_round_trips_through_yaml():
    cfg = SVDConfig(
        select="budget", target=0.5, target_metric="macs", data_aware=True, exclude=("fc3",), ranks={"fc1": 10}
    )
    back = make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert back == cfg


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"select": "budget"}, "needs 'target'"),
        ({"select": "rank"}, "needs 'rank' or 'ranks'"),
        ({"select": "budget", "target": 1.5}, "'target'"),
        ({"select": "budget", "target": 0.5, "conv_scheme": "tucker"}, "tucker"),
        ({"data_aware": True, "conv_scheme": "spatial"}, "data_aware needs conv_scheme 'channel'"),
        ({"energy": 0}, "'energy'"),
    ],
)
def test_invalid_configs_name_the_field(bad, match):
    with pytest.raises(NetslimError, match=match):
        make_config({"method": "svd", **bad})


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_budget_is_met_on_lenet300(tiny_mlp, metric):
    def total(m):
        return count_params(m) if metric == "params" else sum(macs_per_layer(m, X1).values())

    before = total(tiny_mlp)
    svd_compress(tiny_mlp, X1, select="budget", target=0.5, target_metric=metric)
    after = total(tiny_mlp)
    assert after <= 0.5 * before
    # Within one rank unit of the target (fc1 costs 784 + 300 per rank).
    assert 0.5 * before - after < 784 + 300
    assert isinstance(tiny_mlp.fc1, LowRankLinear)


def test_budget_below_rank_one_raises(tiny_mlp):
    with pytest.raises(NetslimError, match="budget cannot be met"):
        svd_compress(tiny_mlp, X1, select="budget", target=0.001)


def test_explicit_rank_above_the_matrix_raises_naming_the_layer(tiny_mlp):
    with pytest.raises(NetslimError, match=r"fc2.*\[1, 100\]; got 150"):
        svd_compress(tiny_mlp, X1, select="rank", ranks={"fc2": 150})


def test_layers_that_would_not_shrink_stay_dense_with_a_reason(tiny_mlp, fmnist_small, tmp_path):
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    model = apply(tiny_mlp, SVDConfig(select="rank", rank=80), ctx)
    assert isinstance(model.fc1, LowRankLinear) and model.fc1.rank == 80
    assert isinstance(model.fc2, torch.nn.Linear)  # 300x100: break-even rank 74 < 80
    skipped = {s["name"]: s["reason"] for s in ctx.skipped}
    assert set(skipped) == {"fc2", "fc3"} and "break-even rank 74" in skipped["fc2"]
    assert ctx.notes["svd"]["layers"]["fc1"]["rank"] == 80


def test_data_aware_step_on_a_cnn_round_trips(tiny_cnn, fmnist_small, tmp_path):
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    x = fmnist_small.example_inputs(4)
    model = apply(tiny_cnn, SVDConfig(select="energy", energy=0.95, data_aware=True, calibration_samples=64), ctx)
    assert model(x).shape == (4, 10)
    path = netslim.save(model, tmp_path / "m.safetensors")
    torch.testing.assert_close(netslim.load(path)(x), model.eval()(x))


def test_tucker_step_on_resnet(tmp_path, fmnist_small):
    torch.manual_seed(0)
    model = netslim.build_model("resnet20", width=4).eval()
    x = fmnist_small.example_inputs(2)
    ctx = StepContext(task=fmnist_small, out_dir=tmp_path)
    model = apply(model, SVDConfig(select="rank", rank=2, conv_scheme="tucker", include=("re:layer3.*conv.*",)), ctx)
    assert isinstance(model.layer3[1].conv1, TuckerConv2d)
    assert model(x).shape == (2, 10)
    back = netslim.load(netslim.save(model, tmp_path / "t.safetensors"))
    torch.testing.assert_close(back(x), model(x))


def test_budget_of_the_selected_layers_only(tiny_mlp):
    before = tiny_mlp.fc1.weight.numel() + tiny_mlp.fc2.weight.numel()
    svd_compress(tiny_mlp, X1, select="budget", target=0.7, target_scope="selected", include=("fc1", "fc2"))
    after = sum(count_params(getattr(tiny_mlp, n)) - getattr(tiny_mlp, n).out_features for n in ("fc1", "fc2"))
    assert after <= 0.7 * before and 0.7 * before - after < 784 + 300
