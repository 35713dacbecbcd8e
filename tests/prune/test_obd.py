"""OBD: saliency 1/2 * F_ii * w^2 with the per-sample empirical Fisher, checked independently."""

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.func import functional_call, grad, vmap

from netslim.core.config import make_config
from netslim.core.errors import NetslimError
from netslim.core.masks import get_mask, set_mask
from netslim.prune.criteria import prunable_layers, sparsity_report
from netslim.prune.obd import OBDConfig, fisher_diagonal, obd_prune, obd_scores


def per_sample_fisher(model, x, y):
    """Oracle: mean over samples of squared per-sample gradients, via torch.func."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)  # name -> (N, *shape)
    return {k: v.square().mean(0) for k, v in g.items()}


def first_samples(task, n):
    return next(iter(task.train_batches(0, n)))  # the same permutation fisher_diagonal walks


@pytest.mark.parametrize("arch", ["tiny_mlp", "tiny_cnn"])
def test_scores_equal_half_fisher_times_w_squared(arch, request, fmnist_small):
    model = request.getfixturevalue(arch).eval()
    layers = prunable_layers(model)
    scores = obd_scores(model, fmnist_small, layers=layers, num_samples=24)
    x, y = first_samples(fmnist_small, 24)
    fisher = per_sample_fisher(model, x, y)
    for name, module in layers:
        expected = 0.5 * fisher[f"{name}.weight"] * module.weight.detach().square()
        torch.testing.assert_close(scores[name], expected, rtol=1e-4, atol=1e-12)


def test_batched_fisher_is_b_times_mean_squared_batch_gradient(tiny_mlp, fmnist_small):
    layers = prunable_layers(tiny_mlp)
    got = fisher_diagonal(tiny_mlp, fmnist_small, layers=layers, num_samples=16, batch_size=8)
    tiny_mlp.eval()
    acc = torch.zeros_like(tiny_mlp.fc2.weight)
    for i, (x, y) in enumerate(fmnist_small.train_batches(0, 8)):
        if i == 2:
            break
        (g,) = torch.autograd.grad(F.cross_entropy(tiny_mlp(x), y), [tiny_mlp.fc2.weight])
        acc += 8 * g.square()
    torch.testing.assert_close(got["fc2"], acc / 2)


def test_masked_model_uses_original_grad_and_keeps_pruned(tiny_mlp, fmnist_small):
    mask = torch.rand(tiny_mlp.fc1.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.3
    set_mask(tiny_mlp.fc1, mask)
    obd_prune(tiny_mlp, fmnist_small, sparsity=0.5, scope="layer", num_samples=8)
    new = get_mask(tiny_mlp.fc1)
    assert not (new & ~mask).any()  # zero weights have zero saliency: they stay pruned
    for _name, stats in sparsity_report(tiny_mlp)["layers"].items():
        assert stats["zeros"] >= round(0.5 * stats["params"])


def test_global_sparsity_exact_and_obd_beats_random_on_loss(tiny_mlp, fmnist_small):
    from netslim.train.loop import TrainConfig, fit

    fit(tiny_mlp, fmnist_small, TrainConfig(epochs=1, batch_size=64, max_steps=60, select_best=False))
    import copy

    rnd = copy.deepcopy(tiny_mlp)
    obd_prune(tiny_mlp, fmnist_small, sparsity=0.8, num_samples=64, batch_size=8)
    masks = [get_mask(m) for _, m in prunable_layers(tiny_mlp)]
    total = sum(m.numel() for m in masks)
    assert sum(int((~m).sum()) for m in masks) == round(0.8 * total)
    from netslim.prune import magnitude_prune

    magnitude_prune(rnd, sparsity=0.8, criterion="random")
    assert fmnist_small.evaluate(tiny_mlp, "val")["loss"] < fmnist_small.evaluate(rnd, "val")["loss"]


def test_config_yaml_round_trip_and_bad_input(tiny_mlp, fmnist_small):
    cfg = OBDConfig(sparsity=0.95, scope="layer", exclude=("fc3",), max_sparsity=0.99, num_samples=256, batch_size=4)
    again = make_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and type(again) is OBDConfig
    with pytest.raises(NetslimError, match=r"'sparsity'.*\[0, 1\).*got 1.0"):
        make_config({"method": "obd", "sparsity": 1.0})
    with pytest.raises(NetslimError, match="'num_samples'"):
        obd_prune(tiny_mlp, fmnist_small, num_samples=0)
    with pytest.raises(NetslimError, match="'num_samples'.*at most.*got 5000"):
        obd_prune(tiny_mlp, fmnist_small, num_samples=5000, batch_size=500)
    with pytest.raises(NetslimError, match="'nope'"):
        obd_prune(tiny_mlp, fmnist_small, include="nope", num_samples=4)
