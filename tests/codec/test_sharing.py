"""Weight sharing: clustering, centroid fine-tuning invariants, config errors, save/load."""

import pytest
import torch

import netslim
from netslim.codec import ShareConfig, SharedConv2d, SharedLinear, cluster_weights, finetune_centroids, on_centroids
from netslim.codec.sharing import round_codebooks
from netslim.core.config import make_config
from netslim.core.errors import NetslimError
from netslim.prune import magnitude_prune


def _pruned(model, sparsity=0.8):
    magnitude_prune(model, sparsity=sparsity)
    return {n: m.weight.detach() != 0 for n, m in model.named_modules() if n in ("fc1", "fc2", "fc3", "conv1", "conv2")}


def test_clusters_non_zeros_and_keeps_outputs_close(tiny_mlp, fmnist_small):
    keep = _pruned(tiny_mlp)
    x = fmnist_small.example_inputs(16)
    before = tiny_mlp(x).detach()
    facts = cluster_weights(tiny_mlp, ShareConfig(bits=6))
    for name, mask in keep.items():
        m = getattr(tiny_mlp, name)
        assert isinstance(m, SharedLinear) and m.num_clusters == 64
        assert torch.equal(m.weight != 0, mask)  # pruned zeros stay, nothing else becomes zero
        assert facts["layers"][name]["nonzero"] == int(mask.sum())
    assert on_centroids(tiny_mlp)
    rel = (tiny_mlp(x).detach() - before).norm() / before.norm()
    assert rel < 0.05  # 64 shared values per layer barely change the function


def test_bits_per_layer_by_selector(tiny_cnn):
    facts = cluster_weights(tiny_cnn, ShareConfig(bits={"type:Conv2d": 3, "fc2": 2}, algorithm="lloyd"))
    assert isinstance(tiny_cnn.conv1, SharedConv2d) and tiny_cnn.conv1.num_clusters == 8
    assert tiny_cnn.fc2.num_clusters == 4
    assert [s["name"] for s in facts["skipped"]] == ["fc1"]  # no selector gives it bits


def test_centroid_finetuning_keeps_weights_on_centroids_and_pruned_at_zero(tiny_mlp, fmnist_small):
    keep = _pruned(tiny_mlp, 0.9)
    cluster_weights(tiny_mlp, ShareConfig(bits=3))
    codebooks = {n: getattr(tiny_mlp, n).codebook.detach().clone() for n in keep}
    indices = {n: getattr(tiny_mlp, n).weight_index.clone() for n in keep}
    cfg = ShareConfig(finetune={"epochs": 1, "max_steps": 15, "lr": 1e-3}).finetune
    assert cfg.optimizer == "adam" and cfg.weight_decay == 0.0  # share's training defaults stay
    finetune_centroids(tiny_mlp, fmnist_small, cfg=cfg)
    assert on_centroids(tiny_mlp)
    for n, mask in keep.items():
        m = getattr(tiny_mlp, n)
        assert torch.equal(m.weight_index, indices[n])  # assignments are fixed
        assert torch.equal(m.weight != 0, mask)  # pruned weights still exactly zero
        assert len(torch.unique(m.weight)) <= 2**3 + 1
    assert any(not torch.equal(getattr(tiny_mlp, n).codebook, codebooks[n]) for n in keep)  # centroids trained


def test_centroid_gradient_is_the_sum_over_its_cluster():
    torch.manual_seed(0)
    m = SharedLinear(5, 3, bias=False, num_clusters=4)
    index = torch.randint(0, 5, (3, 5))
    m.assign(torch.tensor([0.5, -1.0, 2.0, 0.25]), index)
    x = torch.randn(7, 5)
    m(x).pow(2).sum().backward()
    w = m.weight.detach().requires_grad_(True)
    torch.nn.functional.linear(x, w).pow(2).sum().backward()
    for c in range(4):
        assert torch.allclose(m.codebook.grad[c], w.grad[index == c + 1].sum(), atol=1e-5)


def test_round_codebooks_is_exact_half_precision(tiny_mlp):
    cluster_weights(tiny_mlp, ShareConfig(bits=4, algorithm="lloyd"))
    round_codebooks(tiny_mlp)
    cb = tiny_mlp.fc1.codebook.detach()
    assert torch.equal(cb.half().float(), cb)


def test_shared_model_round_trips_through_safetensors(tiny_cnn, tmp_path):
    _pruned(tiny_cnn, 0.7)
    cluster_weights(tiny_cnn, ShareConfig(bits=4))
    x = torch.randn(2, 1, 28, 28)
    loaded = netslim.load(netslim.save(tiny_cnn.eval(), tmp_path / "m.safetensors"))
    assert isinstance(loaded.conv2, SharedConv2d)
    assert torch.equal(loaded(x), tiny_cnn(x))


@pytest.mark.parametrize("bits", [0, 9, 3.5, {"fc1": 12}])
def test_invalid_bits_name_the_field(bits):
    with pytest.raises(NetslimError, match="'bits'"):
        make_config({"method": "share", "bits": bits})


def test_share_config_defaults_follow_the_paper():
    cfg = ShareConfig()
    assert cfg.bits == {"type:Conv2d": 8, "type:Linear": 5} and cfg.init == "linear"


def test_selector_that_matches_nothing_is_an_error(tiny_mlp):
    with pytest.raises(NetslimError, match="nope"):
        cluster_weights(tiny_mlp, ShareConfig(bits=4, include="nope"))
