import torch

from netslim.search.channels import ChannelSpace
from netslim.search.evaluate import accuracy
from netslim.search.sensitivity import bits_sensitivity, channel_sensitivity, sparsity_sensitivity

X = torch.randn(1, 1, 28, 28)


def test_channel_curves_start_at_baseline_and_are_cached(tiny_resnet, val_subset, tmp_path):
    space = ChannelSpace(tiny_resnet, X, options=(0.0, 0.5, 0.75))
    calls = []

    def ev(m):
        calls.append(1)
        return accuracy(m, val_subset)

    t1 = channel_sensitivity(space, ev, eval_key="k", cache_dir=tmp_path)
    n = len(calls)
    assert n == 1 + 2 * len(space.names)
    assert set(t1.curves) == set(space.names)
    assert all(v[0] == t1.baseline for v in t1.curves.values())
    # an independent check of one point: the same pruned model scored directly
    name = space.names[1]
    assert t1.curves[name][1] == accuracy(space.apply({name: 0.5}), val_subset)
    t2 = channel_sensitivity(space, ev, eval_key="k", cache_dir=tmp_path)
    assert len(calls) == n and t2 == t1  # read back from the cache
    channel_sensitivity(space, ev, eval_key="other", cache_dir=tmp_path)
    assert len(calls) > n  # another evaluation setting is another cache entry
    assert t1.plot(tmp_path / "s.png").stat().st_size > 1000
    md = t1.to_markdown()
    assert all(n in md for n in space.names)


def test_sparsity_curves_restore_weights(tiny_cnn, val_subset, tmp_path):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    t = sparsity_sensitivity(
        tiny_cnn,
        ["conv1", "fc1"],
        [0.0, 0.9, 0.99],
        lambda m: accuracy(m, val_subset),
        eval_key="x",
        cache_dir=tmp_path,
    )
    assert all(torch.equal(v, tiny_cnn.state_dict()[k]) for k, v in before.items())
    assert t.curves["fc1"][0] == t.baseline


def test_bits_sensitivity_reuses_the_mixed_precision_measure(tiny_cnn, fmnist_small, tmp_path):
    from netslim.quantize.mixed import kl_sensitivity

    batch = fmnist_small.calibration_inputs(32)
    t = bits_sensitivity(tiny_cnn, batch, ["conv1", "fc2"], [2, 8], cache_dir=tmp_path)
    ref = kl_sensitivity(tiny_cnn, batch, ["conv1", "fc2"], [2, 8])
    assert t.curves == {n: [ref[n][2], ref[n][8]] for n in ("conv1", "fc2")}
    assert t.losses("conv1")[0] > t.losses("conv1")[1]  # 2 bits hurts more than 8
