"""RWKV-7: the mixer (chunked DPLR path) against the paper's equations run token by token in float64, in the
paper's orientation (wkv [V, K], row vectors), with padding, state continuation and gradients; the decay range
(the contract itself is in tests/conformance)."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnzoo

D, H = 16, 2


def _make(impl="torch", seed=0):
    torch.manual_seed(seed)
    m = attnzoo.build("rwkv7", d_model=D, n_heads=H, decay_rank=4, iclr_rank=4, gate_rank=4, impl=impl).double()
    with torch.no_grad():  # move the parameters off their init so that every term matters
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.train()


def _paper_loop(m, x, mask=None):
    """wkv_t = wkv_{t-1} (diag(w_t) - κ̂_tᵀ (a_t ⊙ κ̂_t)) + v_tᵀ k̃_t; p_t = LN(r_t wkv_tᵀ) + (r_t·(ρ ⊙ k̃_t)) v_t;
    y_t = (g_t ⊙ p_t) W_o, with the token shift reading the previous real token; padded steps skipped."""
    B, T, _ = x.shape
    K = D // H
    wkv = torch.zeros(B, H, K, K, dtype=torch.float64)  # [V, K] per head
    prev = torch.zeros(B, D, dtype=torch.float64)
    ys = []
    for t in range(T):
        xt = x[:, t]
        xs = [xt + (prev - xt) * m.mu[i] for i in range(6)]  # r, d, k, v, a, g
        r, k, v = m.W_r(xs[0]), m.W_k(xs[2]), m.W_v(xs[3])
        a = torch.sigmoid(m.iclr_bias + xs[4] @ m.iclr_A @ m.iclr_B)
        w = torch.exp(-math.exp(-0.5) * torch.sigmoid(m.decay_bias + torch.tanh(xs[1] @ m.decay_A) @ m.decay_B))
        g = torch.sigmoid(xs[5] @ m.gate_A) @ m.gate_B
        kappa = F.normalize((k * m.removal_scale).view(B, H, K), dim=-1)
        k_rep = (k * (1 + (a - 1) * m.replacement_mix)).view(B, H, K)
        r, v, a, w = r.view(B, H, K), v.view(B, H, K), a.view(B, H, K), w.view(B, H, K)
        G = torch.diag_embed(w) - kappa[..., :, None] * (a * kappa)[..., None, :]      # κ̂ᵀ (a ⊙ κ̂)
        new = wkv @ G + v[..., :, None] * k_rep[..., None, :]                          # + vᵀ k̃
        real = torch.ones(B, dtype=torch.bool) if mask is None else mask[:, t]
        wkv = torch.where(real[:, None, None, None], new, wkv)
        read = (wkv @ r[..., None])[..., 0]                                             # r wkvᵀ
        p = m.norm(read.reshape(B, D)) + ((r * m.bonus * k_rep).sum(-1, keepdim=True) * v).reshape(B, D)
        ys.append(m.W_o(g * p))
        prev = torch.where(real[:, None], xt, prev)
    return torch.stack(ys, 1), wkv


@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("T", [1, 9, 40])
def test_mixer_matches_the_paper_equations(impl, T):
    m = _make(impl)
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y, s = m(x, return_state=True)
        y_ref, wkv = _paper_loop(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s.S, wkv.transpose(-1, -2), rtol=1e-10, atol=1e-10)  # S = wkvᵀ


def test_padding_and_state_match_the_paper_equations():
    m = _make()
    x = torch.randn(2, 14, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 6:9] = False  # a hole: the shift reads the last real token across it
    with torch.no_grad():
        y1, s = m(x[:, :8], mask=mask[:, :8], return_state=True)
        y2 = m(x[:, 8:], mask=mask[:, 8:], state=s)
        y_ref, _ = _paper_loop(m, x, mask)
    y = torch.cat([y1, y2], 1)
    torch.testing.assert_close(y[mask], y_ref[mask], rtol=1e-10, atol=1e-10)


def test_gradients_match_the_paper_equations():
    m = _make()
    x = torch.randn(2, 11, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 11, D, dtype=torch.float64)
    params = list(m.parameters())
    got = torch.autograd.grad((m(x) * w).sum(), [x, *params])
    want = torch.autograd.grad((_paper_loop(m, x)[0] * w).sum(), [x, *params])
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for n, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda s, n=n: f"{n}: {s}")


def test_decay_stays_in_the_papers_range_and_bad_arguments():
    m = _make()
    x = torch.randn(1, 5, D, dtype=torch.float64) * 30
    logw = m.branches(x, torch.zeros_like(x))[1]
    w = logw.exp()
    assert (w > math.exp(-math.exp(-0.5)) - 1e-12).all() and (w < 1).all()
    with pytest.raises(ValueError, match="rank"):
        attnzoo.build("rwkv7", d_model=D, n_heads=H, decay_rank=0)
    s = attnzoo.build("rwkv7", d_model=D, n_heads=H)(torch.randn(1, 3, D), return_state=True)[1]
    with pytest.raises(ValueError, match="state"):
        attnzoo.build("rwkv7", d_model=D, n_heads=4)(torch.randn(1, 3, D), state=s)
