import math

import pytest
import torch
from torch import nn

from attnzoo.train.lamb import LAMB, lamb_param_groups
from attnzoo.train.optim import build_optimizer, warmup_cosine


def _lamb_ref(w, grads, *, lr, b1, b2, eps, wd, adapt):
    """The paper's update written out per element with Python floats."""
    m = [0.0] * len(w)
    v = [0.0] * len(w)
    w = list(w)
    for t, g in enumerate(grads, start=1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        u = [(mi / (1 - b1 ** t)) / (math.sqrt(vi / (1 - b2 ** t)) + eps) + wd * wi for mi, vi, wi in zip(m, v, w)]
        wn = math.sqrt(sum(x * x for x in w))
        un = math.sqrt(sum(x * x for x in u))
        tau = wn / un if (adapt and wn > 0 and un > 0) else 1.0
        w = [wi - lr * tau * ui for wi, ui in zip(w, u)]
    return w


def test_lamb_matches_hand_computed_two_steps():
    w0, b0 = [3.0, 4.0, -1.0, 0.5], [0.2, -0.3]
    gw = [[1.0, -2.0, 0.5, 0.0], [0.5, 0.5, -1.0, 2.0]]
    gb = [[0.1, 0.4], [-0.2, 0.3]]
    W = nn.Parameter(torch.tensor(w0, dtype=torch.float64).view(2, 2))
    B = nn.Parameter(torch.tensor(b0, dtype=torch.float64))
    opt = LAMB([{"params": [W], "weight_decay": 0.01, "adapt": True},
                {"params": [B], "weight_decay": 0.0, "adapt": False}], lr=0.1, betas=(0.9, 0.999), eps=1e-6)
    for g1, g2 in zip(gw, gb):
        W.grad = torch.tensor(g1, dtype=torch.float64).view(2, 2)
        B.grad = torch.tensor(g2, dtype=torch.float64)
        opt.step()
    want_w = _lamb_ref(w0, gw, lr=0.1, b1=0.9, b2=0.999, eps=1e-6, wd=0.01, adapt=True)
    want_b = _lamb_ref(b0, gb, lr=0.1, b1=0.9, b2=0.999, eps=1e-6, wd=0.0, adapt=False)
    torch.testing.assert_close(W.detach().flatten(), torch.tensor(want_w, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(B.detach(), torch.tensor(want_b, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # the trust ratio matters: plain Adam-with-decay (tau = 1) lands elsewhere
    plain = _lamb_ref(w0, gw, lr=0.1, b1=0.9, b2=0.999, eps=1e-6, wd=0.01, adapt=False)
    assert max(abs(a - b) for a, b in zip(plain, want_w)) > 1e-2


def test_trust_ratio_is_one_for_zero_weights():
    W = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    W.grad = torch.full((2, 3), 0.5, dtype=torch.float64)
    LAMB([W], lr=0.01, weight_decay=0.1).step()
    # tau = 1: first Adam step is lr * g/(|g|+eps) = lr * ~1
    torch.testing.assert_close(W.detach(), torch.full((2, 3), -0.01 * 0.5 / (0.5 + 1e-6), dtype=torch.float64))


def test_param_groups_exclude_norms_and_biases():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    model[1].weight.data = torch.ones(4)
    groups = lamb_param_groups(model, weight_decay=0.1)
    decay = {id(p) for p in groups[0]["params"]}
    assert decay == {id(model[0].weight), id(model[2].weight)}
    assert groups[0]["adapt"] and not groups[1]["adapt"] and groups[1]["weight_decay"] == 0.0


def test_bad_hyperparameters_raise():
    p = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="lr"):
        LAMB(p, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        LAMB(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(nn.Linear(2, 2), name="sgd", lr=0.1, weight_decay=0.0)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_both_optimizers_lower_the_loss(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 1))
    x = torch.randn(128, 8)
    y = (x[:, :1] * 2 - x[:, 1:2]).sin()
    opt = build_optimizer(model, name=name, lr=1e-2, weight_decay=0.01)
    with torch.no_grad():
        loss0 = float(((model(x) - y) ** 2).mean())
    for _ in range(100):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(((model(x) - y) ** 2).mean()) < 0.3 * loss0


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, warmup=10, total=110) == pytest.approx(0.1)
    assert warmup_cosine(9, warmup=10, total=110) == pytest.approx(1.0)
    assert warmup_cosine(10, warmup=10, total=110) == pytest.approx(1.0)
    assert warmup_cosine(60, warmup=10, total=110, min_ratio=0.1) == pytest.approx(0.55)
    assert warmup_cosine(110, warmup=10, total=110, min_ratio=0.1) == pytest.approx(0.1)
