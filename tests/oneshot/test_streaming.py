"""Streaming one-shot compression: the model stays on disk (3 safetensors shards), one decoder
block in memory at a time, and the artifact is the in-memory path's, bit for bit (tensors and
description); the memory budget decides where activations live; bad checkpoints are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")

from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.layerwise import decoder_blocks
from netslim.core.serialize import load, read_description, save
from netslim.core.stream_io import block_need, parse_bytes, stream_step
from netslim.core.streaming import is_meta, open_artifact
from netslim.models.hf_tiny import tiny_decoder
from netslim.models.sources import open_hf_dir
from netslim.models.streamed import open_streamed

IDS = torch.randint(0, 256, (8, 48), generator=torch.Generator().manual_seed(0))


def tiny(kind: str, tied: bool = False) -> torch.nn.Module:
    """A 2-block random model of the family (GQA: 4 query heads, 2 KV heads; Qwen2 has q/k/v biases)."""
    return tiny_decoder(kind, 0, max_position_embeddings=256, tie_word_embeddings=tied)


def save_3_shards(model: torch.nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """``save_pretrained``, then its weights split into exactly 3 shards with an index, as HF writes them."""
    model.save_pretrained(path)
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    names = list(state)
    weight_map = {}
    for k in range(3):
        part = names[k::3]
        file = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file(
            {n: state[n].to(dtype) if dtype else state[n] for n in part}, str(path / file), metadata={"format": "pt"}
        )
        weight_map.update({n: file for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


class _Text:
    """The calibration side of a text task: fixed token ids."""

    def calibration_tokens(self, n: int, length: int, seed: int = 0) -> torch.Tensor:
        return IDS[:n, :length]


def _ctx(tmp_path: Path) -> StepContext:
    return StepContext(task=_Text(), out_dir=tmp_path, info={"run": "test"})


def _both(
    tmp_path: Path,
    kind: str,
    step: dict,
    tied: bool = False,
    budget: str | None = "64MiB",
    dtype: torch.dtype | None = None,
) -> tuple[Path, Path, StepContext]:
    """The step applied in memory and streamed from 3 shards; the two artifacts and the streamed ctx."""
    model_dir = tmp_path / "model"
    save_3_shards(tiny(kind, tied), model_dir, dtype)
    cfg = make_config(step)
    ctx = _ctx(tmp_path)
    in_memory = save(apply(open_hf_dir(model_dir).model, cfg, ctx), tmp_path / "memory.safetensors", ctx.info)
    ctx2 = _ctx(tmp_path)
    _, sm = open_streamed(model_dir)
    out = tmp_path / "streamed.safetensors"
    result = stream_step(sm, cfg, ctx2, out, budget=parse_bytes(budget), verify=True)
    assert is_meta(result.model) and is_meta(sm.model)  # nothing left in memory
    return in_memory, out, ctx2


def assert_same_artifact(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    assert read_description(a) == read_description(b)
    left = [p.name for p in a.parent.iterdir() if p.name.startswith(".") or p.name.startswith("netslim-act")]
    assert not left  # no spill or activation file stays behind


# ------------------------------------------------------------------------------ oracle
@pytest.mark.parametrize("kind", ["Llama", "Mistral", "Qwen2"])
def test_streamed_sparsegpt_is_the_in_memory_result(tmp_path, kind):
    a, b, ctx = _both(
        tmp_path, kind, {"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 48, "batch_size": 4}
    )
    assert_same_artifact(a, b)
    assert ctx.notes["stream"]["blocks"] == 2 and len(ctx.notes["stream"]["seconds_per_block"]) == 2
    ids = IDS[:2]
    with torch.no_grad():  # the streamed artifact is a whole, loadable model
        assert torch.equal(load(a)(input_ids=ids).logits, load(b)(input_ids=ids).logits)


@pytest.mark.parametrize(
    "kind, step, tied",
    [
        ("Llama", {"method": "gptq", "bits": 4, "group_size": 32, "num_samples": 8, "seq_len": 48}, True),
        (
            "Mistral",
            {"method": "wanda", "sparsity": 0.5, "owl": True, "owl_samples": 8, "num_samples": 8, "seq_len": 48},
            False,
        ),
        ("Qwen2", {"method": "magnitude_oneshot", "n": 2, "m": 4, "permanent": True}, True),
        ("Qwen2", {"method": "weight_only", "bits": 4, "group_size": 32, "embeddings": True}, True),
        ("Llama", {"method": "dynamic_int8", "embeddings": True}, False),
        ("Llama", {"method": "weight_only", "bits": 4, "group_size": 64, "rounding": "hqq"}, False),
    ],
    ids=[
        "gptq-tied",
        "wanda-owl",
        "magnitude-nm-permanent",
        "weight_only-embeddings-tied",
        "dynamic_int8",
        "weight_only-hqq",
    ],
)
def test_every_streamed_method_is_the_in_memory_result(tmp_path, kind, step, tied):
    a, b, _ = _both(tmp_path, kind, step, tied)
    assert_same_artifact(a, b)


def test_a_bf16_checkpoint_streams_to_the_in_memory_fp32_result(tmp_path):
    a, b, _ = _both(
        tmp_path,
        "Llama",
        {"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 48},
        dtype=torch.bfloat16,
    )
    assert_same_artifact(a, b)


# ------------------------------------------------------------------------- the budget
def test_activations_go_to_disk_when_the_budget_says_so(tmp_path):
    save_3_shards(tiny("Llama"), tmp_path / "model")
    _, sm = open_streamed(tmp_path / "model")
    _, blocks = decoder_blocks(sm.model)
    need = block_need(blocks[0], sm.model.config, (8, 48), 2, "hessian")
    fixed = need["weights"] + need["statistics"] + need["solve"] + need["batch"]
    budget = max(fixed + need["on_disk"], 2**20) + need["in_memory"] // 2  # room for one batch, not all of them
    assert budget < fixed + need["in_memory"]
    step = {"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 48, "batch_size": 2}
    ctx = _ctx(tmp_path)
    stream_step(sm, make_config(step), ctx, tmp_path / "streamed.safetensors", budget=budget)
    assert ctx.notes["stream"]["activations"] == "disk"
    ctx0 = _ctx(tmp_path)
    save(
        apply(open_hf_dir(tmp_path / "model").model, make_config(step), ctx0),
        tmp_path / "memory.safetensors",
        ctx0.info,
    )
    assert_same_artifact(tmp_path / "memory.safetensors", tmp_path / "streamed.safetensors")


def test_a_budget_below_one_block_says_how_much_is_needed(tmp_path):
    save_3_shards(tiny("Llama"), tmp_path / "model")
    _, sm = open_streamed(tmp_path / "model")
    step = make_config({"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 48, "batch_size": 8})
    with pytest.raises(
        NetslimError,
        match=r"memory_budget 1 MiB is below what one decoder block needs: about "
        r"[\d.]+ MiB .*raise memory_budget to at least \d+MiB",
    ):
        stream_step(sm, step, _ctx(tmp_path), tmp_path / "out" / "streamed.safetensors", budget=2**20)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "text, expected", [("2GiB", 2 * 2**30), ("512MB", 512 * 10**6), ("1.5 GiB", 3 * 2**29), (2**24, 2**24)]
)
def test_memory_budget_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["2 parsecs", "-1GB", "10", True, "1e400GB"])
def test_a_memory_budget_that_is_no_size_is_refused(bad):
    with pytest.raises(NetslimError, match="'memory_budget' parameter .* must be a size such as 2GiB"):
        parse_bytes(bad)


# ----------------------------------------------------------------------- bad input
def _sharded(tmp_path: Path) -> tuple[Path, dict]:
    d = tmp_path / "model"
    save_3_shards(tiny("Llama"), d)
    return d, json.loads((d / "model.safetensors.index.json").read_text())


def _write_index(d: Path, index: dict) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def test_a_missing_shard_is_named(tmp_path):
    d, _ = _sharded(tmp_path)
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(NetslimError, match=r"shard 'model-00002-of-00003.safetensors' \(holding .*\) is missing"):
        open_streamed(d)


def test_an_index_naming_a_tensor_its_shard_lacks(tmp_path):
    d, index = _sharded(tmp_path)
    name = next(n for n, f in index["weight_map"].items() if f.startswith("model-00001"))
    index["weight_map"][name] = "model-00002-of-00003.safetensors"
    _write_index(d, index)
    with pytest.raises(NetslimError, match="does not match shard model-00002-of-00003.safetensors: the index puts"):
        open_streamed(d)


def test_a_shard_holding_a_tensor_the_index_does_not_list(tmp_path):
    d, index = _sharded(tmp_path)
    name = next(iter(index["weight_map"]))
    del index["weight_map"][name]
    _write_index(d, index)
    with pytest.raises(NetslimError, match="which the index does not list there"):
        open_streamed(d)


def test_an_index_pointing_outside_the_directory(tmp_path):
    d, index = _sharded(tmp_path)
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../elsewhere.safetensors"
    _write_index(d, index)
    with pytest.raises(NetslimError, match="must be a .safetensors file name inside the directory"):
        open_streamed(d)


def test_weights_that_do_not_match_the_config(tmp_path):
    d = tmp_path / "model"
    save_3_shards(tiny("Llama"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NetslimError, match=r"does not match its config .*mlp.* is \[\d+, \d+\] in the file"):
        open_streamed(d)


def test_a_tensor_that_is_not_in_the_model(tmp_path):
    d = tmp_path / "model"
    tiny("Llama").save_pretrained(d)
    state = load_file(d / "model.safetensors")
    state["model.extra.weight"] = torch.zeros(2)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        NetslimError, match=r"the weights hold 'model.extra.weight', which is not a tensor of the model"
    ):
        open_streamed(d)


def test_a_method_that_cannot_stream_names_the_alternative(tmp_path):
    save_3_shards(tiny("Llama"), tmp_path / "model")
    _, sm = open_streamed(tmp_path / "model")
    with pytest.raises(NetslimError, match="'magnitude' cannot stream .*set stream: false"):
        stream_step(
            sm, make_config({"method": "magnitude", "sparsity": 0.5}), _ctx(tmp_path), tmp_path / "streamed.safetensors"
        )
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*"))


def test_a_failure_midway_leaves_nothing_and_no_block_in_memory(tmp_path, monkeypatch):
    import netslim.prune.oneshot as oneshot

    save_3_shards(tiny("Llama"), tmp_path / "model")
    _, sm = open_streamed(tmp_path / "model")
    calls = {"n": 0}
    real = oneshot.obs_solve

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 7:  # block 1
            raise RuntimeError("solver failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(oneshot, "obs_solve", failing)
    step = make_config({"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 48})
    with pytest.raises(RuntimeError, match="solver failed"):
        stream_step(sm, step, _ctx(tmp_path), tmp_path / "streamed.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no artifact, no spill file
    assert is_meta(sm.model)


def test_a_corrupted_artifact_is_caught_while_streaming(tmp_path):
    d = tmp_path / "model"
    save_3_shards(tiny("Llama"), d)
    art = save(open_hf_dir(d).model, tmp_path / "a.safetensors")
    raw = bytearray(art.read_bytes())
    raw[-5] ^= 0xFF  # a data byte of the last tensor in the buffer
    art.write_bytes(bytes(raw))
    sm = open_artifact(art, verify=True)
    step = make_config({"method": "magnitude_oneshot", "sparsity": 0.5})
    with pytest.raises(NetslimError, match="checksum mismatch in tensor"):
        stream_step(sm, step, _ctx(tmp_path), tmp_path / "streamed.safetensors")
    assert not (tmp_path / "streamed.safetensors").exists()
