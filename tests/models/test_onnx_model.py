"""An .onnx file as a model (netslim.models.onnx_model): measured from what it stores, run by ONNX
Runtime like the PyTorch model it came from, and every damaged file one NetslimError naming it."""

from __future__ import annotations

import copy
import json

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import netslim  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.measure import count_nonzero, count_params, layer_table, macs_per_layer, stored_bytes  # noqa: E402
from netslim.models.onnx_model import META_KEY, OnnxModel, onnx_overview  # noqa: E402
from netslim.models.sources import open_model  # noqa: E402
from netslim.quantize import export_onnx, ptq_int8  # noqa: E402


@pytest.fixture(scope="module")
def lenet_int8(tmp_path_factory):
    torch.manual_seed(0)
    q = ptq_int8(netslim.build_model("lenet5").eval(), torch.randn(64, 1, 28, 28))
    path = export_onnx(
        q,
        tmp_path_factory.mktemp("onnx") / "q.onnx",
        torch.randn(2, 1, 28, 28),
        info={"model": "lenet5", "dataset": "fashion-mnist"},
    )
    return q, path


def test_static_int8_file_is_measured_like_the_pytorch_model(lenet_int8):
    q, path = lenet_int8
    m = OnnxModel(path)
    x = torch.randn(5, 1, 28, 28)
    assert count_params(m) == count_params(q) and count_nonzero(m) == count_nonzero(q)
    assert macs_per_layer(m, x[:1]) == {k: v for k, v in macs_per_layer(q, x[:1]).items()}
    rows = {r.name: r for r in layer_table(m, x[:1])}
    assert sorted(rows) == ["conv1", "conv2", "fc1", "fc2"]  # the PyTorch module names
    for name, r in rows.items():
        layer = dict(q.named_modules())[name]
        assert r.kind == "int8 QDQ (ONNX)" and r.bits == 8 and r.shape == list(layer.weight_shape)
        out = r.shape[0]  # int8 codes + fp32 scale + int8 zero point per output channel + fp32 bias
        assert r.stored_bytes == layer.weight_numel + out * (4 + 1) + 4 * out
    assert stored_bytes(m) < path.stat().st_size < stored_bytes(m) + 20_000
    # the graph runs as the int8 model (ORT's fused kernels: within the stated 2 output steps on average)
    step = float(list(q.modules())[-1].act_qparams[2])
    assert (m(x) - q(x)).abs().mean() <= 2 * step
    overview = dict(map(tuple, onnx_overview(m)))
    assert overview["QDQ layers (int8 weights dequantized in the graph)"] == "4"
    assert overview["dataset"] == "fashion-mnist"


def test_encoder_params_and_macs_match_pytorch_less_the_unused_pooler(tmp_path):
    bert = netslim.build_model("tiny-bert")
    torch.manual_seed(1)
    for p in bert.parameters():  # no two equal tensors (zero biases, unit norms): ONNX tools store those once
        p.data.add_(0.01 * torch.randn_like(p))
    ids = torch.randint(5, 250, (1, 12))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    m = OnnxModel(export_onnx(bert, tmp_path / "b.onnx", x))
    pooler = bert.pooler.dense  # its output is not a graph output: the exporter drops it
    assert count_params(m) == count_params(bert) - pooler.weight.numel() - pooler.bias.numel()
    assert sum(macs_per_layer(m, x).values()) == sum(macs_per_layer(bert, x).values()) - pooler.weight.numel()
    got = m(input_ids=ids)  # no attention_mask: ones, as the task inputs of causal LMs
    assert (got.last_hidden_state - bert(**x).last_hidden_state).abs().max() < 1e-4
    assert got[0] is got.last_hidden_state


