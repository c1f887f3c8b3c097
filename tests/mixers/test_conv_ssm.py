"""Mechanism tests for base_conv, h3, mamba, rwkv6 and the bidirectional wrapper.

Each mixer is compared with a plain loop over time written here from the paper's formula, using
the module's own parameters (float64), so a wrong kernel, discretisation or shift shows up.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mixers.base_conv import BaseConv
from attnzoo.mixers.bidirectional import Bidirectional, bidirectional
from attnzoo.mixers.h3 import H3
from attnzoo.mixers.mamba import Mamba
from attnzoo.mixers.rwkv6 import RWKV6TimeMix
from attnzoo.ops.conv import direct_causal_conv

D = 16


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def jitter(m, scale=0.1, seed=0):
    """Perturb every parameter so that zero/one-initialised paths are exercised too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return m


def no_grad_run(m, x, **kw):
    with torch.no_grad():
        return m(x, **kw)


# ---- base_conv ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{"kernel_size": 3}, {"kernel_size": -1, "l_max": 12, "long_kernel": "direct"},
                                {"kernel_size": -1, "l_max": 12, "long_kernel": "implicit", "use_act": True}])
def test_base_conv_is_projection_times_conv_plus_input(kw):
    torch.manual_seed(0)
    m = BaseConv(D, **kw).double()
    x = rand(2, 17, D, seed=1)
    if m.kernel_size == -1:
        conv = direct_causal_conv(x, m.long_conv_kernel())
    else:
        conv = direct_causal_conv(x, m.conv_weight.flip(-1)) + m.conv_bias
    p = m.projection(x)
    if m.use_act:
        p, conv = F.silu(p), F.silu(conv)
    assert torch.allclose(no_grad_run(m, x), p * conv + x, atol=1e-12)


def test_base_conv_long_fft_equals_direct_and_decodes():
    torch.manual_seed(1)
    m = BaseConv(D, kernel_size=-1, l_max=90, conv_impl="fft").double()
    x = rand(2, 100, D, seed=2)
    y_fft = no_grad_run(m, x)
    m.conv_impl = "direct"
    assert torch.allclose(y_fft, no_grad_run(m, x), atol=1e-10)
    m.conv_impl = "auto"
    y1, s = no_grad_run(m, x[:, :70], return_state=True)
    ys = [y1]
    for t in range(70, 100):
        y, s = no_grad_run(m, x[:, t : t + 1], state=s, return_state=True)
        ys.append(y)
    assert torch.allclose(torch.cat(ys, 1), y_fft, atol=1e-10)
    assert s.cache.shape == (2, 89, D)


def test_implicit_filter_decays_and_bad_args_raise():
    m = BaseConv(D, kernel_size=-1, l_max=64, long_kernel="implicit")
    k = m.long_conv_kernel().detach()
    assert k.shape == (D, 64)
    fast = k[-1]  # the channel with the largest decay rate
    assert fast[-16:].abs().max() < 1e-3 * max(fast[:4].abs().max().item(), 1e-3) + 1e-6
    for bad in ({"kernel_size": 0}, {"kernel_size": -1, "long_kernel": "fourier"}, {"kernel_size": -1, "l_max": 0}):
        with pytest.raises(ValueError):
            BaseConv(D, **bad)


