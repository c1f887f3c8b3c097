import math

import pytest
import torch
from torch import nn

from attnzoo.train.lamb import LAMB, lamb_param_groups
from attnzoo.train.optim import build_optimizer, warmup_cosine


def lamb_reference(ws, grads, *, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, adapt=True,
                   always_adapt=True, bias_correction=True, grad_averaging=True, trust_clip=None,
                   max_grad_norm=None):
    """LAMB's Algorithm 2 and its options written out per element with Python floats (float64).

    ws: the tensors of one group, each a flat list; grads: per step, one flat list per tensor."""
    b1, b2 = betas
    ws = [list(w) for w in ws]
    m = [[0.0] * len(w) for w in ws]
    v = [[0.0] * len(w) for w in ws]
    for t, gs in enumerate(grads, start=1):
        if max_grad_norm is not None:               # one norm over every gradient
            c = max(1.0, math.sqrt(sum(x * x for g in gs for x in g)) / max_grad_norm)
            gs = [[x / c for x in g] for g in gs]
        for i, (w, g) in enumerate(zip(ws, gs)):
            a = (1 - b1) if grad_averaging else 1.0
            m[i] = [b1 * mi + a * gi for mi, gi in zip(m[i], g)]
            v[i] = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v[i], g)]
            c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
            u = [(mi / c1) / (math.sqrt(vi / c2) + eps) + weight_decay * wi for mi, vi, wi in zip(m[i], v[i], w)]
            tau = 1.0
            if adapt and (always_adapt or weight_decay != 0):
                wn, un = math.sqrt(sum(x * x for x in w)), math.sqrt(sum(x * x for x in u))
                tau = wn / un if wn > 0 and un > 0 else 1.0
                if trust_clip is not None:
                    tau = min(tau, trust_clip)
            ws[i] = [wi - lr * tau * ui for wi, ui in zip(w, u)]
    return ws


def _run(ws, grads, *, split_groups=False, **options):
    """LAMB in float64 on tensors ws (flat lists), one group or one group per tensor."""
    params = [nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in ws]
    opt = LAMB([{"params": [p]} for p in params] if split_groups else params, **options)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return [p.detach() for p in params]