def test_call_contract(lenet_int8, tmp_path):
    q, path = lenet_int8
    m = OnnxModel(path)
    x = torch.randn(3, 1, 28, 28)
    with pytest.raises(NetslimError, match=r"q\.onnx: an ONNX model runs inference only"):
        m(x, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(NetslimError, match=r"q\.onnx: the graph has no input 'pixel_values'; its inputs: x\."):
        m(pixel_values=x)
    old = torch.get_num_threads()
    try:  # ORT's threads follow torch's: one session per thread count
        torch.set_num_threads(1)
        a = m(x)
        assert list(m._sessions) == [1]
    finally:
        torch.set_num_threads(old)
    twin = copy.deepcopy(m)  # sessions are not copied but rebuilt
    assert torch.equal(twin(x), a) and twin.description == m.description
    opened = open_model(str(path))
    assert isinstance(opened.model, OnnxModel) and opened.dataset == "fashion-mnist" and opened.name == "lenet5"


def _resave(path, dst, edit):
    proto = onnx.load(str(path))
    edit(proto)
    dst.write_bytes(proto.SerializeToString())  # as is: onnx.save would act on external-data entries
    return dst


def _set_meta(value: str):
    def edit(proto):
        for p in proto.metadata_props:
            if p.key == META_KEY:
                p.value = value

    return edit


def test_damaged_files_are_one_error_naming_the_file(lenet_int8, tmp_path):
    _, path = lenet_int8
    data = path.read_bytes()
    desc = json.loads(next(p.value for p in onnx.load(str(path)).metadata_props if p.key == META_KEY))
    cases = {
        "truncated.onnx": (data[: len(data) // 2], r"not a readable ONNX model"),
        "garbage.onnx": (b"\x00\xff" * 500 + b"hello", r"not a readable ONNX model"),
        "empty.onnx": (b"", r"not a readable ONNX model \(empty\)"),
        "text.onnx": (b"name: model\nsteps: []\n", r"not a readable ONNX model"),
    }
    for name, (content, pattern) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(NetslimError, match=pattern) as err:
            OnnxModel(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    bad_meta = {
        "json.onnx": ("{not json", r"invalid netslim description \(metadata 'netslim'\)"),
        "schema.onnx": (json.dumps({**desc, "model_kind": "rocket"}), r"field 'model_kind'"),
        "inputs.onnx": (
            json.dumps({**desc, "inputs": {"ids": {"shape": [1, 4], "dtype": "int64"}}}),
            r"it names inputs \['ids'\] .* the graph has inputs \['x'\]",
        ),
        "deep.onnx": (json.dumps({**desc, "info": {"a": json.loads("[" * 40 + "]" * 40)}}), r"nested deeper"),
    }
    for name, (value, pattern) in bad_meta.items():
        with pytest.raises(NetslimError, match=pattern):
            OnnxModel(_resave(path, tmp_path / name, _set_meta(value)))

    def external(proto):
        init = proto.graph.initializer[0]
        init.data_location = onnx.TensorProto.EXTERNAL
        init.external_data.add(key="location", value="../../etc/passwd")

    with pytest.raises(NetslimError, match=r"external data files, which netslim does not read"):
        OnnxModel(_resave(path, tmp_path / "ext.onnx", external))

    def broken(proto):  # a node reading a value nothing produces
        proto.graph.node[0].input[0] = "nowhere"

    with pytest.raises(NetslimError, match=r"broken\.onnx: invalid ONNX model \(onnx\.checker"):
        OnnxModel(_resave(path, tmp_path / "broken.onnx", broken))


def test_a_file_made_elsewhere_opens_as_a_plain_module(lenet_int8, tmp_path):
    q, path = lenet_int8
    foreign = _resave(path, tmp_path / "f.onnx", lambda p: p.metadata_props.__delitem__(slice(None)))
    m = OnnxModel(foreign)
    assert m.netslim_model_kind == "module" and m.info == {}
    x = m.example_inputs(2)
    assert x.shape == (2, 1, 28, 28) and m(x).shape == (2, 10)
    assert "none (not written by netslim)" in dict(map(tuple, onnx_overview(m)))["description"]
