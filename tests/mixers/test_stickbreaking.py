"""Stick-breaking attention: the log-space torch path against the explicit-product float64 reference and
the formula, cache, masks and the mixer (the contract itself is in tests/conformance)."""

import pytest
import torch

import attnzoo
from attnzoo.ops.softmax.stickbreaking import stickbreaking_attention, stickbreaking_attention_reference


def _inputs(B=2, T=9, H=2, D=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, H, D, generator=g, dtype=torch.float64) * s for s in (scale, scale, 1.0))


def _naive(q, k, v, attend_current):
    """A_ij = beta_ij Π_{j<k<i} (1 - beta_ik) (k <= i with attend_current), one weight at a time."""
    B, T, H, D = q.shape
    o = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                last = i if attend_current else i - 1
                beta = torch.sigmoid(q[b, i, h] @ k[b, :, h].T / D**0.5)
                for j in range(last + 1):
                    A = beta[j] * torch.prod(1 - beta[j + 1: last + 1])
                    o[b, i, h] += A * v[b, j, h]
    return o


@pytest.mark.parametrize("attend_current", [False, True])
def test_reference_is_the_formula(attend_current):
    q, k, v = _inputs(B=1, T=6)
    o = stickbreaking_attention_reference(q, k, v, attend_current=attend_current)
    torch.testing.assert_close(o, _naive(q, k, v, attend_current), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("attend_current", [False, True])
@pytest.mark.parametrize("T", [1, 7, 40])
@pytest.mark.parametrize("scale", [0.3, 6.0])   # soft and saturated break points
def test_log_space_path_matches_reference(T, scale, attend_current):
    q, k, v = _inputs(T=T, scale=scale)
    kw = {"attend_current": attend_current}
    o_ref = stickbreaking_attention_reference(q, k, v, **kw)
    torch.testing.assert_close(stickbreaking_attention(q, k, v, impl="torch", **kw), o_ref, rtol=1e-10, atol=1e-10)
    o32 = stickbreaking_attention(*(t.float() for t in (q, k, v)), impl="torch", **kw)
    assert (o32.double() - o_ref).abs().max() < 1e-5 * max(1.0, float(o_ref.abs().max()))


def test_gradients_match_reference():
    q, k, v = (t.requires_grad_(True) for t in _inputs(T=8, scale=2.0))
    w = torch.randn(2, 8, 2, 4, dtype=torch.float64)
    g_ref = torch.autograd.grad((stickbreaking_attention_reference(q, k, v) * w).sum(), (q, k, v))
    g = torch.autograd.grad((stickbreaking_attention(q, k, v, impl="torch") * w).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_weights_are_a_broken_stick():
    """Weights are in [0, 1], sum to at most 1, and a key that takes the whole stick (beta = 1) hides every
    earlier key."""
    q, k, v = _inputs(B=1, T=6, H=1)
    eye = torch.eye(6, dtype=torch.float64)[None, :, None, :].expand(1, 6, 1, 6).contiguous()
    A = stickbreaking_attention_reference(q, k, eye)[0, :, 0]          # v = one-hot: o = the weights
    assert A.min() >= 0 and (A.sum(-1) <= 1 + 1e-12).all() and A[0].abs().max() == 0
    k2 = k.clone()
    k2[0, 3, 0] = q[0, 5, 0] * 1e3                                     # query 5 gives key 3 beta = 1
    A2 = stickbreaking_attention_reference(q, k2, eye)[0, 5, 0]
    torch.testing.assert_close(A2[3], 1 - torch.sigmoid(q[0, 5, 0] @ k[0, 4, 0] / 2))   # all key 4 left over
    assert A2[:3].abs().max() < 1e-12                                  # nothing left for the earlier keys


def test_cache_and_masked_keys():
    q, k, v = _inputs(T=10)
    full = stickbreaking_attention(q, k, v, impl="torch")
    torch.testing.assert_close(stickbreaking_attention(q[:, 6:], k, v, impl="torch"), full[:, 6:])
    key_mask = torch.ones(2, 10, dtype=torch.bool)
    key_mask[:, 3] = False                                             # a hole: key 3 breaks no stick
    o = stickbreaking_attention(q, k, v, key_mask=key_mask, impl="torch")
    keep = [0, 1, 2, 4, 5, 6, 7, 8, 9]
    # without key 3 the sequence is the other nine keys; query i keeps its own position
    o_ref = stickbreaking_attention_reference(q, k, v, key_mask=key_mask)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(o[:, keep], stickbreaking_attention(q[:, keep], k[:, keep], v[:, keep]))
    with pytest.raises(ValueError, match="key_mask"):
        stickbreaking_attention(q, k, v, key_mask=key_mask.float())
    with pytest.raises(ValueError, match="Tk"):
        stickbreaking_attention(q, k[:, :5], v[:, :5])


def test_mixer_equals_the_formula():
    torch.manual_seed(0)
    for attend_current in (False, True):
        m = attnzoo.build("stickbreaking", d_model=16, n_heads=2, attend_current=attend_current).double().eval()
        x = torch.randn(1, 7, 16, dtype=torch.float64)
        with torch.no_grad():
            q, k, v = (p(x).view(1, 7, 2, 8) for p in (m.q_proj, m.k_proj, m.v_proj))
            want = m.o_proj(_naive(q, k, v, attend_current).reshape(1, 7, 16))
            torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)
