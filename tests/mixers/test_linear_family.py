"""The math of the linear-attention / gated-recurrence mixers, pinned mechanism by mechanism
(the contract itself is checked for all of them by tests/conformance)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mixers._linear_common import taylor_feature_map
from attnzoo.mixers.base import RecurrentState
from attnzoo.mixers.layers import apply_rope
from attnzoo.mixers.lightning import lightning_log_decays
from attnzoo.ops.delta import delta_rule

FAMILY = ["linear", "based", "retnet", "lightning", "gla", "hgrn2", "mamba2", "deltanet", "gated_deltanet", "lawcat"]
D = 32


def build(name, seed=0, **kw):
    torch.manual_seed(seed)
    kwargs = {**attnzoo.get_card(name).example_kwargs, **kw}
    return attnzoo.build(name, d_model=D, **kwargs).double().eval()


def rand(B=2, T=13, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def set_impl(m, impl):
    for mod in m.modules():
        if hasattr(mod, "impl"):
            mod.impl = impl


# ---- decays and gates ----------------------------------------------------------------------
def test_retnet_decays_per_head():
    m = build("retnet", n_heads=4)
    want = torch.tensor([1 - 2.0**-5, 1 - 2.0**-6, 1 - 2.0**-7, 1 - 2.0**-8], dtype=torch.float64)
    torch.testing.assert_close(m.decays().double(), want, rtol=1e-7, atol=0)


def test_lightning_decay_formula_and_depth():
    # H = 4, layer 2 of 5: lambda_h = exp(-2^(-2h) (1 - 2/4 + 1e-5)), h = 1..4
    m = build("lightning", n_heads=4, layer_idx=2, n_layers=5)
    want = torch.tensor([math.exp(-(2.0 ** (-2 * h)) * (0.5 + 1e-5)) for h in range(1, 5)], dtype=torch.float64)
    torch.testing.assert_close(m.decays().double(), want, rtol=1e-7, atol=0)
    # deeper layers forget less; the last layer almost not at all
    lam = [lightning_log_decays(4, li, 5).exp() for li in range(5)]
    assert all((lam[i] < lam[i + 1]).all() for i in range(4))
    assert (lam[-1] > 1 - 1e-4).all()
    with pytest.raises(ValueError, match="layer_idx"):
        build("lightning", layer_idx=5, n_layers=5)


def test_hgrn2_key_is_one_minus_forget_gate():
    m = build("hgrn2", lower_bound=0.3)
    log_f, k = m.gates(rand() * 3)
    f = log_f.exp()
    torch.testing.assert_close(k, 1 - f, rtol=1e-10, atol=1e-12)
    assert (f >= 0.3 - 1e-12).all() and (f <= 1).all()
    with pytest.raises(ValueError, match="lower_bound"):
        build("hgrn2", lower_bound=1.0)


def test_taylor_feature_map_kernel():
    d = 6
    q, k = torch.randn(5, d, dtype=torch.float64), torch.randn(5, d, dtype=torch.float64)
    dot = (q * k).sum(-1)
    got = (taylor_feature_map(q) * taylor_feature_map(k)).sum(-1)
    torch.testing.assert_close(got, 1 + dot / math.sqrt(d) + dot**2 / (2 * d), rtol=1e-12, atol=1e-12)
    assert taylor_feature_map(q).shape[-1] == 1 + d + d * d


# ---- whole mixers against their parallel / naive forms --------------------------------------
def taylor_attention(q, k, v):
    """Σ_s a_ts v_s / Σ_s a_ts with a_ts = 1 + q·k/√d + (q·k)²/2d, causal; q, k [B,T,H,d], v [B,T,H,V]."""
    d = q.shape[-1]
    s = torch.einsum("bthd,bshd->bhts", q, k)
    a = (1 + s / math.sqrt(d) + s**2 / (2 * d)).tril()
    return torch.einsum("bhts,bshv->bthv", a, v) / (a.sum(-1).transpose(1, 2)[..., None] + 1e-6)


def test_linear_taylor_equals_quadratic_form():
    m = build("linear", feature_map="taylor", normalize=True)
    x = rand()
    B, T, _ = x.shape
    sh = (B, T, m.n_heads, m.head_dim)
    o = taylor_attention(m.q_proj(x).view(sh), m.k_proj(x).view(sh), m.v_proj(x).view(sh))
    torch.testing.assert_close(m(x), m.o_proj(o.reshape(B, T, -1)), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("fmap", ["identity", "relu", "elu", "taylor"])
def test_linear_unnormalized_equals_masked_kernel_product(fmap):
    """normalize=False: o_t = F^{-1/2} Σ_{s<=t} (phi(q_t)·phi(k_s)) v_s; prefix + state and left padding agree."""
    m = build("linear", feature_map=fmap, normalize=False)
    x = rand(T=10)
    B, T, _ = x.shape
    sh = (B, T, m.n_heads, m.head_dim)
    phi = {"identity": lambda u: u, "relu": torch.relu, "elu": lambda u: F.elu(u) + 1,
           "taylor": taylor_feature_map}[fmap]
    q, k = phi(m.q_proj(x).view(sh)), phi(m.k_proj(x).view(sh))
    a = torch.einsum("bthf,bshf->bhts", q, k).tril() * q.shape[-1] ** -0.5
    o = torch.einsum("bhts,bshv->bthv", a, m.v_proj(x).view(sh))
    y = m(x)
    torch.testing.assert_close(y, m.o_proj(o.reshape(B, T, -1)), rtol=1e-9, atol=1e-10)
    y1, s = m(x[:, :4], return_state=True)
    torch.testing.assert_close(torch.cat([y1, m(x[:, 4:], state=s)], 1), y, rtol=1e-9, atol=1e-10)
    mask = torch.ones(B, T + 3, dtype=torch.bool)
    mask[:, :3] = False
    yp = m(torch.cat([rand(T=3, seed=4) * 5, x], 1), mask=mask)
    torch.testing.assert_close(yp[:, 3:], y, rtol=1e-9, atol=1e-10)


def test_based_is_taylor_branch_plus_sliding_window():
    m = build("based")
    x = rand(T=19)
    B, T, _ = x.shape
    H, f = m.n_heads, m.feature_dim
    o = taylor_attention(m.q_proj(x).view(B, T, H, f), m.k_proj(x).view(B, T, H, f),
                         m.v_proj(x).view(B, T, H, m.head_dim))
    torch.testing.assert_close(m(x), m.o_proj(o.reshape(B, T, -1)) + m.swa(x), rtol=1e-9, atol=1e-10)


def decay_matrix(log_decay, T):
    """[H, T, T]: exp((t - s) log_decay_h) for s <= t, else 0."""
    t = torch.arange(T, dtype=torch.float64)
    diff = (t[:, None] - t[None, :])
    return torch.where(diff >= 0, torch.exp(diff * log_decay.double()[:, None, None]), 0.0)


def test_retnet_equals_parallel_retention():
    m = build("retnet", n_heads=2)
    x = rand()
    B, T, _ = x.shape
    H, dk, dv = m.n_heads, m.head_dim, m.v_dim
    pos = torch.arange(T).expand(B, T)
    q = apply_rope(m.q_proj(x).view(B, T, H, dk), pos)
    k = apply_rope(m.k_proj(x).view(B, T, H, dk), pos)
    v = m.v_proj(x).view(B, T, H, dv)
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64))
    ret = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(dk) * decay_matrix(gamma.log(), T)
    o = torch.einsum("bhts,bshv->bthv", ret, v)
    o = F.layer_norm(o, (dv,), eps=m.group_norm.eps) * m.group_norm.weight + m.group_norm.bias
    want = m.o_proj(F.silu(m.g_proj(x)) * o.reshape(B, T, -1))
    torch.testing.assert_close(m(x), want, rtol=1e-9, atol=1e-10)


def test_lightning_equals_parallel_form():
    m = build("lightning", n_heads=2, layer_idx=0, n_layers=3)
    x = rand()
    B, T, _ = x.shape
    H, Dh = m.n_heads, m.head_dim
    q, k, v, u = m.qkvu_proj(x).view(B, T, H, 4 * Dh).chunk(4, -1)
    att = torch.einsum("bthd,bshd->bhts", F.silu(q), F.silu(k)) * decay_matrix(m.log_decay, T)
    o = torch.einsum("bhts,bshv->bthv", att, v).reshape(B, T, -1)
    o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(m(x), m.o_proj(o * u.reshape(B, T, -1)), rtol=1e-9, atol=1e-10)


def test_mamba2_equals_naive_selective_scan():
    m = build("mamba2")
    x = rand(T=11)
    B, T, _ = x.shape
    H, P, N, di = m.n_heads, m.head_dim, m.d_state, m.d_inner
    z, xbc, dt = m.in_proj(x).split([di, di + 2 * N, H], -1)
    W = m.conv.kernel_size
    xbc = F.conv1d(F.pad(xbc.transpose(1, 2), (W - 1, 0)), m.conv.weight[:, None], m.conv.bias,
                   groups=xbc.shape[-1])
    xs, Bm, Cm = F.silu(xbc.transpose(1, 2)).split([di, N, N], -1)
    xs = xs.reshape(B, T, H, P)
    delta = F.softplus(dt + m.dt_bias)
    A = -torch.exp(m.A_log)
    h = torch.zeros(B, H, P, N, dtype=x.dtype)
    ys = []
    for t in range(T):
        dA = torch.exp(delta[:, t] * A)[..., None, None]
        h = dA * h + (delta[:, t, :, None] * xs[:, t])[..., None] * Bm[:, t, None, None, :]
        ys.append((h * Cm[:, t, None, None, :]).sum(-1) + m.D[:, None] * xs[:, t])
    y = torch.stack(ys, 1).reshape(B, T, di) * F.silu(z)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight
    torch.testing.assert_close(m(x), m.out_proj(y), rtol=1e-9, atol=1e-10)


def test_gated_deltanet_with_alpha_one_is_deltanet():
    gdn = build("gated_deltanet")
    dn = build("deltanet", seed=5)
    missing, unexpected = dn.load_state_dict(gdn.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"a_proj.weight", "dt_bias", "A_log", "g_proj.weight"}
    with torch.no_grad():
        gdn.A_log.fill_(-80.0)  # exp(A_log) ~ 1e-35: alpha = exp(g) = 1 to double precision
    x = rand()
    q, k, v, beta, g, _ = gdn.projections(x)
    q2, k2, v2, beta2, g2, _ = dn.projections(x)
    assert g2 is None and (g <= 0).all() and (g > -1e-30).all()
    for a, b in ((q, q2), (k, k2), (v, v2), (beta, beta2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    o, S = delta_rule(q, k, v, beta, g, output_final_state=True, impl="reference")
    o2, S2 = delta_rule(q2, k2, v2, beta2, None, output_final_state=True, impl="reference")
    torch.testing.assert_close(o, o2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, S2, rtol=1e-12, atol=1e-12)
    # and with its learned gate it does forget: the state shrinks compared to alpha = 1
    gdn2 = build("gated_deltanet")
    _, s_forget = gdn2(x, return_state=True)
    assert s_forget.S.norm() < S.norm()


@pytest.mark.parametrize("name,kw", [("linear", {"feature_map": "elu"}), ("lawcat", {})])
def test_normalized_output_is_convex_combination_of_values(name, kw):
    """With v and o projections set to the identity, a normalised map with positive features (and a
    gate on state and normaliser alike) outputs a weighted mean of the values seen so far (weights
    sum to den / (den + eps) <= 1, so the hull includes 0)."""
    m = build(name, **kw)
    with torch.no_grad():
        m.v_proj.weight.copy_(torch.eye(D))
        m.o_proj.weight.copy_(torch.eye(D))
    x = rand(T=15) * 2
    y = m(x)
    lo, hi = x.cummin(1).values.clamp(max=0), x.cummax(1).values.clamp(min=0)
    assert (y >= lo - 1e-12).all() and (y <= hi + 1e-12).all()
    torch.testing.assert_close(y[:, 0], x[:, 0], rtol=1e-3, atol=1e-4)  # one value seen: weight ~1
    assert (y - x).abs().max() > 1e-2  # not trivially the input


def test_lawcat_feature_map_is_shared_by_q_and_k():
    m = build("lawcat", conv_init="identity")
    x = rand(T=6)
    # identical q and k projections give identical features: one phi for both
    with torch.no_grad():
        m.k_proj.weight.copy_(m.q_proj.weight)
    qk = torch.cat([m.q_proj(x), m.k_proj(x)], -1)
    y, _ = m.qk_conv(qk)
    torch.testing.assert_close(y, qk, rtol=0, atol=0)  # the conv starts as the identity
    q, k = y.view(2, 6, 2, m.n_heads, m.head_dim).unbind(2)
    torch.testing.assert_close(m.phi(q), m.phi(k), rtol=0, atol=0)
    assert (m.phi(q) > 0).all() and m.phi(q).shape[-1] == 2 * m.feature_dim


# ---- implementations and state sizes --------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY)
def test_reference_impl_equals_torch_impl(name):
    m = build(name)
    x = rand(T=21).requires_grad_(True)
    outs, grads = [], []
    for impl in ("reference", "torch"):
        set_impl(m, impl)
        y1, s = m(x[:, :9], return_state=True)
        y2 = m(x[:, 9:], state=s)
        y = torch.cat([y1, y2], 1)
        (gx,) = torch.autograd.grad((y * torch.linspace(-1, 1, D, dtype=y.dtype)).sum(), x)
        outs.append(y.detach())
        grads.append(gx)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in FAMILY if n != "based"])
def test_state_bytes_match_the_state(name):
    m = build(name).float()
    _, s = m(rand(B=1, T=5).float(), return_state=True)
    assert isinstance(s, RecurrentState)
    held = sum(t.numel() * t.element_size() for t in (s.S, s.conv, s.extra) if t is not None)
    assert m.state_bytes(5) == held == m.state_bytes(5000)


@pytest.mark.parametrize("name", FAMILY)
def test_card_state_bytes_match_default_instance(name):
    kw = {} if name == "mamba2" else {"n_heads": 4}
    m = attnzoo.build(name, d_model=64, **kw)
    card = attnzoo.get_card(name)
    assert card.state_bytes(64, m.n_heads, 100) == m.state_bytes(100)


def test_based_without_window_is_taylor_attention_alone():
    """window=0 (Zoology's Figure 2 Based): no sliding-window branch, no KV cache, state continues."""
    import pytest

    m = attnzoo.build("based", d_model=16, n_heads=1, feature_dim=4, window=0)
    x = torch.randn(2, 20, 16)
    y1, s = m(x[:, :12], return_state=True)
    assert s.window is None and m.swa is None
    torch.testing.assert_close(torch.cat([y1, m(x[:, 12:], state=s)], 1), m(x), atol=1e-5, rtol=1e-5)
    y_lin, _ = m.taylor_branch(x, None, None, False)
    torch.testing.assert_close(m(x), y_lin)
    assert m.state_bytes(64) == m.state_bytes(4096)          # constant in T: no cache
    with pytest.raises(ValueError, match="window must be an integer >= 0"):
        attnzoo.build("based", d_model=16, window=-1)
