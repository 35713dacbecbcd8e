import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import netslim
from netslim.core.errors import NetslimError
from netslim.core.masks import set_mask
from netslim.core.serialize import read_description
from netslim.core.surgery import replace_module
from netslim.models import build_model, model_names

CNNS = [n for n in model_names() if n in ("lenet300", "lenet5", "resnet20", "mobilenetv2", "vgg11bn")]


@pytest.mark.parametrize("name", CNNS)
def test_zoo_round_trip_is_exact(name, tmp_path):
    torch.manual_seed(0)
    m = build_model(name).eval()
    x = torch.randn(3, 1, 28, 28)
    path = netslim.save(m, tmp_path / "m.safetensors")
    m2 = netslim.load(path)
    assert type(m2) is type(m)
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(m(x), m2(x))


def test_changed_modules_and_masks_round_trip(tmp_path):
    torch.manual_seed(0)
    m = build_model("resnet20")
    replace_module(m, "fc", nn.Sequential(nn.Linear(64, 8, bias=False), nn.Linear(8, 10)))
    replace_module(m, "layer1.0.conv1", nn.Conv2d(16, 16, 3, 1, 1, bias=False))  # same spec: not recorded
    replace_module(m, "layer3.2.conv1", nn.Conv2d(64, 64, 3, 1, 1, bias=True))
    set_mask(m.layer2[0].conv1, torch.rand_like(m.layer2[0].conv1.weight) > 0.5)
    m.eval()
    path = netslim.save(m, tmp_path / "m.safetensors", info={"note": "x"})
    desc = read_description(path)
    assert set(desc["modules"]) == {"fc", "layer3.2.conv1"}
    assert desc["masks"] == ["layer2.0.conv1.weight"] and desc["info"] == {"note": "x"}
    m2 = netslim.load(path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(m(x), m2(x))
    assert torch.equal(m2.layer2[0].conv1.weight, m.layer2[0].conv1.weight)


def test_dtype_is_preserved(tmp_path):
    m = build_model("lenet300").to(torch.bfloat16)
    m2 = netslim.load(netslim.save(m, tmp_path / "m.safetensors"))
    assert m2.fc1.weight.dtype == torch.bfloat16


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    m = build_model("lenet300")
    netslim.save(m, tmp_path / "a.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]

    def fail_midway(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")  # a half-written temp file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr("netslim.core.serialize.save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        netslim.save(m, tmp_path / "b.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_unregistered_module_type_is_a_clear_error(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return x

    m = build_model("lenet300")
    replace_module(m, "relu1", Odd())
    with pytest.raises(NetslimError, match="not a registered module type"):
        netslim.save(m, tmp_path / "m.safetensors")


def test_checkpoint_not_matching_architecture(tmp_path):
    m = build_model("lenet300")
    path = netslim.save(m, tmp_path / "m.safetensors")
    desc = read_description(path)
    tensors = {k: v for k, v in m.state_dict().items() if k != "fc3.bias"}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"netslim": json.dumps(desc)})
    with pytest.raises(NetslimError, match="does not match its architecture"):
        netslim.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("content", [b"", b"garbage bytes that are not safetensors"])
def test_not_an_artifact(tmp_path, content):
    p = tmp_path / "x.safetensors"
    p.write_bytes(content)
    with pytest.raises(NetslimError):
        netslim.load(p)


def test_missing_file_and_plain_safetensors(tmp_path):
    with pytest.raises(NetslimError, match="does not exist"):
        netslim.load(tmp_path / "nope.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(NetslimError, match="without a netslim description"):
        netslim.load(tmp_path / "plain.safetensors")


def test_newer_format_version_rejected(tmp_path):
    m = build_model("lenet300")
    path = netslim.save(m, tmp_path / "m.safetensors")
    desc = read_description(path)
    desc["version"] = 99
    save_file(dict(m.state_dict()), str(path), metadata={"netslim": json.dumps(desc)})
    with pytest.raises(NetslimError, match="newer netslim"):
        netslim.load(path)
