import pytest
import torch

from netslim.models import build_model


@pytest.fixture
def tiny_resnet():
    """ResNet-8 at width 4: residual groups, downsampling shortcuts; milliseconds per forward."""
    torch.manual_seed(0)
    return build_model("resnet20", depth=8, width=4).eval()


@pytest.fixture
def val_subset(fmnist_small):
    from netslim.search.evaluate import Subset

    return Subset.from_task(fmnist_small, "val", 64, seed=0)