# ---- h3 -------------------------------------------------------------------------------------
def h3_loop(m: H3, x):
    """O = Qᵀ SSM_diag(K̄ Vᵀ) with the shift FIR and the diagonal recurrence written out step by step."""
    B, T, d = x.shape
    H, dh, N = m.n_heads, m.head_dim, m.d_state
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    kbar = torch.stack([sum(m.shift_c[:, i] * k[:, t - i] for i in range(min(N, t + 1))) for t in range(T)], 1)
    kbar = kbar + m.shift_d * k
    A = torch.complex(-torch.exp(m.log_neg_A_re), m.A_im)
    dt = torch.exp(m.log_dt)[:, None]
    Abar = torch.exp(dt * A)
    Bbar = (Abar - 1) / A * torch.view_as_complex(m.B.contiguous())
    C = torch.view_as_complex(m.C.contiguous())
    h = torch.zeros(B, m.channels, N // 2, dtype=torch.complex128)
    out = []
    for t in range(T):
        kv = (kbar[:, t].view(B, H, dh, 1) * v[:, t].view(B, H, 1, dh)).reshape(B, -1)
        h = Abar * h + Bbar * kv[..., None]
        y = 2 * (C * h).sum(-1).real + m.D * kv
        out.append(torch.einsum("bhi,bhij->bhj", q[:, t].view(B, H, dh), y.view(B, H, dh, dh)).reshape(B, d))
    return m.out_proj(torch.stack(out, 1))


@pytest.mark.parametrize("head_dim", [1, 2])
def test_h3_equals_step_by_step_loop(head_dim):
    torch.manual_seed(2)
    m = jitter(H3(D, d_state=6, head_dim=head_dim).double(), seed=3)
    x = rand(2, 13, D, seed=4)
    with torch.no_grad():
        ref = h3_loop(m, x)
        for impl in ("fft", "direct", "recurrent"):
            m.ssm_impl = impl
            assert torch.allclose(m(x), ref, atol=1e-10), impl


def test_h3_recurrent_step_equals_fft_path_with_state_and_padding():
    torch.manual_seed(3)
    m = jitter(H3(D, d_state=8, head_dim=2, ssm_impl="fft").double(), seed=5)
    x = rand(2, 80, D, seed=6)
    y_fft, s_fft = no_grad_run(m, x, return_state=True)
    m.ssm_impl = "recurrent"
    y_rec, s_rec = no_grad_run(m, x, return_state=True)
    assert torch.allclose(y_fft, y_rec, atol=1e-9) and torch.allclose(s_fft.ssm, s_rec.ssm, atol=1e-9)
    m.ssm_impl = "fft"  # prefill 50 by FFT, then one step at a time through the recurrent step
    _, s = no_grad_run(m, x[:, :50], return_state=True)
    m.ssm_impl = "auto"
    ys = [no_grad_run(m, x[:, t : t + 1], state=s, return_state=True) for t in range(50, 51)]
    y, s = ys[0]
    steps = [y]
    for t in range(51, 80):
        y, s = no_grad_run(m, x[:, t : t + 1], state=s, return_state=True)
        steps.append(y)
    assert torch.allclose(torch.cat(steps, 1), y_fft[:, 50:], atol=1e-9)
    # left padding through the FFT path: the final state only sees the real tokens
    m.ssm_impl = "fft"
    xp = torch.cat([rand(2, 7, D, seed=7) * 5, x], 1)
    mask = torch.ones(2, 87, dtype=torch.bool)
    mask[:, :7] = False
    yp, sp = no_grad_run(m, xp, mask=mask, return_state=True)
    assert torch.allclose(yp[:, 7:], y_fft, atol=1e-9) and torch.allclose(sp.ssm, s_fft.ssm, atol=1e-9)


def test_h3_init_is_s4d_lin_and_dt_log_uniform():
    m = H3(D, d_state=8)
    A = torch.complex(-torch.exp(m.log_neg_A_re), m.A_im).detach()
    assert torch.allclose(A.real, torch.full_like(A.real, -0.5))
    assert torch.allclose(A.imag[0], math.pi * torch.arange(4.0))
    dt = torch.exp(m.log_dt)
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 1e-1 + 1e-9
    with pytest.raises(ValueError, match="even"):
        H3(D, d_state=5)


# ---- mamba ----------------------------------------------------------------------------------
def mamba_loop(m: Mamba, x):
    B, T, _ = x.shape
    u, z = m.in_proj(x).chunk(2, -1)
    W = m.d_conv
    uc = torch.stack([sum(m.conv_weight[:, W - 1 - i] * u[:, t - i] for i in range(min(W, t + 1)))
                      for t in range(T)], 1)
    uc = F.silu(uc + m.conv_bias)
    A = -torch.exp(m.A_log)
    h = torch.zeros(B, m.d_inner, m.d_state, dtype=x.dtype)
    ys = []
    for t in range(T):
        dt, Bt, Ct = m.x_proj(uc[:, t]).split([m.dt_rank, m.d_state, m.d_state], -1)
        delta = F.softplus(dt @ m.dt_proj.weight.T + m.dt_proj.bias)
        h = torch.exp(delta[..., None] * A) * h + (delta * uc[:, t])[..., None] * Bt[:, None]
        ys.append(((h * Ct[:, None]).sum(-1) + m.D * uc[:, t]) * F.silu(z[:, t]))
    return m.out_proj(torch.stack(ys, 1))


@pytest.mark.parametrize("T", [1, 9, 23])
def test_mamba_equals_loop(T):
    torch.manual_seed(4)
    m = jitter(Mamba(D, d_state=4, expand=2, chunk_size=8).double(), seed=8)
    x = rand(2, T, D, seed=9)
    with torch.no_grad():
        assert torch.allclose(m(x), mamba_loop(m, x), atol=1e-10)


def test_mamba_chunked_scan_gradients_equal_reference_scan():
    torch.manual_seed(5)
    m = Mamba(D, d_state=4, expand=2, chunk_size=4).double()
    x = rand(2, 11, D, seed=10).requires_grad_()
    w = rand(2, 11, D, seed=11)
    grads = []
    for impl in ("reference", "torch"):
        m.impl = impl
        m.zero_grad()
        gx, = torch.autograd.grad((m(x) * w).sum(), x, retain_graph=False)
        y = m(x)
        (y * w).sum().backward()
        grads.append([gx] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_mamba_init_and_args():
    m = Mamba(32, d_state=16, expand=4)
    assert m.d_inner == 128 and m.dt_rank == 2
    assert torch.allclose(-torch.exp(m.A_log[0]), -torch.arange(1.0, 17.0))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    with pytest.raises(ValueError):
        Mamba(32, d_state=0)


# ---- rwkv6 ----------------------------------------------------------------------------------
def rwkv6_loop(m: RWKV6TimeMix, x):
    B, T, d = x.shape
    H, K = m.n_heads, m.head_dim
    S = torch.zeros(B, H, K, K, dtype=x.dtype)
    prev = torch.zeros(B, d, dtype=x.dtype)
    outs = []
    for t in range(T):
        xt = x[:, t]
        dx = prev - xt
        low = torch.tanh((xt + dx * m.mu_x) @ m.mix_A).view(B, 5, -1)
        xs = [xt + dx * (m.mu[i] + low[:, i] @ m.mix_B[i]) for i in range(5)]  # w, k, v, r, g
        w = torch.exp(-torch.exp(m.decay + torch.tanh(xs[0] @ m.decay_A) @ m.decay_B)).view(B, H, K)
        k, v, r = (m.__getattr__(n)(xi).view(B, H, K) for n, xi in zip(("W_k", "W_v", "W_r"), xs[1:4]))
        g = F.silu(m.W_g(xs[4]))
        kv = k[..., :, None] * v[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", r, S + m.bonus[None, :, :, None] * kv)
        S = w[..., None] * S + kv
        outs.append(m.W_o(m.norm(o.reshape(B, d)) * g))
        prev = xt
    return torch.stack(outs, 1), S


def test_rwkv6_equals_direct_loop_with_state():
    torch.manual_seed(6)
    m = jitter(RWKV6TimeMix(D, n_heads=2, mix_rank=3, decay_rank=5).double(), scale=0.3, seed=12)
    x = rand(2, 15, D, seed=13)
    ref, S_ref = rwkv6_loop(m, x)
    with torch.no_grad():
        y, s = m(x, return_state=True)
        assert torch.allclose(y, ref, atol=1e-10) and torch.allclose(s.S, S_ref, atol=1e-10)
        assert torch.equal(s.shift, x[:, -1])
        y1, s1 = m(x[:, :6], return_state=True)
        y2 = m(x[:, 6:], state=s1)
    assert torch.allclose(torch.cat([y1, y2], 1), ref, atol=1e-10)


def test_rwkv6_decay_is_in_unit_interval_and_data_dependent():
    torch.manual_seed(7)
    m = jitter(RWKV6TimeMix(D, n_heads=2, mix_rank=3, decay_rank=5).double(), scale=0.3, seed=14)
    x = rand(1, 6, D, seed=15)
    x_prev = torch.cat([torch.zeros(1, 1, D, dtype=x.dtype), x[:, :-1]], 1)
    *_, logw = m.projections(x, x_prev)
    w = torch.exp(logw)
    assert (w > 0).all() and (w < 1).all()
    assert (w[0, 1] - w[0, 2]).abs().max() > 1e-6, "the decay should change with the input"


# ---- bidirectional --------------------------------------------------------------------------
def test_bidirectional_is_forward_plus_reversed_run_and_sees_the_future():
    torch.manual_seed(8)
    bi = bidirectional("rwkv6", d_model=D, merge="sum", mixer_kwargs={"n_heads": 2, "mix_rank": 3, "decay_rank": 5})
    bi = bi.double()
    x = rand(2, 12, D, seed=16)
    with torch.no_grad():
        y = bi(x)
        want = bi.forward_mixer(x) + bi.backward_mixer(x.flip(1)).flip(1)
        assert torch.allclose(y, want, atol=1e-12)
        x2 = x.clone()
        x2[:, 8:] += 1.0
        assert (bi(x2)[:, 0] - y[:, 0]).abs().max() > 1e-6, "position 0 must depend on later tokens"
        mask = torch.ones(2, 15, dtype=torch.bool)
        mask[0, :3] = False
        mask[1, 12:] = False
        xp = torch.cat([rand(2, 3, D, seed=17), x], 1)
        xp[1] = torch.cat([x[1], rand(3, D, seed=18)], 0)
        yp = bi(xp, mask=mask)
        assert torch.allclose(yp[0, 3:], y[0], atol=1e-10) and torch.allclose(yp[1, :12], y[1], atol=1e-10)


def test_bidirectional_merges_and_refusals():
    torch.manual_seed(9)
    inner = Mamba(D, d_state=4, expand=2).double()
    x = rand(2, 9, D, seed=19)
    with torch.no_grad():
        mean = bidirectional(inner, merge="mean")
        assert torch.allclose(mean(x), 0.5 * (inner(x) + mean.backward_mixer(x.flip(1)).flip(1)), atol=1e-12)
        shared = bidirectional(inner, merge="sum", shared=True)
        assert torch.allclose(shared(x), inner(x) + inner(x.flip(1)).flip(1), atol=1e-12)
        cat = bidirectional(inner, merge="concat").double()
        assert cat(x).shape == x.shape and cat.merge_proj.in_features == 2 * D
    with pytest.raises(ValueError, match="not causal"):
        mean(x, state=None, return_state=True)
    with pytest.raises(ValueError, match="causal"):
        Bidirectional(D, mixer="bi_mamba", mixer_kwargs={"mixer_kwargs": {"d_state": 4}})
    with pytest.raises(ValueError, match="merge"):
        bidirectional(inner, merge="max")
    with pytest.raises(ValueError, match="d_model"):
        bidirectional("mamba")
    card = attnzoo.get_card("bi_mamba")
    assert not card.causal and not card.decode and card.bidirectional
