"""Distributed calibration (issue 19, part 4): two gloo processes, each calibrating on half the
samples, per-layer statistics all-reduced before each layer is solved. Every rank ends with the
same weights, bit for bit, and they equal the single-process result up to the order of the
floating-point sums. The processes are forked once for the whole module (torch.multiprocessing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not hasattr(os, "fork"):
    pytest.skip("needs torch.distributed (gloo) and fork", allow_module_level=True)

from safetensors.torch import load_file, save_file  # noqa: E402

from netslim.core.errors import NetslimError  # noqa: E402
from netslim.core.layerwise import collect_hessians  # noqa: E402
from netslim.models.hf_tiny import tiny_llama  # noqa: E402
from netslim.prune.oneshot import sparsegpt, wanda  # noqa: E402
from netslim.quantize.gptq import gptq  # noqa: E402

IDS = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
X = torch.randn(8, 40, 32, generator=torch.Generator().manual_seed(1))  # 8 samples of 40 tokens, 32 features
METHODS = {
    "sparsegpt": (sparsegpt, {"sparsity": 0.5, "batch_size": 2}),
    "wanda": (wanda, {"sparsity": 0.5, "batch_size": 2}),
    "gptq": (gptq, {"bits": 4, "group_size": 32, "batch_size": 2}),
}


def _hessian(x: torch.Tensor) -> torch.Tensor:
    lin = torch.nn.Linear(32, 4)
    return collect_hessians([("lin", lin)], lambda: [lin(x[i : i + 1]) for i in range(len(x))])["lin"]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


STREAMED_RECIPE = {
    "name": "dist",
    "stream": True,
    "data": {"seq_len": 64, "limit": 2},
    "measure": {"batch_size": 1, "repeats": 1, "paired": False},
    "steps": [
        {"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 64, "batch_size": 2},
        {"method": "export"},
    ],
}


def _streamed_run(model_dir: Path, corpus: Path, out: Path) -> dict:
    from netslim.recipe.runner import execute_recipe
    from netslim.recipe.spec import parse_recipe

    return execute_recipe(parse_recipe(STREAMED_RECIPE), out, model_ref=str(model_dir), data=str(corpus))[0]


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        share = len(X) // world
        save_file({"h": _hessian(X[rank * share : (rank + 1) * share])}, f"{out}/hessian_{rank}.safetensors")
        for name, (fn, kw) in METHODS.items():
            model = tiny_llama()
            fn(model, IDS, **kw)  # the engine takes this rank's half of IDS
            save_file(_state(model), f"{out}/{name}_{rank}.safetensors")
        try:
            sparsegpt(tiny_llama(), IDS[:5], sparsity=0.5)  # 5 samples cannot be split over 2 ranks
            message = ""
        except NetslimError as e:
            message = str(e)
        Path(f"{out}/error_{rank}.txt").write_text(message)
        os.environ["WORLD_SIZE"] = str(world)  # what torchrun sets: the runner joins the existing group
        report = _streamed_run(Path(out) / "model", Path(out) / "corpus.txt", Path(out) / "run")
        Path(f"{out}/run_{rank}.txt").write_text("report" if report else "no report")
    finally:
        dist.destroy_process_group()


def _model_dir(path: Path) -> None:
    from netslim.models.hf_tokenizers import byte_tokenizer

    tiny_llama().save_pretrained(path)
    byte_tokenizer("causal").save_pretrained(path)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, fork_ranks):
    out = tmp_path_factory.mktemp("dist")
    _model_dir(out / "model")
    (out / "corpus.txt").write_text(
        "".join(f"Line {i} of a text to calibrate and score a model on.\n" for i in range(300))
    )
    fork_ranks(_worker, out)
    return out


def test_all_reduced_hessian_is_the_single_process_hessian(ranks):
    single = _hessian(X)
    for r in (0, 1):
        h = load_file(ranks / f"hessian_{r}.safetensors")["h"]
        assert torch.allclose(h, single, rtol=1e-5, atol=1e-6)
    assert torch.equal(load_file(ranks / "hessian_0.safetensors")["h"], load_file(ranks / "hessian_1.safetensors")["h"])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_rank_ends_with_identical_weights(ranks, method):
    a, b = load_file(ranks / f"{method}_0.safetensors"), load_file(ranks / f"{method}_1.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_give_the_single_process_result(ranks, method):
    fn, kw = METHODS[method]
    model = tiny_llama()
    fn(model, IDS, **kw)
    single = _state(model)
    got = load_file(ranks / f"{method}_0.safetensors")
    assert got.keys() == single.keys()
    for k, v in single.items():
        if v.dtype == torch.bool:  # masks: the same choices (statistics differ only in summation order)
            assert (got[k] == v).float().mean() > 0.999, k
        elif v.is_floating_point():
            assert torch.allclose(got[k].float(), v.float(), rtol=1e-4, atol=1e-5), k
        else:  # packed int4 codes: a rounding may flip where a weight sits on a grid boundary
            assert (got[k] == v).float().mean() > 0.999, k


def test_samples_that_do_not_divide_over_the_ranks(ranks):
    for r in (0, 1):
        msg = (ranks / f"error_{r}.txt").read_text()
        assert "calibration num_samples (5) must be a multiple of the number of processes (2)" in msg


def test_a_torchrun_of_a_streamed_recipe_writes_once_what_one_process_writes(ranks, tmp_path):
    assert (ranks / "run_0.txt").read_text() == "report" and (ranks / "run_1.txt").read_text() == "no report"
    files = sorted(p.name for p in (ranks / "run").iterdir())
    assert files == [
        ".netslim.lock",
        "checkpoints",
        "model.safetensors",
        "plots",
        "report.html",
        "report.json",
        "report.md",
        "state.json",
    ]
    single = _streamed_run(ranks / "model", ranks / "corpus.txt", tmp_path / "single")
    a, b = load_file(ranks / "run" / "model.safetensors"), load_file(single["artifact"])
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
        else:
            assert (a[k] == b[k]).float().mean() > 0.999, k
