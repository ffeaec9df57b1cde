"""The soft-target loss: a KL divergence with the stated weighting, and its settings."""
import math

import pytest
import torch

from var_engine import ConfigError
from var_engine.distillation import Distillation, distill_loss


def test_distill_loss_is_the_weighted_kl_divergence():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    p, q = t.softmax(-1), s.softmax(-1)
    expected = ((p * (p.log() - q.log())).sum(-1) * w).sum(1).mean()
    assert torch.allclose(distill_loss(s, t, w), expected, rtol=1e-5)
    assert distill_loss(t, t, w).abs() < 1e-6  # a student equal to its teacher pays nothing
    T = 2.0
    p, q = (t / T).softmax(-1), (s / T).softmax(-1)
    soft = ((p * (p.log() - q.log())).sum(-1) * w).sum(1).mean() * T ** 2
    assert torch.allclose(distill_loss(s, t, w, T), soft, rtol=1e-5)


def test_distillation_gradient_reaches_only_the_student():
    s = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, requires_grad=True)
    distill_loss(s, t.detach(), torch.full((3,), 1 / 3)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize("kw", [dict(weight=-1.0), dict(weight=1.5), dict(weight=math.nan), dict(temperature=0.0),
                                dict(temperature=math.inf)])
def test_bad_distillation_settings(kw):
    with pytest.raises(ConfigError):
        Distillation(**kw)
