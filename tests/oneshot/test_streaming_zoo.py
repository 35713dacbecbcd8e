"""A zoo language model (built in memory from its package) streams from a safetensors copy in the
cache, written once by a child process: the streamed run writes the in-memory run's artifact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")

import netslim

MEASURE = {"batch_size": 1, "repeats": 2, "paired": False}


def test_a_zoo_language_model_streams_from_a_cached_safetensors_copy(cache_dir, tmp_path):
    recipe = {
        "name": "zoo",
        "data": {"limit": 2, "seq_len": 64},
        "measure": MEASURE,
        "steps": [{"method": "gptq", "bits": 4, "group_size": 32, "num_samples": 8, "seq_len": 64, "batch_size": 2}],
    }
    reports = {
        s: netslim.compress("tiny-llama", {**recipe, "stream": s}, out=tmp_path / str(s)).report for s in (False, True)
    }
    assert (cache_dir / "stream" / "tiny-llama" / "config.json").is_file()  # written once, by a child process
    a, b = load_file(reports[False]["artifact"]), load_file(reports[True]["artifact"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert reports[True]["final"]["perplexity"] == reports[False]["final"]["perplexity"]
    assert reports[True]["model"] == "tiny-llama" and reports[True]["memory"]["streamed"]
