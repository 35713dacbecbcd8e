import pytest
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.selectors import select, settings_for
from netslim.models import build_model


@pytest.fixture
def resnet():
    return build_model("resnet20")


def test_exact_glob_regex_type(resnet):
    assert select(resnet, "fc") == ["fc"]
    assert select(resnet, "layer1.*.conv1") == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"]
    assert select(resnet, r"re:layer3\.[01]\.conv2") == ["layer3.0.conv2", "layer3.1.conv2"]
    convs = select(resnet, "type:Conv2d")
    assert len(convs) == 21 and all(isinstance(resnet.get_submodule(n), nn.Conv2d) for n in convs)
    assert select(resnet, "type:torch.nn.modules.conv.Conv2d") == convs


def test_exclude_and_types(resnet):
    names = select(resnet, "type:Conv2d", exclude=["conv1", "re:.*shortcut.*"])
    assert "conv1" not in names and not any("shortcut" in n for n in names)
    assert select(resnet, types=(nn.Linear,)) == ["fc"]


def test_selector_matching_nothing_raises(resnet):
    with pytest.raises(NetslimError, match="matches no module"):
        select(resnet, "layer9.*")
    assert select(resnet, "layer9.*", required=False) == []


def test_bad_regex_is_clear(resnet):
    with pytest.raises(NetslimError, match="not a valid regular expression"):
        select(resnet, "re:(")


def test_precedence_exact_over_regex_over_glob_over_type(resnet):
    m = resnet.get_submodule("layer1.0.conv1")
    table = {"type:Conv2d": "type", "layer1.*": "glob", r"re:layer1\.0\..*": "regex", "layer1.0.conv1": "exact"}
    assert settings_for("layer1.0.conv1", m, table) == "exact"
    del table["layer1.0.conv1"]
    assert settings_for("layer1.0.conv1", m, table) == "regex"
    del table[r"re:layer1\.0\..*"]
    assert settings_for("layer1.0.conv1", m, table) == "glob"
    assert settings_for("layer2.0.conv1", resnet.get_submodule("layer2.0.conv1"), table) == "type"
    assert settings_for("fc", resnet.fc, table) is None
