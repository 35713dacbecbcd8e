"""Importance criteria as registered objects: a user's own ranks as its function says, from a recipe
step and from the Python call; the built-ins score exactly as the string dispatch they replaced;
unknown names fail with one line listing the registered ones."""

from __future__ import annotations

import copy

import pydantic
import pytest
import torch
import yaml
from torch import nn

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.graph import trace_graph
from netslim.models import build_model
from netslim.prune import (
    get_criterion,
    magnitude_prune,
    magnitude_scores,
    prunable_layers,
    random_scores,
    register_criterion,
    registered_criteria,
)
from netslim.prune.criteria import weight_scores
from netslim.prune.structured import group_scores
from netslim.prune.structured.importance import _bn_scores, _norm_scores, activation_scores, taylor_scores
from netslim.recipe.spec import parse_recipe
from netslim.search.options import ChannelSpaceOptions

X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))
SEEN: dict[str, list] = {"batches": []}


# ------------------------------------------------------------------ a user's criteria
@register_criterion("index_order", "weights")
def index_order(layers, *, seed):
    """Later weights (in flat order) matter more: the first ones of each layer go."""
    return {n: torch.arange(m.weight.numel(), dtype=torch.float).view_as(m.weight) for n, m in layers}


@register_criterion("last_first", "groups")
def last_first(model, graph, **_):
    """Later units matter more: the first channels of every group go."""
    return {g.id: torch.arange(g.size, dtype=torch.float) for g in graph.prunable()}


@register_criterion("last_first_seen", "groups", needs="activations")
def last_first_seen(model, graph, *, batches, **_):
    """As last_first, recording the calibration batches the step handed over."""
    SEEN["batches"].append(batches)
    return last_first(model, graph)


@register_criterion("bad_shape", "groups")
def bad_shape(model, graph, **_):
    return {g.id: torch.zeros(g.size + 1) for g in graph.prunable()}


def test_registry_lists_the_builtins_and_the_users_with_what_they_need():
    assert {"magnitude", "random", "index_order"} <= set(registered_criteria("weights"))
    groups = registered_criteria("groups")
    assert {"l1", "l2", "l2_bn", "bn_scale", "taylor", "activation", "random", "last_first"} <= set(groups)
    assert (groups["taylor"].needs, groups["activation"].needs, groups["l2"].needs) == (
        "gradients",
        "activations",
        "weights",
    )
    assert get_criterion("last_first", "groups").description.startswith("Later units matter more")


# --------------------------------------------------------------- a user's: weights
def test_user_weight_criterion_prunes_the_first_weights_from_python_and_recipe(tmp_path, fmnist_small):
    torch.manual_seed(0)
    model = build_model("lenet300")
    by_python = magnitude_prune(copy.deepcopy(model), sparsity=0.5, scope="layer", criterion="index_order")
    cfg = make_config(yaml.safe_load("method: magnitude\nsparsity: 0.5\nscope: layer\ncriterion: index_order"))
    by_recipe = apply(copy.deepcopy(model), cfg, StepContext(task=fmnist_small, out_dir=tmp_path))
    for pruned in (by_python, by_recipe):
        for name in ("fc1", "fc2", "fc3"):
            w, w0 = getattr(pruned, name).weight.reshape(-1), getattr(model, name).weight.reshape(-1)
            k = round(0.5 * w.numel())
            assert torch.count_nonzero(w[:k]) == 0
            assert torch.equal(w[k:], w0[k:])


def test_nm_step_takes_a_user_weight_criterion(tiny_mlp):
    model = netslim_nm(tiny_mlp, criterion="index_order")
    w = model.fc1.weight.reshape(-1, 4)
    assert torch.count_nonzero(w[:, :2]) == 0 and bool((w[:, 2:] != 0).all())


def netslim_nm(model, **options):
    from netslim.prune import nm_prune

    return nm_prune(model, n=2, m=4, **options)


