"""SVD and distillation on a Hugging Face encoder (random tiny BERT, byte tokenizer)."""

from __future__ import annotations

import pytest
import torch

import netslim
from netslim.lowrank import LowRankLinear, SVDConfig, svd_compress, svd_layers
from netslim.measure import count_params

pytest.importorskip("transformers")
from netslim.models.hf import register_hf_models

register_hf_models()  # names only; idempotent
FFN = r"re:encoder\.layer\.\d+\.(intermediate|output)\.dense"


@pytest.fixture(scope="module")
def bert_task():
    from netslim.train.tasks import get_task

    return get_task("pydocs-sentences", model_name="tiny-bert", limit=64, max_length=32)


def _tokens(n: int, t: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(t) < torch.randint(4, t + 1, (n, 1), generator=g)).long()  # right padding
    return {"input_ids": torch.randint(5, 200, (n, t), generator=g) * mask, "attention_mask": mask}


def test_data_aware_ffn_budget_round_trips(tmp_path):
    model = netslim.build_model("tiny-bert").eval()
    before = count_params(model)
    svd_layers(
        model,
        SVDConfig(select="budget", target=0.7, target_scope="selected", include=(FFN,), data_aware=True),
        example=_tokens(1),
        calibration=_tokens(32),
    )
    assert isinstance(model.encoder.layer[0].intermediate.dense, LowRankLinear)
    assert count_params(model) < before
    x = _tokens(2, seed=1)
    back = netslim.load(netslim.save(model, tmp_path / "b.safetensors"))
    torch.testing.assert_close(back(**x).last_hidden_state, model(**x).last_hidden_state)


def test_padding_tokens_are_left_out_of_the_calibration_gram():
    from netslim.lowrank.calib import input_grams

    model = netslim.build_model("tiny-bert").eval()
    ids = torch.randint(5, 200, (2, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    name = "encoder.layer.0.intermediate.dense"
    seen = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    g = input_grams(model, [name], {"input_ids": ids, "attention_mask": mask})[name]
    h.remove()
    rows = seen[0][mask.bool()].double()  # (7, hidden)
    torch.testing.assert_close(g, rows.T @ rows)


@pytest.mark.slow
def test_embedding_distillation_runs_on_an_encoder(bert_task):
    from netslim.distill import DistillConfig, distill_from

    teacher = netslim.build_model("tiny-bert")
    student = netslim.build_model("tiny-bert")
    svd_compress(student, bert_task.example_inputs(1), select="rank", rank=4, include=(FFN,))
    summary = distill_from(
        student,
        teacher,
        DistillConfig(finetune={"max_steps": 2, "batch_size": 8, "lr": 1e-3, "optimizer": "adamw"}),
        task=bert_task,
    )
    assert summary["steps"] == 2
