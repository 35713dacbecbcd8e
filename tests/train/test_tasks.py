import pytest
import torch
import torch.nn.functional as F

from netslim.core.errors import NetslimError
from netslim.models import build_model
from netslim.train.tasks import dataset_names, get_task


def test_evaluate_matches_an_independent_computation(fmnist_small):
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    x, y = fmnist_small.splits["test"]
    with torch.no_grad():
        out = model(x)
    res = fmnist_small.evaluate(model, "test")
    assert res["accuracy"] == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert res["loss"] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)


def test_batches_cover_train_split_once_per_epoch(fmnist_small):
    seen = torch.cat([y for _, y in fmnist_small.train_batches(0, 100)])
    assert len(seen) == 2000 and torch.equal(seen.sort().values, fmnist_small.splits["train"][1].sort().values)


def test_calibration_inputs_reproducible(fmnist_small):
    a, b = fmnist_small.calibration_inputs(16, seed=1), fmnist_small.calibration_inputs(16, seed=1)
    assert a.shape == (16, 1, 28, 28) and torch.equal(a, b)
    with pytest.raises(NetslimError, match="num_samples"):
        fmnist_small.calibration_inputs(10**6)


def test_unknown_dataset_and_split():
    assert "fashion-mnist" in dataset_names()
    with pytest.raises(NetslimError, match="Unknown dataset 'mnist-x'"):
        get_task("mnist-x")
    with pytest.raises(NetslimError, match="Unknown split"):
        get_task("fashion-mnist", limit=100).evaluate(build_model("lenet300"), "dev")