# ---------------------------------------------------------------- a user's: groups
def _last_half_kept(pruned: nn.Module, model: nn.Module) -> None:
    # lenet300: fc1 (300 units) and fc2 (100) are the groups; the last half of each is kept
    assert torch.equal(pruned.fc1.weight, model.fc1.weight[150:])
    assert torch.equal(pruned.fc2.weight, model.fc2.weight[50:, 150:])
    assert torch.equal(pruned.fc3.weight, model.fc3.weight[:, 50:])


def test_user_group_criterion_removes_the_first_channels_from_python_and_recipe(tmp_path, fmnist_small):
    torch.manual_seed(0)
    model = build_model("lenet300")
    options = dict(ratio=0.5, scope="uniform", criterion="last_first")
    by_python = netslim.apply(copy.deepcopy(model), "channels", data=fmnist_small, **options)
    _last_half_kept(by_python, model)
    recipe = parse_recipe(
        yaml.safe_load("steps:\n  - {method: channels, ratio: 0.5, scope: uniform, criterion: last_first_seen}")
    )
    SEEN["batches"].clear()
    by_recipe = apply(copy.deepcopy(model), recipe.steps[0], StepContext(task=fmnist_small, out_dir=tmp_path))
    _last_half_kept(by_recipe, model)
    # needs="activations": the step drew calibration batches for it, as it does for 'activation'
    assert len(SEEN["batches"]) == 1 and len(SEEN["batches"][0]) == recipe.steps[0].calibration_batches


def test_group_criterion_gets_what_it_needs_or_fails_naming_it():
    model = build_model("lenet300")
    graph = trace_graph(model, X[:1])
    with pytest.raises(NetslimError, match="calibration batches for criterion 'last_first_seen'"):
        group_scores(model, graph, "last_first_seen")
    with pytest.raises(NetslimError, match=r"Criterion 'bad_shape' gave .* shape \(301,\); expected .*\(300,\)"):
        group_scores(model, graph, "bad_shape")


def test_search_space_takes_user_criteria_that_need_only_the_weights():
    assert ChannelSpaceOptions(criterion="last_first").criterion == "last_first"
    with pytest.raises(pydantic.ValidationError, match="needing only weights .*l2, l2_bn, last_first, random"):
        ChannelSpaceOptions(criterion="taylor")


# ------------------------------------------------- the built-ins: exactly as before
def _old_group_scores(model, graph, criterion, *, batches, loss_fn, seed):
    """The string dispatch of group_scores before the registry (verbatim)."""
    groups = graph.prunable()
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return {g.id: torch.rand(g.size, generator=gen) for g in groups}
    if criterion == "activation":
        return activation_scores(model, graph, batches)
    if criterion == "taylor":
        return taylor_scores(model, graph, batches, loss_fn)
    out = {}
    for g in groups:
        s = _bn_scores(model, g) if criterion == "bn_scale" else None
        out[g.id] = s if s is not None else _norm_scores(model, g, 1 if criterion == "l1" else 2)
        if criterion == "l2_bn" and (bn := _bn_scores(model, g, p=2)) is not None:
            out[g.id] = out[g.id] + bn
    return out


@pytest.mark.parametrize("name", ["vgg11bn", "lenet300"])
@pytest.mark.parametrize("criterion", ["l1", "l2", "l2_bn", "bn_scale", "taylor", "activation", "random"])
def test_builtin_group_criteria_score_bit_identically_to_the_string_dispatch(name, criterion):
    torch.manual_seed(0)
    model = build_model(name).eval()
    graph = trace_graph(model, X[:1])
    opts = dict(batches=[(X, Y)], loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), seed=3)
    new = group_scores(model, graph, criterion, **opts)
    old = _old_group_scores(model, graph, criterion, **opts)
    assert list(new) == list(old)
    for gid in old:
        assert new[gid].dtype == old[gid].dtype and torch.equal(new[gid], old[gid])


@pytest.mark.parametrize("criterion", ["magnitude", "random"])
def test_builtin_weight_criteria_score_bit_identically_to_the_old_functions(criterion):
    torch.manual_seed(0)
    layers = prunable_layers(build_model("lenet300"))
    old = magnitude_scores(layers) if criterion == "magnitude" else random_scores(layers, 5)
    new = weight_scores(layers, criterion, seed=5)
    assert list(new) == list(old) and all(torch.equal(new[n], old[n]) for n in old)


