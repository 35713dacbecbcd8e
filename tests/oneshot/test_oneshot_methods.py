"""The registered one-shot methods end to end on tiny models: recipes, reports, save/load."""

import shutil

import pytest
import torch
import yaml

from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.layerwise import decoder_blocks
from netslim.core.serialize import load, save
from netslim.data.pydocs import corpus_root, list_files
from netslim.models.hf_tiny import tiny_gpt2, tiny_llama
from netslim.prune.criteria import sparsity_report
from netslim.prune.oneshot import WandaConfig, owl_sparsities, wanda
from netslim.quantize.weight_only import QuantizedLinear


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A few real corpus files (relative paths kept, so their splits are the real ones)."""
    src = corpus_root()
    dst = tmp_path_factory.mktemp("pydocs")
    files = sorted(list_files("calibration"), key=lambda p: p.stat().st_size)[20:30]
    files += sorted(list_files("test"), key=lambda p: p.stat().st_size)[5:8]
    for f in files:
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    return dst


@pytest.fixture
def ctx(small_corpus, tmp_path):
    from netslim.train.lm_tasks import CausalLMTask

    task = CausalLMTask(model_name="tiny-llama", seq_len=64, limit=4, root=str(small_corpus))
    return StepContext(task=task, out_dir=tmp_path)


STEPS = [
    {"method": "wanda", "sparsity": 0.5, "num_samples": 8, "seq_len": 64},
    {"method": "wanda", "n": 2, "m": 4, "num_samples": 8, "seq_len": 64},
    {"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 64},
    {"method": "sparsegpt", "n": 2, "m": 4, "num_samples": 8, "seq_len": 64},
    {"method": "magnitude_oneshot", "sparsity": 0.5},
]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: f"{s['method']}-{s.get('n', s.get('sparsity'))}")
def test_pruning_methods_hit_their_pattern_and_reload(step, ctx, tmp_path):
    cfg = make_config(yaml.safe_load(yaml.safe_dump(step)))
    model = apply(tiny_llama(), cfg, ctx)
    prefix, _ = decoder_blocks(model)
    rep = sparsity_report(model)["layers"]
    block_layers = {n: r for n, r in rep.items() if n.startswith(prefix)}
    assert len(block_layers) == 14 and "lm_head" in rep and rep["lm_head"]["zeros"] == 0
    for name, r in block_layers.items():
        assert r["masked"] and r["sparsity"] == pytest.approx(0.5, abs=0.01), name
    ids = ctx.task.blocks("test")[:2]
    before = model(input_ids=ids).logits
    again = load(save(model, tmp_path / "m.safetensors"))
    assert torch.allclose(again(input_ids=ids).logits, before, atol=1e-5)
    assert ctx.task.evaluate(model)["perplexity"] < 1e4


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_gptq_writes_the_packed_format_and_reloads(build, ctx, tmp_path):
    cfg = make_config({"method": "gptq", "bits": 4, "group_size": 32, "num_samples": 8, "seq_len": 64})
    dense = build()
    ids = ctx.task.blocks("test")[:2]
    ref = dense(input_ids=ids).logits
    model = apply(build(), cfg, ctx)
    prefix, blocks = decoder_blocks(model)
    qlin = [n for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    assert len(qlin) == (14 if build is tiny_llama else 8) and all(n.startswith(prefix) for n in qlin)
    out = model(input_ids=ids).logits
    assert (out - ref).pow(2).mean() < 0.05 * ref.pow(2).mean()
    path = save(model, tmp_path / "q.safetensors")
    assert torch.allclose(load(path)(input_ids=ids).logits, out, atol=1e-5)
    assert ctx.notes["gptq"]["layers"] == len(qlin)


def test_gptq_keeps_an_earlier_mask(ctx):
    model = apply(tiny_llama(), make_config({"method": "magnitude_oneshot", "sparsity": 0.5}), ctx)
    apply(model, make_config({"method": "gptq", "bits": 8, "group_size": None, "num_samples": 8, "seq_len": 64}), ctx)
    w = model.model.layers[0].mlp.down_proj.dequantize_weight()
    assert (w == 0).float().mean().item() >= 0.5


def test_owl_spreads_sparsity_around_the_target():
    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    cfg = WandaConfig(sparsity=0.5, owl=True, owl_lambda=0.1, owl_threshold=3.0)
    s = owl_sparsities(tiny_llama(), ids, cfg=cfg)
    assert len(s) == 2 and sum(s) / 2 == pytest.approx(0.5) and max(s) - min(s) == pytest.approx(0.2)
    model = wanda(tiny_llama(), ids, **cfg.model_dump())
    got = [model.model.layers[i].mlp.up_proj.weight.eq(0).float().mean().item() for i in range(2)]
    assert got == pytest.approx(s, abs=0.01)


@pytest.mark.parametrize(
    "step,match",
    [
        ({"method": "sparsegpt", "n": 2}, "'n' and 'm' go together"),
        ({"method": "wanda", "n": 4, "m": 4}, "'n' must be < 'm'"),
        ({"method": "sparsegpt", "sparsity": 1.0}, "sparsity"),
        ({"method": "gptq", "bits": 5}, "bits"),
        ({"method": "gptq", "group_size": 48}, "power of two"),
    ],
)
def test_invalid_configs_are_rejected(step, match):
    with pytest.raises(NetslimError, match=match):
        make_config(step)


def test_too_little_calibration_data_is_a_clear_error(ctx):
    with pytest.raises(NetslimError, match="num_samples"):
        apply(tiny_llama(), make_config({"method": "wanda", "num_samples": 100000, "seq_len": 64}), ctx)


@pytest.mark.parametrize(
    "name", ["sparsegpt_smollm2_50", "sparsegpt_smollm2_24", "wanda_smollm2_50", "gptq_smollm2_w4g64"]
)
def test_shipped_recipes_validate(name):
    from pathlib import Path

    from netslim.recipe.spec import load_recipe

    path = Path(__file__).resolve().parents[2] / "recipes" / f"{name}.yaml"
    recipe = load_recipe(path)
    assert recipe.model == "smollm2" and recipe.steps[0].num_samples == 128 and recipe.steps[0].seq_len == 512
