"""Distillation losses: oracles against their definitions, gradients, bad shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netslim.core.errors import NetslimError
from netslim.distill import attention_kl, attention_transfer_loss, embedding_loss, hint_loss, kd_loss, soft_target_loss


def _logits(seed=0, shape=(8, 10)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_alpha_zero_is_cross_entropy():
    s, t, y = _logits(0), _logits(1), torch.arange(8) % 10
    torch.testing.assert_close(kd_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))


def test_soft_loss_matches_the_definition():
    s, t, T = _logits(0), _logits(1), 3.0
    p_t = F.softmax(t / T, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(soft_target_loss(s, t, T), expected)
    mix = kd_loss(s, t, torch.zeros(8, dtype=torch.long), temperature=T, alpha=0.3)
    torch.testing.assert_close(mix, 0.3 * expected + 0.7 * F.cross_entropy(s, torch.zeros(8, dtype=torch.long)))


def test_teacher_equal_to_student_gives_zero_soft_loss():
    s = _logits(0)
    assert soft_target_loss(s, s.clone(), 4.0).abs().item() < 1e-6
    assert embedding_loss(s, s.clone()).abs().item() < 1e-6
    probs = F.softmax(_logits(2, (2, 3, 5, 5)), -1)
    assert attention_kl(probs, probs.clone()).abs().item() < 1e-6


def test_gradient_flows_only_into_the_student():
    s = _logits(0).requires_grad_()
    t = _logits(1).requires_grad_()
    kd_loss(s, t, torch.arange(8) % 10, alpha=0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    fs = torch.randn(2, 4, 5, 5, requires_grad=True)
    ft = torch.randn(2, 6, 5, 5, requires_grad=True)
    (attention_transfer_loss(fs, ft) + hint_loss(fs, ft[:, :4])).backward()
    assert fs.grad is not None and ft.grad is None


def test_soft_gradient_scale_is_temperature_independent_at_high_T():
    # With T² scaling the soft gradient tends to (s - t)/C·(1/N) as T grows (Hinton et al., eq. 3).
    s, t = _logits(0, (4, 10)) * 0.1, _logits(1, (4, 10)) * 0.1
    grads = []
    for T in (20.0, 40.0):
        x = s.clone().requires_grad_()
        soft_target_loss(x, t, T).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0.05, atol=1e-4)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(NetslimError, match=r"teacher \(8, 7\), student \(8, 10\)"):
        kd_loss(_logits(0), _logits(1, (8, 7)), torch.zeros(8, dtype=torch.long))
    with pytest.raises(NetslimError, match="attention maps"):
        attention_transfer_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("kw, match", [({"alpha": 1.5}, "'alpha'"), ({"temperature": 0.0}, "'temperature'")])
def test_bad_parameters(kw, match):
    with pytest.raises(NetslimError, match=match):
        kd_loss(_logits(0), _logits(1), torch.zeros(8, dtype=torch.long), **kw)
