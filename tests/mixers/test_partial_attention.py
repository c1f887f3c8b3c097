import pytest
import torch

import attnzoo
from attnzoo.analysis.prefix_mass import attention_probs, prefix_mass, prefix_mass_per_step
from attnzoo.mixers.layers import apply_rope

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def build(prefix_len, seed=0, **kw):
    torch.manual_seed(seed)
    return attnzoo.build("partial_attention", d_model=16, n_heads=2, prefix_len=prefix_len, **kw).double()


def dense_attention(q, k, v, allowed):
    s = torch.einsum("bihd,bjhd->bhij", q, k) / q.shape[-1] ** 0.5
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)


def test_matches_a_dense_reference():
    P, T = 5, 11
    m = build(P)
    x = rand(2, T, 16, seed=1)
    B, H, D = 2, 2, 8
    pos = torch.arange(T).expand(B, T)
    q = apply_rope(m.q_proj(x).view(B, T, H, D), pos)
    k = apply_rope(m.k_proj(x).view(B, T, H, D), pos)
    v = m.v_proj(x).view(B, T, H, D)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    prefix_lm = (j <= i) | (j < P)
    o = dense_attention(q, k, v, prefix_lm)
    pq, pk, pv = (f(x).view(B, T, H, D) for f in (m.partial_q, m.partial_k, m.partial_v))
    op = dense_attention(pq, pk, pv, (j < P).expand(T, T))
    want = m.o_proj(o.reshape(B, T, 16)) + m.partial_o(op.reshape(B, T, 16))
    torch.testing.assert_close(m(x), want)


def test_prefix_is_bidirectional_and_the_target_causal():
    P, T = 6, 12
    m = build(P)
    x = rand(1, T, 16, seed=1)
    y = m(x)
    x2 = x.clone()
    x2[:, P - 1] += 1.0  # last source token: every output changes
    assert bool(((m(x2) - y).abs().sum(-1) > 0).all())
    x3 = x.clone()
    x3[:, P + 2] += 1.0  # a target token: only it and later positions change
    changed = (m(x3) - y).abs().sum(-1)[0] > 0
    assert torch.equal(changed, torch.arange(T) >= P + 2)


def test_prefix_len_zero_is_causal_softmax_with_a_kv_cache():
    m = build(0)
    assert m.causal
    ref = attnzoo.build("softmax", d_model=16, n_heads=2).double()
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("partial_")})
    x = rand(2, 9, 16, seed=2)
    torch.testing.assert_close(m(x), ref(x))
    y1, s = m(x[:, :4], return_state=True)
    torch.testing.assert_close(torch.cat([y1, m(x[:, 4:], state=s)], 1), m(x))


def test_nonzero_prefix_refuses_state_and_bad_prefix_len():
    m = build(4)
    assert not m.causal
    with pytest.raises(ValueError, match="not causal"):
        m(rand(1, 6, 16), return_state=True)
    with pytest.raises(ValueError, match="prefix_len"):
        build(-1)


def test_prefix_mass_sums_probabilities_on_the_prefix():
    p = torch.softmax(rand(2, 3, 7, 7, seed=5), -1)
    torch.testing.assert_close(prefix_mass(p, 3), p[..., :3].sum(-1).mean((0, 1)))
    with pytest.raises(ValueError):
        prefix_mass(p, 8)


def test_prefix_mass_per_step_on_a_causal_lm_mixer_and_on_partial_attention():
    x = rand(1, 10, 16, seed=3)
    torch.manual_seed(0)
    soft = attnzoo.build("softmax", d_model=16, n_heads=2).double()
    probs = attention_probs(soft, x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 10, dtype=F64))
    assert bool((probs.triu(1) == 0).all())  # causal
    mass = prefix_mass_per_step(soft, x, prefix_len=4)
    assert mass.shape == (6,) and bool(((mass > 0) & (mass < 1)).all())
    pa = build(4)
    probs = attention_probs(pa, x)
    assert bool((probs[..., :4, :4] > 0).all())  # bidirectional over the prefix
    assert bool((probs[..., 5, 6:] == 0).all())
    with pytest.raises(ValueError):
        prefix_mass_per_step(pa, x, prefix_len=10)
