"""One-shot LLM methods calibrate on the run's own text: the user's file, not a built-in corpus."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import netslim
from netslim.core.layerwise import calibration_for
from netslim.train.file_tasks import DataSpec, open_data


def test_calibration_blocks_come_from_the_users_text_train_split(tmp_path):
    lines = [f"line {i}: the quick brown fox number {i * 7919 % 1000} jumps." for i in range(600)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    model = netslim.build_model("tiny-llama")
    task = open_data(DataSpec(path=str(corpus), seq_len=32, limit=2), model, source="tiny-llama")
    ids = calibration_for(SimpleNamespace(task=task, seed=0), "gptq", 8, 64)  # (8, 64)
    assert ids.shape == (8, 64)
    train_text = "".join(task.documents("calibration"))
    decoded = [task.tokenizer.decode(r, skip_special_tokens=True) for r in ids.tolist()]
    assert all(d in train_text for d in decoded)  # byte tokens: every block is a piece of the train text
    test_text = "".join(task.documents("test"))
    assert not any(d in test_text for d in decoded if len(d) > 40)  # calibration is drawn from train only
    again = calibration_for(SimpleNamespace(task=task, seed=0), "gptq", 8, 64)
    assert torch.equal(ids, again)
