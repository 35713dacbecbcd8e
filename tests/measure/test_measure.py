import torch
from torch import nn

import netslim
from netslim.core.masks import set_mask
from netslim.measure import (
    count_nonzero,
    count_params,
    interleaved_latency,
    layer_table,
    macs_per_layer,
    measure_latency,
    model_summary,
)
from netslim.models import build_model


def test_macs_lenet300_and_lenet5_by_hand():
    assert (
        sum(macs_per_layer(build_model("lenet300"), torch.zeros(1, 1, 28, 28)).values())
        == 784 * 300 + 300 * 100 + 100 * 10
    )
    m = macs_per_layer(build_model("lenet5"), torch.zeros(2, 1, 28, 28))
    assert m["conv1"] == 2 * 20 * 24 * 24 * 25
    assert m["conv2"] == 2 * 50 * 8 * 8 * 20 * 25
    assert m["fc1"] == 2 * 800 * 500


def test_grouped_conv_macs():
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4))
    assert macs_per_layer(model, torch.zeros(1, 8, 10, 10))["0"] == 16 * 10 * 10 * (8 // 4) * 9
    dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8))
    assert macs_per_layer(dw, torch.zeros(1, 8, 10, 10))["0"] == 8 * 10 * 10 * 9


def test_params_and_nonzeros_count_masks():
    model = build_model("lenet300")
    total = count_params(model)
    assert total == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    mask = torch.zeros(300, 784, dtype=torch.bool)
    mask[:, :100] = True
    set_mask(model.fc1, mask)
    assert count_params(model) == total  # the mask buffer is not a parameter
    assert count_nonzero(model) == total - 300 * 684 - int((model.fc1.bias == 0).sum())
    rows = {r.name: r for r in layer_table(model, torch.zeros(1, 1, 28, 28))}
    assert rows["fc1"].nonzero == 300 * 100 + 300 and rows["fc1"].params == 300 * 784 + 300
    assert rows["fc1"].macs == 784 * 300 and rows["fc1"].bits == 32


def test_latency_reports_median_and_threads():
    model = build_model("lenet300")
    t = measure_latency(model, torch.zeros(1, 1, 28, 28), repeats=7, threads=1)
    assert t.repeats == 7 and t.threads == 1 and t.p10_ms <= t.median_ms <= t.p90_ms
    res = interleaved_latency({"a": model, "b": build_model("lenet5")}, torch.zeros(1, 1, 28, 28), rounds=2, repeats=3)
    assert set(res) == {"a", "b"} and all(v > 0 for v in res.values())


def test_summary_size_is_the_real_file_size(fmnist_small, tmp_path):
    model = build_model("lenet300")
    path = netslim.save(model, tmp_path / "m.safetensors")
    s = model_summary(model, fmnist_small, artifact=path, repeats=3)
    assert s["size_bytes"] == path.stat().st_size
    assert s["size_bytes"] > 4 * s["params"]  # fp32 payload plus header
    assert set(s) >= {"accuracy", "params", "nonzero", "macs", "size_bytes", "latency_ms_b1", "latency_ms_bN"}
