"""FoX (forgetting attention): the torch path against the term-by-term float64 reference, its cache and
padding rules, and the mixer against the formula (the contract itself is in tests/conformance)."""

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.ops.softmax.forgetting import forgetting_attention, forgetting_attention_reference


def _inputs(B=2, T=9, H=2, D=4, seed=0, dtype=torch.float64, gate_shift=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    log_f = F.logsigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64) * 2 + gate_shift).to(dtype)
    return q, k, v, log_f


def _naive(q, k, v, log_f):
    """The formula as written, one query and key at a time (float64)."""
    B, T, H, D = q.shape
    o = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                logits = torch.stack([q[b, i, h] @ k[b, j, h] / D**0.5 + log_f[b, j + 1: i + 1, h].sum()
                                      for j in range(i + 1)])
                o[b, i, h] = torch.softmax(logits, 0) @ v[b, : i + 1, h]
    return o


def test_reference_is_the_formula():
    q, k, v, log_f = _inputs(B=1, T=6)
    o, _ = forgetting_attention_reference(q, k, v, log_f)
    torch.testing.assert_close(o, _naive(q, k, v, log_f), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("gate_shift", [-3.0, 4.0])  # strong and weak forgetting
def test_torch_path_matches_reference(T, gate_shift):
    q, k, v, log_f = _inputs(T=T, gate_shift=gate_shift)
    o_ref, d_ref = forgetting_attention_reference(q, k, v, log_f, output_decay=True)
    o, d = forgetting_attention(q, k, v, log_f, output_decay=True, impl="torch")
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d, d_ref, rtol=1e-10, atol=1e-10)
    q32, k32, v32, f32 = (t.float() for t in (q, k, v, log_f))
    o32, _ = forgetting_attention(q32, k32, v32, f32, impl="torch")
    assert ((o32.double() - o_ref).abs().max() / o_ref.abs().max()) < 1e-5


def test_gradients_match_reference():
    q, k, v, log_f = (t.requires_grad_(True) for t in _inputs(T=8))
    w = torch.randn(2, 8, 2, 4, dtype=torch.float64)
    g_ref = torch.autograd.grad((forgetting_attention_reference(q, k, v, log_f)[0] * w).sum(), (q, k, v, log_f))
    g = torch.autograd.grad((forgetting_attention(q, k, v, log_f, impl="torch")[0] * w).sum(), (q, k, v, log_f))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_cache_continues_the_sequence(impl):
    """Keys cached with their decays, then new queries: equal to one call over the whole sequence."""
    q, k, v, log_f = _inputs(T=11)
    full, _ = forgetting_attention(q, k, v, log_f, impl=impl)
    t = 4
    _, decay = forgetting_attention(q[:, :t], k[:, :t], v[:, :t], log_f[:, :t], output_decay=True, impl=impl)
    o2, _ = forgetting_attention(q[:, t:], k, v, log_f[:, t:], cache_decay=decay, impl=impl)
    torch.testing.assert_close(o2, full[:, t:], rtol=1e-10, atol=1e-10)


def test_a_gate_of_one_is_plain_causal_softmax():
    from attnzoo.ops.softmax import softmax_attention

    q, k, v, _ = _inputs(T=10)
    o, _ = forgetting_attention(q, k, v, torch.zeros(2, 10, 2, dtype=torch.float64), impl="torch")
    torch.testing.assert_close(o, softmax_attention(q, k, v, causal=True, impl="reference"))


def test_masked_keys_are_never_seen_and_a_blind_query_gets_zeros():
    q, k, v, log_f = _inputs(T=6)
    key_mask = torch.ones(2, 6, dtype=torch.bool)
    key_mask[0, :2] = False
    o, _ = forgetting_attention(q, k, v, log_f, key_mask=key_mask, impl="torch")
    o_ref, _ = forgetting_attention_reference(q, k, v, log_f, key_mask=key_mask)
    torch.testing.assert_close(o, o_ref)
    assert o[0, :2].abs().max() == 0                   # queries 0 and 1 of row 0 see only masked keys
    k2 = k.clone()
    k2[0, :2] = 1e3                                    # a masked key's content changes nothing
    torch.testing.assert_close(forgetting_attention(q, k2, v, log_f, key_mask=key_mask)[0], o)


def test_bad_arguments_raise():
    q, k, v, log_f = _inputs(T=5)
    with pytest.raises(ValueError, match="log_f"):
        forgetting_attention(q, k, v, log_f[..., :1])
    with pytest.raises(ValueError, match="cache_decay"):
        forgetting_attention(q[:, 2:], k, v, log_f[:, 2:])
    with pytest.raises(ValueError, match="key_mask"):
        forgetting_attention(q, k, v, log_f, key_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="[Tt]riton"):
        forgetting_attention(q, k, v, log_f, impl="triton")


def test_mixer_equals_the_formula_and_the_gate_is_per_head():
    torch.manual_seed(0)
    m = attnzoo.build("fox", d_model=16, n_heads=2).double().eval()
    x = torch.randn(1, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = (p(x).view(1, 7, 2, 8) for p in (m.q_proj, m.k_proj, m.v_proj))
        log_f = F.logsigmoid(x @ m.f_proj.weight.T + m.f_proj.bias)
        want = m.o_proj(_naive(q, k, v, log_f).reshape(1, 7, 16))
        torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)
        assert m.f_proj.weight.shape == (2, 16)


def test_options_build_and_refuse_a_state_of_other_shape():
    x = torch.randn(2, 5, 16)
    m = attnzoo.build("fox", d_model=16, n_heads=2, qk_norm=True, output_gate=True)
    y, s = m(x, return_state=True)
    assert y.shape == x.shape and s.decay.shape == (2, 5, 2) and (s.decay <= 0).all()
    with pytest.raises(ValueError, match="state"):
        attnzoo.build("fox", d_model=16, n_heads=4)(x, state=s)
