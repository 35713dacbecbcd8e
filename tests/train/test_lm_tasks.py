import math
import random

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from netslim.core.errors import NetslimError
from netslim.data import pydocs
from netslim.models import build_model
from netslim.train.lm_tasks import CausalLMTask, EmbeddingTask
from netslim.train.tasks import get_task

WORDS = (
    "module function value engine buffer socket thread parser object caller handle file "
    "returns accepts raises creates stores reads writes every new default small"
).split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Prose files of seeded random sentences, at least two in every split."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    counts = dict.fromkeys(pydocs.SPLITS, 0)
    i = 0
    while min(counts.values()) < 2:
        rel = f"lib/page{i}.rst.txt"
        split = pydocs.split_of(rel)
        i += 1
        if counts[split] >= 2:
            continue
        counts[split] += 1
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(7, 14))).capitalize() + "." for _ in range(30)
        ]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("\n\n".join(" ".join(sentences[j : j + 3]) for j in range(0, 30, 3)))
    return str(root)


# ------------------------------------------------------------------------ causal LM
@pytest.mark.parametrize("name,chunk", [("tiny-llama", 64), ("tiny-gpt2", 64), ("tiny-llama", 7)])
def test_perplexity_is_exp_of_token_mean_nll(name, chunk, corpus, monkeypatch):
    # 5 blocks in batches of 2: an uneven last batch must not change the token weighting; a
    # cross-entropy chunk (CE_CHUNK) that splits batches and rows mid-way must not either.
    monkeypatch.setattr("netslim.train.lm_tasks.CE_CHUNK", chunk)
    task = CausalLMTask(model_name=name, seq_len=32, limit=5, eval_batch_size=2, root=corpus)
    model = build_model(name)
    blocks = task.blocks("test")
    assert blocks.shape == (5, 32)
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in blocks:  # one block at a time, straight from log-softmax
            logp = F.log_softmax(model(input_ids=ids[None]).logits[0, :-1], dim=-1)
            nll -= logp.gather(1, ids[1:, None]).sum().item()
            count += len(ids) - 1
        hf_loss = torch.stack([model(input_ids=b[None], labels=b[None]).loss for b in blocks]).mean().item()
    res = task.evaluate(model, "test")
    assert res["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert res["loss"] == pytest.approx(hf_loss, rel=1e-5)  # equal-length blocks: mean of means
    assert task.nll(model, "test")[1] == 5 * 31


def test_causal_task_batches_and_inputs(corpus):
    task = get_task("pydocs", model_name="tiny-llama", seq_len=16, limit=6, root=corpus)
    assert isinstance(task, CausalLMTask) and task.higher_is_better is False
    model = build_model("tiny-llama").train()
    batches = list(task.train_batches(0, 4))
    assert len(batches) == task.steps_per_epoch(4) == 1 and batches[0]["input_ids"].shape == (4, 16)
    expected = model(input_ids=batches[0]["input_ids"], labels=batches[0]["input_ids"]).loss
    assert torch.allclose(task.loss(model, batches[0]), expected)
    task.evaluate(model, "val")
    assert model.training  # evaluation restores the mode
    assert task.example_inputs(8)["input_ids"].shape == (8, 16)
    calib = task.calibration_inputs(3, seed=1)
    assert calib.shape == (3, 16) and torch.equal(calib, task.calibration_inputs(3, seed=1))
    rows = {tuple(r) for r in task.blocks("calibration").tolist()}
    assert all(tuple(r) in rows for r in calib.tolist())
    assert task.forward(model, task.example_inputs(2)).shape == (2, 16, model.config.vocab_size)


def test_generate_sample_is_greedy_and_deterministic(corpus):
    task = CausalLMTask(model_name="tiny-llama", seq_len=16, limit=1, root=corpus)
    model = build_model("tiny-llama")
    a = task.generate_sample(model, "The engine", max_new_tokens=6)
    assert isinstance(a, str) and a == task.generate_sample(model, "The engine", max_new_tokens=6)


def test_causal_task_rejects_bad_options(corpus, tmp_path):
    with pytest.raises(NetslimError, match="seq_len"):
        get_task("pydocs", model_name="tiny-llama", seq_len=1)
    with pytest.raises(NetslimError, match="bogus"):
        get_task("pydocs", model_name="tiny-llama", bogus=1)
    with pytest.raises(NetslimError, match="Unknown split 'dev'"):
        CausalLMTask(model_name="tiny-llama", root=corpus).evaluate(build_model("tiny-llama"), "dev")
    with pytest.raises(NetslimError, match="python3.11-doc"):
        CausalLMTask(model_name="tiny-llama", root=str(tmp_path / "missing")).blocks("test")


# ------------------------------------------------------------------------- encoder
def test_fidelity_of_the_reference_is_one_and_drops_when_perturbed(corpus):
    task = get_task("pydocs-sentences", model_name="tiny-bert", limit=40, root=corpus)
    assert isinstance(task, EmbeddingTask)
    model = build_model("tiny-bert")
    assert task.evaluate(model, "val")["fidelity"] == pytest.approx(1.0, abs=1e-5)
    assert task.evaluate(model, "test")["fidelity"] == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    res = task.evaluate(model, "test")
    assert res["fidelity"] < 0.99 and res["loss"] == pytest.approx(1 - res["fidelity"])


def test_embedding_task_inputs_and_distillation_loss(corpus):
    task = EmbeddingTask(model_name="tiny-bert", max_length=24, limit=20, root=corpus)
    model = build_model("tiny-bert")
    ex = task.example_inputs(5)
    assert ex["input_ids"].shape == ex["attention_mask"].shape == (5, 24)
    calib = task.calibration_inputs(4, seed=0)
    assert calib["input_ids"].shape == (4, 24)
    assert torch.equal(calib["input_ids"], task.calibration_inputs(4, seed=0)["input_ids"])
    emb = task.forward(model, ex)
    assert emb.shape == (5, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(5), atol=1e-5)
    inputs, target = next(task.train_batches(0, 8))
    assert target.shape == (8, 64) and inputs["input_ids"].shape[0] == 8
    assert task.loss(model, (inputs, target)).item() == pytest.approx(0.0, abs=1e-5)  # the reference itself
    assert task.steps_per_epoch(8) == 20 // 8


def test_sentence_subset_spreads_over_the_split(corpus):
    every = pydocs.sentences("calibration", root=corpus)
    task = EmbeddingTask(model_name="tiny-bert", limit=10, root=corpus)
    picked = task.sentences("train")
    assert len(picked) == 10 and picked[0] == every[0] and picked[-1] in every[len(every) // 2 :]