# ------------------------------------------------------------------- bad names
@pytest.mark.parametrize(
    "step,listed",
    [
        ({"method": "magnitude", "sparsity": 0.5}, "weight criterion (index_order, magnitude, random;"),
        ({"method": "nm"}, "weight criterion (index_order, magnitude, random;"),
        ({"method": "channels", "ratio": 0.5}, "activation, bad_shape, bn_scale, l1, l2, l2_bn, last_first"),
        ({"method": "heads", "ratio": 0.5}, "group criterion (activation, bad_shape, bn_scale, l1, l2"),
        ({"method": "width", "ratio": 0.5}, "group criterion (activation, bad_shape, bn_scale, l1, l2"),
    ],
)
def test_unknown_criterion_is_one_error_listing_the_registered(step, listed):
    with pytest.raises(NetslimError) as err:
        parse_recipe({"steps": [{**step, "criterion": "hessian"}]})
    msg = str(err.value)
    assert "\n" not in msg and "step 1" in msg and "'criterion'" in msg and "got 'hessian'" in msg
    assert listed in msg and "register_criterion" in msg


def test_unknown_criterion_in_the_python_calls_lists_the_registered():
    model = build_model("lenet300")
    with pytest.raises(NetslimError, match=r"Unknown group criterion 'hessian'; allowed values: .*l2_bn, last_first"):
        group_scores(model, trace_graph(model, X[:1]), "hessian")
    with pytest.raises(NetslimError, match=r"Unknown weight criterion 'hessian'; allowed values: index_order, mag"):
        weight_scores(prunable_layers(model), "hessian")
    with pytest.raises(NetslimError, match="'criterion'.*magnitude, random"):
        magnitude_prune(model, sparsity=0.5, criterion="hessian")


def test_registration_mistakes_are_one_error_each():
    with pytest.raises(NetslimError, match=r"Group criterion 'l2' is registered twice: by netslim\.prune\.structured"):
        register_criterion("l2", "groups")(lambda model, graph, **_: {})
    with pytest.raises(NetslimError, match="'unit' parameter of register_criterion must be one of weights, groups"):
        register_criterion("x", "channels")
    with pytest.raises(NetslimError, match="'needs' parameter .* 'weights' for a weight criterion"):
        register_criterion("x", "weights", needs="gradients")
    with pytest.raises(NetslimError, match="'needs' parameter .* one of weights, activations, gradients"):
        register_criterion("x", "groups", needs="labels")
    with pytest.raises(NetslimError, match="'name' parameter"):
        register_criterion("my criterion", "groups")
    # the same function registered again (a module imported twice) is not a clash
    register_criterion("last_first", "groups")(last_first)


def test_width_ranks_hidden_dims_by_a_user_group_criterion():
    tf = pytest.importorskip("transformers")
    from netslim.prune.structured import plan_width

    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    plan, info = plan_width(tf.LlamaForCausalLM(config).eval(), 24, criterion="last_first")
    assert info["keep"].tolist() == list(range(8, 32))
    hidden = next(g for g in plan.groups if g["kind"] == "hidden")
    assert hidden["keep"] == list(range(8, 32))


def test_a_plugins_criterion_registers_when_its_source_loads():
    # a plugin (an entry point of group netslim.plugins) is a registry source: imported on the
    # first lookup of a name not registered yet, as its methods are
    from netslim.core import registry

    def plugin_module():
        @register_criterion("plugin_first", "groups")
        def plugin_first(model, graph, **_):
            """From a plugin."""
            return last_first(model, graph)

    registry.add_source("plugin 'test_criteria' (test module)", plugin_module)
    assert get_criterion("plugin_first", "groups").description == "From a plugin."
    model = build_model("lenet300")
    graph = trace_graph(model, X[:1])
    assert all(
        torch.equal(s, torch.arange(s.numel(), dtype=torch.float))
        for s in group_scores(model, graph, "plugin_first").values()
    )
