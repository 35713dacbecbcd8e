"""Recipe preflight: every problem knowable from the recipe, the model and the task is one
NetslimError before any step runs (no forward pass, no training, weights untouched); every
shipped recipe passes on the models it is for."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from torch import nn

import netslim
from netslim.api import recipes_dir
from netslim.core.errors import NetslimError
from netslim.core.selectors import selector_problems
from netslim.models.registry import model_entry
from netslim.models.sources import OpenedModel, module_source
from netslim.recipe import load_recipe, parse_recipe
from netslim.recipe.inputs import resolve_task
from netslim.recipe.preflight import check_recipe

TRAIN_IMAGES = 55_000  # Fashion-MNIST's training split less the 5,000 validation images


class ImageTask:
    """Stands in for Fashion-MNIST: sizes and input shapes only; any training or calibration fails."""

    metric = "accuracy"

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, TRAIN_IMAGES // batch_size)

    def example_inputs(self, batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, 1, 28, 28)

    def calibration_inputs(self, num_samples: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(num_samples, 1, 28, 28)

    def train_batches(self, epoch, batch_size):
        raise AssertionError("preflight must not train")


def _untouchable(model: nn.Module) -> nn.Module:
    """Any forward pass raises: preflight of the steps below needs none."""

    def refuse(module, args):
        raise AssertionError("preflight must not run the model")

    model.register_forward_pre_hook(refuse)
    return model


def _recipe(*steps: dict):
    return parse_recipe({"name": "t", "steps": list(steps)})


def _fails(model, task, *steps: dict) -> str:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NetslimError) as err:
        check_recipe(_recipe(*steps), model, task)
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    return str(err.value)


@pytest.fixture
def lenet300():
    return _untouchable(netslim.build_model("lenet300"))


@functools.cache
def _tiny(name: str):
    model = netslim.build_model(name)
    opened = OpenedModel(model, name, dataset=model_entry(name).dataset, source=module_source(model))
    return model, resolve_task(opened)


# ------------------------------------------------------------------------------ selectors
def test_bad_regex_and_unmatched_selectors_name_step_field_and_modules(lenet300):
    # a regex that does not compile is refused with the recipe itself (netslim.core.selectors.Selector)
    with pytest.raises(NetslimError) as err:
        _recipe({"method": "magnitude", "sparsity": 0.5, "include": ["re:fc(1"]})
    assert (
        "step 1 (method 'magnitude'): field 'include' value error, selector 're:fc(1' is not a valid "
        "regular expression" in str(err.value)
    )
    msg = _fails(
        lenet300,
        ImageTask(),
        {"method": "magnitude", "sparsity": 0.5, "include": ["fc1"]},
        {"method": "finetune", "epochs": 1},
        {"method": "nm", "exclude": ["fc9"]},
    )
    assert "step 3 (nm): field 'exclude': selector 'fc9' matches no module of LeNet300" in msg
    assert "fc1, fc2, fc3" in msg


def test_type_selector_lists_the_types_present(lenet300):
    msg = _fails(lenet300, ImageTask(), {"method": "magnitude", "sparsity": 0.5, "include": "type:Conv2d"})
    assert "'type:Conv2d' matches no module" in msg and "types present:" in msg and "Linear" in msg


def test_selector_tables_are_compiled_and_problems_listed_without_work():
    model = netslim.build_model("lenet300")
    assert selector_problems(model, ["fc1", "re:fc[23]", "type:Linear", "*"]) == []
    assert selector_problems(None, ["no_such_layer"]) == []  # no model: only that they compile
    assert "not a valid regular expression" in selector_problems(None, "re:[")[0]
    msg = _fails(_untouchable(model), ImageTask(), {"method": "share", "bits": {"re:fc(": 4}})
    assert "step 1 (share): field 'bits': selector 're:fc(' is not a valid regular expression" in msg


def test_selectors_of_a_type_the_method_cannot_handle(lenet300):
    msg = _fails(lenet300, ImageTask(), {"method": "svd", "include": "type:ReLU"})
    assert "step 1 (svd)" in msg and "matches no module of the supported types" in msg


# ---------------------------------------------------------------------------------- N:M
def test_nm_skips_layers_that_do_not_divide_and_fails_when_none_does(lenet300, caplog):
    with caplog.at_level(logging.INFO, logger="netslim.recipe.preflight"):
        check_recipe(_recipe({"method": "nm", "n": 2, "m": 8}), lenet300, ImageTask())
    assert "step 1 (nm) will skip fc2: input dim 300 is not a multiple of m=8" in caplog.text
    msg = _fails(lenet300, ImageTask(), {"method": "nm", "n": 2, "m": 64})
    assert "step 1 (nm)" in msg and "divisible by 'm'=64" in msg and "fc1 784" in msg


def test_oneshot_nm_needs_every_layer_divisible(lenet300):
    msg = _fails(lenet300, ImageTask(), {"method": "sparsegpt", "n": 2, "m": 8})
    assert "step 1 (sparsegpt): N:M needs the input width to be a multiple of m=8; fc2 has 300" in msg


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(
    "step, words",
    [  # 429 steps per epoch at batch size 128
        (
            {"method": "gradual", "finetune": {"epochs": 1}, "start_step": 5000, "end_step": 6000},
            "'end_step' parameter of GradualConfig must be < the number of training steps (429)",
        ),
        (
            {"method": "gradual", "finetune": {"epochs": 1}, "start_step": 400, "frequency": 100},
            "'start_step' parameter of GradualConfig must be at least 'frequency' (100) steps before the end of the "
            "schedule (step 321)",
        ),
        (
            {"method": "rigl", "finetune": {"epochs": 1}, "end_step": 10_000},
            "'end_step' parameter of RigLConfig must be <= the number of training steps (429)",
        ),
        (
            {"method": "movement", "finetune": {"epochs": 1}, "end_step": 500},
            "'end_step' parameter of MovementConfig must be < the number of training steps (429)",
        ),
        (
            {"method": "lottery", "finetune": {"epochs": 1}, "rewind_step": 430},
            "'rewind_step' parameter of LotteryConfig must be < the steps of one training run (429)",
        ),
    ],
)
def test_schedules_must_lie_within_their_run(lenet300, step, words):
    msg = _fails(lenet300, ImageTask(), {"method": "magnitude", "sparsity": 0.5}, step)
    assert f"step 2 ({step['method']}): The {words}" in msg


# --------------------------------------------------------------------------- group sizes
def test_group_size_skips_some_layers_and_fails_when_none_fits(lenet300, caplog):
    with caplog.at_level(logging.INFO, logger="netslim.recipe.preflight"):
        check_recipe(_recipe({"method": "weight_only", "group_size": 16}), lenet300, ImageTask())
    assert "will skip fc2: group_size 16 does not divide its 300 input features" in caplog.text
    msg = _fails(lenet300, ImageTask(), {"method": "weight_only", "group_size": 128})
    assert "step 1 (weight_only): weight_only quantizes no layer: none of 3 selected layers fits" in msg
    msg = _fails(lenet300, ImageTask(), {"method": "gptq", "group_size": 128})
    assert "step 1 (gptq): The 'group_size' parameter of gptq fits no selected layer" in msg
    assert "[100, 300, 784]" in msg and "ptq_int8 or weight_only" in msg


def test_gptq_w4g128_on_tiny_llama_skips_the_64_wide_layers_like_the_run():
    model, task = _tiny("tiny-llama")  # hidden 64 < 128: only down_proj (input 128) is quantized
    recipe = load_recipe(recipes_dir() / "gptq_w4g128.yaml")
    assert recipe.steps[0].preflight(model, task) == [
        {"name": f"model.layers.{i}.{p}", "reason": "group_size 128 does not divide its 64 input features"}
        for i in range(2)
        for p in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
        )
    ]
    msg = _fails(model, task, {"method": "gptq", "group_size": 256})
    assert "fits no selected layer" in msg and "group_size 64 (divides every width)" in msg


# ------------------------------------------------------------------ order: frozen weights
def test_pruning_after_weight_sharing_names_the_share_step(lenet300):
    msg = _fails(lenet300, ImageTask(), {"method": "share", "bits": 4}, {"method": "magnitude", "sparsity": 0.5})
    assert "step 2 (magnitude): changes the weights of layers that step 1 (share) froze" in msg
    assert "shared-weight layers" in msg and "no prunable layers" not in msg
    check_recipe(
        _recipe({"method": "share", "bits": 4}, {"method": "finetune", "epochs": 1}, {"method": "export"}),
        lenet300,
        ImageTask(),
    )  # training the centroids is fine


def test_all_problems_of_a_recipe_in_one_error(lenet300):
    msg = _fails(
        lenet300,
        ImageTask(),
        {"method": "nm", "include": "fc9"},
        {"method": "share", "bits": 4},
        {"method": "gradual", "finetune": {"epochs": 1}, "start_step": 5000},
    )
    assert msg.count("\n  step ") == 2 and "step 1 (nm)" in msg and "step 3 (gradual)" in msg


# ------------------------------------------------------------------------- model kinds
def test_static_int8_on_a_transformer_encoder_says_what_to_use():
    model, task = _tiny("tiny-bert")
    msg = _fails(model, task, {"method": "ptq_int8"})
    assert "step 1 (ptq_int8): ptq_int8 calibrates static int8 activations on one tensor" in msg
    assert "dynamic_int8" in msg
    check_recipe(_recipe({"method": "dynamic_int8"}), model, task)


def test_oneshot_llm_methods_on_an_encoder_name_the_supported_families():
    model, task = _tiny("tiny-bert")
    for method in ("gptq", "sparsegpt", "wanda"):
        assert "is not a supported decoder stack" in _fails(model, task, {"method": method})


def test_structured_steps_with_nothing_to_prune_are_skips_not_errors(lenet300):
    check_recipe(
        _recipe(
            {"method": "heads", "ratio": 0.5}, {"method": "ffn", "ratio": 0.5}, {"method": "channels", "ratio": 0.5}
        ),
        lenet300,
        ImageTask(),
    )
    model, task = _tiny("tiny-bert")
    check_recipe(_recipe({"method": "channels", "ratio": 0.5}), model, task)


def test_layers_choices_are_checked_before_work():
    model, task = _tiny("tiny-llama")
    assert "'count' parameter of drop_layers must be an int in [1, 1]" in _fails(
        model, task, {"method": "layers", "count": 4}
    )
    assert "'names' parameter of layers" in _fails(model, task, {"method": "layers", "names": ["model.layers.0"]})
    resnet = netslim.build_model("resnet20")
    calls = []
    resnet.register_forward_pre_hook(lambda m, a: calls.append(1))
    msg = _fails(resnet, ImageTask(), {"method": "layers", "names": ["layer1.1", "layer9.9"]})
    assert "'names' parameter of drop_residual_blocks must be distinct names among ['layer1.0'" in msg
    assert len(calls) == 1  # the one forward pass on example_inputs(1) that lists the residual blocks
    # no residual block in LeNet-300 (found by the same one pass): skipped with the reason at run time
    check_recipe(_recipe({"method": "layers", "count": 2}), netslim.build_model("lenet300"), ImageTask())


def test_unknown_distill_student(lenet300):
    msg = _fails(lenet300, ImageTask(), {"method": "distill", "student": "resnet99"})
    assert "step 1 (distill): field 'student': Unknown model 'resnet99'" in msg


def test_after_a_step_that_rewrites_modules_only_model_free_checks_run(lenet300):
    # svd replaces layers: a later selector may name the new modules, so it is not resolved
    # against the original model; a regex that does not compile is still an error (of the recipe itself).
    check_recipe(
        _recipe(
            {"method": "svd", "select": "rank", "rank": 8},
            {"method": "magnitude", "sparsity": 0.5, "include": ["fc1.*"]},
        ),
        lenet300,
        ImageTask(),
    )
    with pytest.raises(NetslimError, match=r"step 2 \(method 'magnitude'\): field 'include'"):
        _recipe(
            {"method": "svd", "select": "rank", "rank": 8},
            {"method": "magnitude", "sparsity": 0.5, "include": ["re:("]},
        )


# ------------------------------------------------------------------- shipped recipes pass
def _smollm2_shape() -> nn.Module:
    """SmolLM2-135M's architecture on the meta device (no weights read: preflight needs shapes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


