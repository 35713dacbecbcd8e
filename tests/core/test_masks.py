import pytest
import torch
from torch import nn

from netslim.core.errors import NetslimError
from netslim.core.masks import get_mask, make_permanent, masked_params, set_mask


def test_masked_weights_stay_zero_through_sgd_momentum_and_weight_decay():
    torch.manual_seed(0)
    lin = nn.Linear(20, 10)
    mask = torch.rand(10, 20) > 0.7
    set_mask(lin, mask)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        loss = lin(torch.randn(8, 20)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.all(lin.weight[~mask] == 0)
    # the stored original is inert too: momentum never revives it
    assert torch.all(lin.parametrizations.weight.original[~mask] == 0)


def test_masked_weights_stay_zero_through_adamw():
    lin = nn.Linear(6, 4)
    mask = torch.eye(4, 6, dtype=torch.bool)
    set_mask(lin, mask)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        lin(torch.randn(3, 6)).sum().backward()
        opt.step()
    assert torch.all(lin.weight[~mask] == 0)


def test_make_permanent_bakes_zeros_and_removes_parametrization():
    lin = nn.Linear(5, 5)
    mask = torch.rand(5, 5) > 0.5
    set_mask(lin, mask)
    expected = lin.weight.detach().clone()
    model = nn.Sequential(lin)
    assert masked_params(model) == ["0.weight"]
    make_permanent(model)
    assert get_mask(lin) is None and isinstance(lin.weight, nn.Parameter)
    assert torch.equal(lin.weight.detach(), expected)
    assert torch.all(lin.weight[~mask] == 0)


def test_set_mask_twice_replaces_and_shape_mismatch_raises():
    lin = nn.Linear(4, 3)
    set_mask(lin, torch.ones(3, 4, dtype=torch.bool))
    set_mask(lin, torch.zeros(3, 4, dtype=torch.bool))
    assert torch.all(lin.weight == 0) and len(lin.parametrizations.weight) == 1
    with pytest.raises(NetslimError, match="does not match"):
        set_mask(lin, torch.ones(4, 3, dtype=torch.bool))
