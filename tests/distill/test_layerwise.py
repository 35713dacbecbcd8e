"""Layer-wise distillation of pruned transformers: lineage of blocks and dims, the hidden-state loss,
and the ``distill`` / ``distill_hidden`` options of the heads / ffn / layers / width steps."""

from __future__ import annotations

import copy

import pytest
import torch

from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.distill.layerwise import LayerwiseDistillTask, lineage, relative_mse
from netslim.prune.structured import drop_transformer_blocks, shrink_heads, shrink_width
from netslim.train.object_tasks import TensorClassificationTask

tf = pytest.importorskip("transformers")
G = torch.Generator().manual_seed(0)
IDS = torch.randint(0, 256, (16, 10), generator=G)


def bert_classifier(layers=3):
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=96,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return tf.BertForSequenceClassification(cfg).eval()


def task():
    x = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    y = torch.randint(0, 3, (16,), generator=G)
    return TensorClassificationTask({s: (x, y) for s in ("train", "val", "test")})


BATCHES = [{"input_ids": IDS[:4], "attention_mask": torch.ones_like(IDS[:4])}]


def test_relative_mse_is_scale_free_and_skips_padding():
    t = torch.randn(2, 5, 8)
    s = t + 0.1 * torch.randn(2, 5, 8)
    assert relative_mse(10 * s, 10 * t) == pytest.approx(float(relative_mse(s, t)), rel=1e-5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    junk = s.clone()
    junk[0, 3:] = 1e6  # padding positions do not count
    assert relative_mse(junk, t, mask=mask) == pytest.approx(float(relative_mse(s, t, mask=mask)))
    assert float(relative_mse(t, t)) == 0.0


def test_lineage_follows_dropped_blocks_and_kept_dims():
    teacher = bert_classifier()
    student = copy.deepcopy(teacher)
    assert lineage(student, teacher) == ([0, 1, 2], None)
    drop_transformer_blocks(student, 1, indices=[1])
    student, report = shrink_width(student, 48, batches=BATCHES)
    keep = next(g["keep"] for g in report["groups"] if g["kind"] == "hidden")
    assert lineage(student, teacher) == ([0, 2], keep)
    shrink_heads(student, 0.25)  # later plans that keep blocks and dims change nothing
    assert lineage(student, teacher) == ([0, 2], keep)
    stranger = bert_classifier(layers=2)
    with pytest.raises(NetslimError, match="cannot be matched; set distill_hidden: 0"):
        lineage(stranger, teacher)


def test_hidden_loss_is_zero_for_a_student_that_computes_the_teachers_kept_dims():
    """Zeroed-first oracle: a Llama whose removed dims are zero everywhere, width-pruned with the
    norm correction, outputs the teacher's residual stream on the kept dims: the hidden term ~ 0."""
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    keep = torch.tensor([i for i in range(64) if i % 4])
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50.0)  # unit-RMS activations: the norms' epsilon is negligible
        model.model.embed_tokens.weight[:, 0::4] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0::4] = 0
            layer.mlp.down_proj.weight[0::4] = 0
    teacher = copy.deepcopy(model)
    student, _ = shrink_width(model, 48, batches=BATCHES, keep=keep)
    from netslim.train.lm_tasks import CausalLMTask

    class Blocks(CausalLMTask):  # a causal LM task on fixed token blocks, no corpus
        def __init__(self):
            self.seq_len, self.limit, self.seed, self.eval_batch_size = 10, None, 0, 4
            self._blocks = {c: IDS for c in ("calibration", "validation", "test")}

    t = LayerwiseDistillTask(
        Blocks(), teacher, distill=0.0, distill_temperature=2.0, hidden_weight=1.0, layer_map=[0, 1], dims=keep.tolist()
    )
    loss = t.loss(student, {"input_ids": IDS[:4]})
    assert t.last["hidden"] < 1e-9
    hard = Blocks().loss(student, {"input_ids": IDS[:4]})
    assert float(loss.detach()) == pytest.approx(float(hard.detach()) + t.last["hidden"], rel=1e-5)


@pytest.mark.parametrize(
    "step",
    [
        {"method": "heads", "ratio": 0.5, "criterion": "l2"},
        {"method": "ffn", "ratio": 0.5, "criterion": "l2"},
        {"method": "layers", "count": 1, "calibration_samples": 4},
        {"method": "width", "hidden_size": 48},
    ],
)
def test_every_transformer_step_distills_logits_and_hidden_states(step, tmp_path):
    cfg = make_config(
        {
            **step,
            "distill": 0.5,
            "distill_hidden": 1.0,
            "finetune": {"epochs": 1, "max_steps": 2, "batch_size": 8, "optimizer": "adamw", "lr": 1e-4},
        }
    )
    t = task()
    reference = bert_classifier()
    ctx = StepContext(task=t, out_dir=tmp_path, reference=lambda: copy.deepcopy(reference))
    seen = {}
    original = LayerwiseDistillTask._hidden

    def spy(self, student, teacher, mask):
        seen.update(
            map=list(self.layer_map),
            dims=None if self.dims is None else self.dims.tolist(),
            student=len(student),
            teacher=len(teacher),
        )
        return original(self, student, teacher, mask)

    LayerwiseDistillTask._hidden = spy
    try:
        model = apply(bert_classifier(), cfg, ctx)
    finally:
        LayerwiseDistillTask._hidden = original
    note = ctx.notes[step["method"]][-1]
    assert note["finetune"]["steps"] == 2
    assert seen["teacher"] == 3 and seen["student"] == len(model.bert.encoder.layer)
    if step["method"] == "layers":
        assert len(seen["map"]) == 2 and set(seen["map"]) < {0, 1, 2}
    else:
        assert seen["map"] == [0, 1, 2]
    assert (seen["dims"] is None) == (step["method"] != "width")
    assert model(**t.example_inputs(2)).logits.shape == (2, 3)


def test_hidden_distillation_of_a_cnn_is_refused_before_work():
    from netslim.models import build_model

    cfg = make_config({"method": "layers", "count": 1, "distill_hidden": 1.0, "finetune": {"epochs": 1}})
    with pytest.raises(NetslimError, match="'distill_hidden' matches transformer block outputs"):
        cfg.preflight(build_model("resnet20"), None)
