"""ONNX export of Hugging Face models (issue 18): causal LMs and encoders without KV-cache objects,
int8 layers as QDQ, dynamic batch and sequence axes; the export step's ONNX Runtime check.

Oracle: the PyTorch model. Tolerance (stated in netslim.quantize.onnx_runtime): float and dynamic
int8 graphs compute the same arithmetic in float, max |diff| <= 1e-3 x max |PyTorch output|;
checked here on another batch size and sequence length than the traced example, with padding.
"""

from __future__ import annotations

import copy

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
tf = pytest.importorskip("transformers")

import netslim  # noqa: E402
from netslim.core.errors import NetslimError  # noqa: E402
from netslim.models.onnx_model import OnnxModel  # noqa: E402
from netslim.quantize import dynamic_int8, export_onnx  # noqa: E402
from netslim.quantize.onnx_export import export_step  # noqa: E402

REL = 1e-3


def _tokens(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 250, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


def _bert(cls_name: str, **extra) -> torch.nn.Module:
    base = netslim.build_model("tiny-bert")
    torch.manual_seed(0)
    model = getattr(tf, cls_name)(copy.deepcopy(base.config).__class__(**{**base.config.to_dict(), **extra}))
    return model.eval()


def _int8(model):
    return dynamic_int8(copy.deepcopy(model))


def _graph(path):
    proto = onnx.load(str(path))
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    return proto, inits, [n.op_type for n in proto.graph.node]


CASES = [  # (model, quantize, graph outputs, the PyTorch output each one reproduces)
    ("tiny-llama", True, ["logits"], lambda out: [out.logits]),  # GQA, RoPE, causal LM
    ("tiny-gpt2", False, ["logits"], lambda out: [out.logits]),  # Conv1D, tied head
    ("masked-lm", True, ["logits", "last_hidden_state"], lambda out: [out.logits, out.hidden_states[-1]]),
    ("classifier", False, ["logits"], lambda out: [out.logits]),
]


@pytest.mark.parametrize("name,quantize,outputs,expected", CASES, ids=[c[0] for c in CASES])
def test_hf_export_matches_pytorch_without_kv_cache(tmp_path, name, quantize, outputs, expected):
    if name == "masked-lm":
        model = _bert("BertForMaskedLM")
    elif name == "classifier":
        model = _bert("BertForSequenceClassification", num_labels=3)
    else:
        model = netslim.build_model(name).eval()
    model = _int8(model) if quantize else model
    path = export_onnx(model, tmp_path / "m.onnx", _tokens(2, 16), info={"model": name})
    proto, inits, ops = _graph(path)
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in proto.graph.output] == outputs  # no present.* key / value outputs: no cache
    for inp in proto.graph.input:  # batch and sequence are symbolic
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"]
    if quantize:
        n_int8 = sum(1 for m in model.modules() if type(m).__name__ == "DynamicInt8Linear")
        codes = [k for k, t in inits.items() if k.endswith("w_int8") and t == onnx.TensorProto.INT8]
        assert len(codes) == n_int8 > 0 and ops.count("DequantizeLinear") >= n_int8 and "QuantizeLinear" in ops
    x = _tokens(3, 23, seed=1)  # another batch size and length than traced
    with torch.no_grad():
        kw = {"output_hidden_states": True} if name == "masked-lm" else {}
        refs = expected(model(**x, **kw))
    got = OnnxModel(path)(**x)
    assert len(got) == len(refs)
    for g, r in zip(got, refs):
        assert g.shape == r.shape
        assert (g - r).abs().max() <= REL * r.abs().max(), name
    assert torch.equal(got[0], getattr(got, outputs[0]))


@pytest.fixture
def bert_run(tmp_path):
    """A dynamic int8 tiny BERT and the info of a run on the user's text file (embedding task)."""
    from netslim.models.sources import open_model
    from netslim.recipe.inputs import resolve_task, run_info

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Sentence {i} says something about the number {i * 7}.\n" for i in range(80)))
    bert = _int8(netslim.build_model("tiny-bert"))
    opened = open_model(bert)
    task = resolve_task(opened, data={"path": str(corpus), "task": "embedding", "max_length": 24})
    return bert, run_info(opened, task, "r"), corpus


def test_export_step_records_the_ort_check_and_warns_above_tolerance(tmp_path, bert_run, monkeypatch):
    """The recipe step's exporter rebuilds the run's task from its info (here: the user's text file),
    checks the graph in ONNX Runtime on 8 test rows and returns the check as notes; a difference
    above the stated tolerance is a warning (the bound is forced below any difference here)."""
    import netslim.quantize.onnx_runtime as rt

    monkeypatch.setattr(rt, "FLOAT_REL", -1.0)  # a bound no difference meets
    bert, info, corpus = bert_run
    path, notes = export_step(bert, tmp_path / "m.onnx", info)
    check = notes["ort_check"]
    assert check["provider"] == "CPUExecutionProvider" and check["graph_optimization"] == "all"
    assert check["inputs"] == {"input_ids": [8, 24], "attention_mask": [8, 24]}
    assert 0 <= check["max_abs_diff"] <= REL * check["ref_abs_max"]  # the real tolerance holds
    assert check["within_tolerance"] is False and check["tolerance"]["metric"] == "max_abs_diff"
    [warning] = notes["warnings"]
    assert (
        warning.startswith("ONNX Runtime check of m.onnx: max_abs_diff ") and "exceeds the stated tolerance" in warning
    )
    loaded = OnnxModel(path)
    assert loaded.description["ort_check"] == check and loaded.info["data"]["path"] == str(corpus)
    assert loaded.netslim_model_kind == "embedding" and list(loaded.description["outputs"]) == ["last_hidden_state"]


def test_models_the_format_cannot_express_are_refused_before_writing(tmp_path):
    t5 = tf.T5Model(tf.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)).eval()
    with pytest.raises(NetslimError, match=r"ONNX export of T5Model: a Hugging Face model exports when"):
        export_onnx(t5, tmp_path / "t5.onnx", _tokens(2, 8))

    class Branchy(torch.nn.Module):  # a Python `if` on tensor values: no graph holds it
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(NetslimError, match=r"ONNX export of Branchy failed: .*data-dependent") as err:
        export_onnx(Branchy(), tmp_path / "b.onnx", torch.randn(2, 3))
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written
