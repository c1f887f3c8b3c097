"""Multi-head latent attention: the mixer against DeepSeek-V2's equations written out per head, the absorbed
form (W^UK into the query, W^UV into the output) against the materialised one, and the latent cache
(c^KV and k^R only) as the decoding state (the contract itself is in tests/conformance)."""

import pytest
import torch

import attnzoo
from attnzoo.mixers.layers import apply_rope
from tests.mixers._decode_checks import assert_decode_equals_whole


def _build(seed=0, **kw):
    torch.manual_seed(seed)
    return attnzoo.build("mla", d_model=16, n_heads=2, **kw).double().eval()


def _by_hand(m, x):
    """Section 2.1 of the paper, one head and one query at a time (float64, no mask)."""
    B, T, _ = x.shape
    H, hd, d_r = m.n_heads, m.head_dim, m.rope_dim
    pos = torch.arange(T).expand(B, T)
    c = m.kv_norm(x @ m.kv_down.weight.T) if m.kv_norm is not None else x @ m.kv_down.weight.T
    k_c = (c @ m.k_up.weight.T).view(B, T, H, hd)
    v_c = (c @ m.v_up.weight.T).view(B, T, H, hd)
    k_r = apply_rope((x @ m.k_rope.weight.T)[:, :, None], pos)[:, :, 0]
    cq = x if m.q_down is None else x @ m.q_down.weight.T
    if m.q_norm is not None:
        cq = m.q_norm(cq)
    q_c = (cq @ m.q_up.weight.T).view(B, T, H, hd)
    q_r = apply_rope((cq @ m.q_rope.weight.T).view(B, T, H, d_r), pos)
    o = torch.zeros(B, T, H, hd, dtype=x.dtype)
    for b in range(B):
        for i in range(H):
            for t in range(T):
                q = torch.cat([q_c[b, t, i], q_r[b, t, i]])
                logits = torch.stack([q @ torch.cat([k_c[b, j, i], k_r[b, j]]) for j in range(t + 1)])
                o[b, t, i] = torch.softmax(logits / (hd + d_r) ** 0.5, 0) @ v_c[b, : t + 1, i]
    return m.o_proj(o.reshape(B, T, H * hd))


@pytest.mark.parametrize("kw", [{}, {"q_rank": 6, "kv_rank": 5, "rope_dim": 4}, {"latent_norm": False, "bias": True}])
@pytest.mark.parametrize("absorb", [False, True])
def test_mixer_equals_the_paper_equations(kw, absorb):
    m = _build(absorb=absorb, **kw)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _by_hand(m, x), rtol=1e-10, atol=1e-10)


def test_absorbed_decode_equals_the_materialised_forward():
    """Prefill materialised, then one token at a time through the latent cache with W^UK / W^UV absorbed
    ("auto"), with padding holes in a ragged batch: equal to one materialised call."""
    m = _build(seed=1, q_rank=6)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, 2:4] = False
    mask[1, 8] = False
    _, s_full, s = assert_decode_equals_whole(m, x, mask, prefill=5)
    with torch.no_grad():
        for f in ("c", "k_rope", "valid", "seen"):
            torch.testing.assert_close(getattr(s, f), getattr(s_full, f))
        m.absorb = False                                       # the same continuation, materialised from the cache
        nxt = torch.randn(2, 3, 16, dtype=torch.float64)
        y_mat = m(nxt, state=s)
        m.absorb = "auto"
        torch.testing.assert_close(m(nxt, state=s), y_mat, rtol=1e-10, atol=1e-10)


def test_the_state_is_the_latent_cache_only():
    m = attnzoo.build("mla", d_model=64, n_heads=4)            # d_h 16: d_c = 64, d_R = 8
    _, s = m(torch.randn(2, 9, 64), return_state=True)
    assert s.c.shape == (2, 9, 64) and s.k_rope.shape == (2, 9, 8)
    assert m.state_bytes(100) == 100 * ((64 + 8) * 4 + 1) + 8
    mha = attnzoo.registry.state_bytes("softmax", 100, d_model=64, n_heads=4, n_kv_heads=4)
    assert m.state_bytes(100) < 0.6 * mha                       # 72 numbers a token vs MHA's 2 H d_h = 128


def test_the_rope_key_is_shared_and_positions_count_real_tokens():
    m = _build(seed=2)
    assert m.k_rope.weight.shape == (m.rope_dim, 16)            # one RoPE key per token, not per head
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    xp = torch.cat([torch.randn(1, 3, 16, dtype=torch.float64), x], 1)
    mask = torch.ones(1, 9, dtype=torch.bool)
    mask[0, :3] = False
    with torch.no_grad():
        _, s = m(xp, mask=mask, return_state=True)
        _, s0 = m(x, return_state=True)
    assert int(s.seen) == 6
    torch.testing.assert_close(s.k_rope[:, 3:], s0.k_rope)      # left padding does not shift the positions


def test_bad_arguments_raise():
    for bad in ({"kv_rank": 0}, {"q_rank": -1}, {"rope_dim": 3}, {"absorb": "yes"}, {"absorb": 1}, {"n_heads": 3}):
        with pytest.raises(ValueError):
            attnzoo.build("mla", d_model=16, **bad)
    x = torch.randn(2, 5, 16)
    _, s = attnzoo.build("mla", d_model=16, n_heads=2)(x, return_state=True)
    with pytest.raises(ValueError, match="state"):
        attnzoo.build("mla", d_model=16, n_heads=2, kv_rank=8)(x, state=s)