TARGETS = {  # technique recipes (no model:) on the models they are written for
    "channels_50_int8": ["lenet5", "resnet20"],
    "gptq_w4g128": ["tiny-llama"],
    "heads_ffn_distill": ["tiny-bert", "tiny-llama"],
    "int8_dynamic": ["tiny-bert", "tiny-gpt2", "lenet300"],
    "sparsegpt_50": ["tiny-llama", "tiny-gpt2"],
    "wanda_50": ["tiny-llama", "tiny-gpt2"],
}
CASES = [
    (p.stem, m) for p in sorted(recipes_dir().glob("*.yaml")) for m in TARGETS.get(p.stem) or [load_recipe(p).model]
]


@functools.cache
def _task(name: str, data: tuple, dataset: str | None):
    model = netslim.build_model("tiny-llama" if name == "smollm2" else name)
    opened = OpenedModel(model, name, dataset=model_entry(name).dataset, source=module_source(model))
    return resolve_task(opened, recipe_data=dict(data), dataset=dataset)


@pytest.mark.parametrize("recipe_name, model_name", CASES)
def test_every_shipped_recipe_passes_preflight_on_its_models(recipe_name, model_name):
    recipe = load_recipe(recipes_dir() / f"{recipe_name}.yaml")
    # SmolLM2 is not loaded: its shape on the meta device, with the tiny Llama's text task (same kind).
    model = _smollm2_shape() if model_name == "smollm2" else netslim.build_model(model_name)
    check_recipe(recipe, model, _task(model_name, tuple(sorted(recipe.data.items())), recipe.dataset))


def test_technique_recipes_on_the_wrong_kind_of_model_fail_before_work(lenet300):
    msg = _fails(lenet300, ImageTask(), *[s.to_dict() for s in load_recipe(recipes_dir() / "gptq_w4g128.yaml").steps])
    assert "step 1 (gptq)" in msg and "fits no selected layer" in msg