def _assert_matches(got, want):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, torch.tensor(w, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def _gap(a, b):
    return max(abs(x - y) for wa, wb in zip(a, b) for x, y in zip(wa, wb))


W0 = [[3.0, 4.0, -1.0, 0.5, 2.0, -2.5], [0.2, -0.3, 1.5, -0.7]]
# three steps whose global gradient norms differ by 100x: clipping changes the moments' mix
GRADS = [[[1.0, -2.0, 0.5, 0.0, 0.3, -0.1], [0.1, 0.4, -0.2, 0.05]],
         [[5.0, 5.0, -10.0, 20.0, -3.0, 1.0], [-2.0, 3.0, 8.0, -1.0]],
         [[0.01, -0.02, 0.03, 0.05, -0.01, 0.02], [0.02, -0.01, 0.0, 0.04]]]


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
    want_w = lamb_reference([w0], [[g] for g in gw], lr=0.1, weight_decay=0.01)[0]
    want_b = lamb_reference([b0], [[g] for g in gb], lr=0.1, adapt=False)[0]
    torch.testing.assert_close(W.detach().flatten(), torch.tensor(want_w, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(B.detach(), torch.tensor(want_b, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # the trust ratio matters: plain Adam-with-decay (tau = 1) lands elsewhere
    plain = lamb_reference([w0], [[g] for g in gw], lr=0.1, weight_decay=0.01, adapt=False)[0]
    assert max(abs(a - b) for a, b in zip(plain, want_w)) > 1e-2


# option -> (its setting, the default it differs from, other settings of the case)
OPTIONS = {
    "max_grad_norm": ({"max_grad_norm": 0.5}, {"max_grad_norm": None}, {"weight_decay": 0.01}),
    "trust_clip": ({"trust_clip": 1.0}, {"trust_clip": None}, {"weight_decay": 0.01}),   # tau ~ 2-4 here
    "bias_correction": ({"bias_correction": False}, {"bias_correction": True}, {"weight_decay": 0.01}),
    "grad_averaging": ({"grad_averaging": False}, {"grad_averaging": True}, {"weight_decay": 0.01}),
    "always_adapt": ({"always_adapt": False}, {"always_adapt": True}, {"weight_decay": 0.0}),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_option_follows_the_formulas_and_matters(option):
    on, off, common = OPTIONS[option]
    want = lamb_reference(W0, GRADS, lr=0.05, **common, **on)
    _assert_matches(_run(W0, GRADS, lr=0.05, **common, **on), want)
    # an implementation that ignored the option would land on the default's result, far from `want`
    assert _gap(want, lamb_reference(W0, GRADS, lr=0.05, **common, **off)) > 1e-3


def test_gradient_clipping_takes_one_norm_over_all_groups():
    got = _run(W0, GRADS, split_groups=True, lr=0.05, weight_decay=0.01, max_grad_norm=0.5)
    _assert_matches(got, lamb_reference(W0, GRADS, lr=0.05, weight_decay=0.01, max_grad_norm=0.5))
    per_tensor = [lamb_reference([w], [[gs[i]] for gs in GRADS], lr=0.05, weight_decay=0.01, max_grad_norm=0.5)[0]
                  for i, w in enumerate(W0)]
    assert _gap([g.tolist() for g in got], per_tensor) > 1e-3      # not a clip per group or per tensor


def test_clipping_leaves_p_grad_alone():
    p = nn.Parameter(torch.ones(3, dtype=torch.float64))
    p.grad = torch.tensor([30.0, -40.0, 0.0], dtype=torch.float64)
    LAMB([p], max_grad_norm=1.0).step()
    assert torch.equal(p.grad, torch.tensor([30.0, -40.0, 0.0], dtype=torch.float64))


def test_always_adapt_off_keeps_the_trust_ratio_where_weights_decay():
    kw = {"lr": 0.05, "weight_decay": 0.01}
    _assert_matches(_run(W0, GRADS, always_adapt=False, **kw), lamb_reference(W0, GRADS, **kw))


def test_trust_clip_bounds_the_step_by_the_weight_norm():
    w = [[30.0, -40.0]]                                 # ||w|| = 50, ||u|| ~ sqrt(2): tau ~ 35 unclipped
    got = _run(w, [[[1.0, 1.0]]], lr=0.01, trust_clip=1.0)[0]
    step = (got - torch.tensor(w[0], dtype=torch.float64)).norm()
    assert step < 0.01 * 1.5                            # lr * ||u||, not lr * ||w||
    _assert_matches([got], lamb_reference(w, [[[1.0, 1.0]]], lr=0.01, trust_clip=1.0))


def test_low_precision_params_keep_float32_moments_through_state_dict():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(4, 3).to(torch.bfloat16))
    opt = LAMB([p], lr=1e-2)
    for _ in range(3):
        p.grad = torch.randn(4, 3).to(torch.bfloat16)
        opt.step()
    saved = opt.state_dict()
    fresh = LAMB([p], lr=1e-2)
    fresh.load_state_dict(saved)
    for key in ("exp_avg", "exp_avg_sq"):
        assert fresh.state[p][key].dtype == torch.float32
        assert torch.equal(fresh.state[p][key], saved["state"][0][key])
    assert fresh.state[p]["step"] == 3


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
    with pytest.raises(ValueError, match="trust_clip"):
        LAMB(p, trust_clip=True)                # a bool is refused: trust_clip=1.0 is timm's True
    with pytest.raises(ValueError, match="trust_clip"):
        LAMB([{"params": p, "trust_clip": 0.0}])
    with pytest.raises(ValueError, match="max_grad_norm"):
        LAMB(p, max_grad_norm=-1.0)
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
