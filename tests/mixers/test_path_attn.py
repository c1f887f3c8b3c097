"""PaTH attention: the blockwise torch path against the float64 reference that materialises the Householder
products (forward, transformed keys, gradients, cache), the reference against the formula, and the mixer
against the paper's equations (the contract itself is in tests/conformance)."""

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.ops.softmax.path import path_attention, path_attention_reference
from tests.mixers._decode_checks import assert_decode_equals_whole


def _inputs(B=2, T=9, H=2, D=4, L=0, seed=0, beta_shift=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    w = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1)
    beta = 2 * torch.sigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64) + beta_shift)
    ck, cv = (torch.randn(B, L, H, D, generator=g, dtype=torch.float64) if L else None for _ in range(2))
    return tuple(None if t is None else t.to(dtype) for t in (q, k, v, w, beta, ck, cv))


def _naive(q, k, v, w, beta):
    """The formula as written: one (b, h, i, j) at a time, H_i ··· H_{j+1} as explicit D x D products."""
    B, T, H, D = q.shape
    o = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            Hs = [torch.eye(D, dtype=q.dtype) - beta[b, t, h] * torch.outer(w[b, t, h], w[b, t, h]) for t in range(T)]
            for i in range(T):
                logits = []
                for j in range(i + 1):
                    P = torch.eye(D, dtype=q.dtype)
                    for s in range(i, j, -1):          # H_i H_{i-1} ... H_{j+1}
                        P = P @ Hs[s]
                    logits.append(q[b, i, h] @ P @ k[b, j, h] / D**0.5)
                o[b, i, h] = torch.softmax(torch.stack(logits), 0) @ v[b, : i + 1, h]
    return o


def test_reference_is_the_formula():
    q, k, v, w, beta, _, _ = _inputs(B=1, T=6)
    o, _, _ = path_attention_reference(q, k, v, w, beta)
    torch.testing.assert_close(o, _naive(q, k, v, w, beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("chunk", [4, 16, 64])
@pytest.mark.parametrize("L", [0, 3])
def test_blockwise_path_matches_reference(T, chunk, L):
    q, k, v, w, beta, ck, cv = _inputs(T=T, L=L, seed=T + chunk + L)
    o_ref, k_ref, _ = path_attention_reference(q, k, v, w, beta, cache_k=ck, cache_v=cv, output_keys=True)
    o, keys, _ = path_attention(q, k, v, w, beta, cache_k=ck, cache_v=cv, output_keys=True, chunk_size=chunk,
                             impl="torch")
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(keys, k_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("beta_shift", [-4.0, 4.0])   # beta near 0 (H near I) and near 2 (near reflections)
def test_float32_stays_close_to_float64(beta_shift):
    q, k, v, w, beta, _, _ = _inputs(T=70, D=16, beta_shift=beta_shift)
    o64, k64, _ = path_attention(q, k, v, w, beta, output_keys=True, chunk_size=32)
    o32, k32, _ = path_attention(*(t.float() for t in (q, k, v, w, beta)), output_keys=True, chunk_size=32)
    assert o32.dtype == torch.float32 and k32.dtype == torch.float32
    assert ((o32.double() - o64).abs().max() / o64.abs().max()) < 1e-5
    assert ((k32.double() - k64).abs().max() / k64.abs().max()) < 1e-5


def test_gradients_match_reference():
    ins = [t.requires_grad_(True) for t in _inputs(T=7, L=2)]
    q, k, v, w, beta, ck, cv = ins
    wo, wk = torch.randn(2, 7, 2, 4, dtype=torch.float64), torch.randn(2, 9, 2, 4, dtype=torch.float64)

    def loss(impl):
        o, keys, _ = path_attention(q, k, v, w, beta, cache_k=ck, cache_v=cv, output_keys=True, chunk_size=3, impl=impl)
        return (o * wo).sum() + (keys * wk).sum()

    g_ref = torch.autograd.grad(loss("reference"), ins)
    g = torch.autograd.grad(loss("torch"), ins)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_cache_of_transformed_keys_continues_the_sequence(impl):
    q, k, v, w, beta, _, _ = _inputs(T=11)
    full, keys_full, _ = path_attention(q, k, v, w, beta, output_keys=True, chunk_size=4, impl=impl)
    t = 5
    _, keys, _ = path_attention(q[:, :t], k[:, :t], v[:, :t], w[:, :t], beta[:, :t], output_keys=True, impl=impl)
    o2, keys2, _ = path_attention(q[:, t:], k[:, t:], v[:, t:], w[:, t:], beta[:, t:], cache_k=keys, cache_v=v[:, :t],
                               output_keys=True, chunk_size=4, impl=impl)
    torch.testing.assert_close(o2, full[:, t:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(keys2, keys_full, rtol=1e-10, atol=1e-10)


def test_the_cache_holds_each_key_seen_from_the_newest_token():
    """keys_j = H_{T-1} ··· H_{j+1} k_j, and a decode step applies its own H to every cached key."""
    q, k, v, w, beta, _, _ = _inputs(B=1, T=4, H=1)
    Hm = [torch.eye(4, dtype=torch.float64) - beta[0, t, 0] * torch.outer(w[0, t, 0], w[0, t, 0]) for t in range(4)]
    _, keys, _ = path_attention(q, k, v, w, beta, output_keys=True)
    torch.testing.assert_close(keys[0, 0, 0], Hm[3] @ Hm[2] @ Hm[1] @ k[0, 0, 0])
    torch.testing.assert_close(keys[0, 3, 0], k[0, 3, 0])


def test_beta_zero_is_plain_causal_softmax_and_order_matters_otherwise():
    from attnzoo.ops.softmax import softmax_attention

    q, k, v, w, beta, _, _ = _inputs(T=10)
    o, _, _ = path_attention(q, k, v, w, torch.zeros_like(beta), chunk_size=4)
    torch.testing.assert_close(o, softmax_attention(q, k, v, causal=True, impl="reference"))
    swap = [0, 1, 3, 2, 4, 5, 6, 7, 8, 9]   # the transitions of tokens 2 and 3 swapped: another product
    o_b, _, _ = path_attention(q, k, v, w, beta, chunk_size=4)
    o_bs, _, _ = path_attention(q, k, v, w[:, swap], beta[:, swap], chunk_size=4)
    assert (o_bs[:, 4:] - o_b[:, 4:]).abs().max() > 1e-3     # H_3 H_2 != H_2 H_3
    torch.testing.assert_close(o_bs[:, :2], o_b[:, :2])      # queries before the swap see the same products


def test_masked_keys_are_never_seen_and_a_blind_query_gets_zeros():
    q, k, v, w, beta, _, _ = _inputs(T=6)
    key_mask = torch.ones(2, 6, dtype=torch.bool)
    key_mask[0, :2] = False
    beta = beta.clone()
    beta[0, :2] = 0                                           # padded tokens transform nothing
    o, _, _ = path_attention(q, k, v, w, beta, key_mask=key_mask, chunk_size=4)
    o_ref, _, _ = path_attention_reference(q, k, v, w, beta, key_mask=key_mask)
    torch.testing.assert_close(o, o_ref)
    assert o[0, :2].abs().max() == 0                          # queries 0 and 1 of row 0 see only masked keys
    k2, w2 = k.clone(), w.clone()
    k2[0, :2], w2[0, :2] = 1e3, 7.0                           # a masked key's content and a beta-0 w change nothing
    torch.testing.assert_close(path_attention(q, k2, v, w2, beta, key_mask=key_mask, chunk_size=4)[0], o)


def _log_f(B, T, H, seed=5, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    return F.logsigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64) * 2 + shift)


@pytest.mark.parametrize("L", [0, 3])
def test_forget_gate_blockwise_matches_reference_with_decays(L):
    """PaTH-FoX: the Householder products and FoX's Σ log f on the logits; outputs, keys and decays."""
    q, k, v, w, beta, ck, cv = _inputs(T=13, L=L, seed=L)
    log_f = _log_f(2, 13, 2)
    cd = None if not L else -torch.rand(2, L, 2, dtype=torch.float64)
    o_ref, k_ref, d_ref = path_attention_reference(q, k, v, w, beta, log_f=log_f, cache_decay=cd, cache_k=ck,
                                                   cache_v=cv, output_keys=True)
    o, keys, d = path_attention(q, k, v, w, beta, log_f=log_f, cache_decay=cd, cache_k=ck, cache_v=cv,
                                output_keys=True, chunk_size=4)
    for a, b in ((o, o_ref), (keys, k_ref), (d, d_ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert d.shape == (2, L + 13, 2) and (d <= 0).all()


def test_forget_gate_gradients_match_reference():
    ins = [t.requires_grad_(True) for t in _inputs(T=6, L=2)]
    log_f, cd = _log_f(2, 6, 2).requires_grad_(True), (-torch.rand(2, 2, 2, dtype=torch.float64)).requires_grad_(True)
    wo = torch.randn(2, 6, 2, 4, dtype=torch.float64)

    def loss(impl):
        q, k, v, w, beta, ck, cv = ins
        o, keys, d = path_attention(q, k, v, w, beta, log_f=log_f, cache_decay=cd, cache_k=ck, cache_v=cv,
                                    output_keys=True, chunk_size=4, impl=impl)
        return (o * wo).sum() + keys.sum() + (d * d).sum()

    leaves = ins + [log_f, cd]
    for a, b in zip(torch.autograd.grad(loss("torch"), leaves), torch.autograd.grad(loss("reference"), leaves)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_forget_gate_without_transitions_is_fox():
    from attnzoo.ops.softmax.forgetting import forgetting_attention

    q, k, v, w, beta, _, _ = _inputs(T=9)
    log_f = _log_f(2, 9, 2, shift=-1.0)
    o, _, _ = path_attention(q, k, v, w, torch.zeros_like(beta), log_f=log_f, chunk_size=4)
    torch.testing.assert_close(o, forgetting_attention(q, k, v, log_f, impl="reference")[0])


def test_path_fox_mixer_decodes_and_its_card_counts_the_decays():
    torch.manual_seed(3)
    m = attnzoo.build("path_attn", d_model=16, n_heads=2, chunk_size=4, forget_gate=True).double().eval()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 2:4] = False
    _, s_full, s = assert_decode_equals_whole(m, x, mask, prefill=3)
    with torch.no_grad():
        torch.testing.assert_close(s.decay, s_full.decay)
        m32 = attnzoo.build("path_attn", d_model=16, n_heads=2, forget_gate=True)
        _, s32 = m32(x[:, :, :].float(), return_state=True)
    held = sum(t.numel() * t.element_size() for t in (s32.k, s32.v, s32.valid, s32.conv, s32.decay)) // 2
    assert m32.state_bytes(10) == held
    with pytest.raises(ValueError, match="another mixer"):
        attnzoo.build("path_attn", d_model=16, n_heads=2)(x[:, :1].float(), state=s32)


def test_the_docstring_example_runs():
    import doctest

    import attnzoo.ops.softmax.path as mod

    assert doctest.testmod(mod).failed == 0


def test_bad_arguments_raise():
    q, k, v, w, beta, ck, cv = _inputs(T=5, L=2)
    with pytest.raises(ValueError, match="beta"):
        path_attention(q, k, v, w, beta[..., :1])
    with pytest.raises(ValueError, match="k and w"):
        path_attention(q, k, v, w[..., :2], beta)
    with pytest.raises(ValueError, match="together"):
        path_attention(q, k, v, w, beta, cache_k=ck)
    with pytest.raises(ValueError, match="cache_k"):
        path_attention(q, k, v, w, beta, cache_k=ck[..., :2], cache_v=cv)
    with pytest.raises(ValueError, match="key_mask"):
        path_attention(q, k, v, w, beta, cache_k=ck, cache_v=cv, key_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk_size"):
        path_attention(q, k, v, w, beta, chunk_size=0)
    with pytest.raises(ValueError, match="log_f"):
        path_attention(q, k, v, w, beta, log_f=beta[..., :1])
    with pytest.raises(ValueError, match="cache_decay"):
        path_attention(q, k, v, w, beta, log_f=beta, cache_k=ck, cache_v=cv)
    with pytest.raises(ValueError, match="needs log_f"):
        path_attention(q, k, v, w, beta, cache_decay=beta)
    with pytest.raises(ValueError, match="[Tt]riton"):
        path_attention(q, k, v, w, beta, impl="triton")


def _mixer_by_hand(m, x):
    """The paper's equations with the mixer's weights: w = normalize(conv_3(x W_w)), beta = 2 sigmoid(.)."""
    B, T, _ = x.shape
    H, D = m.n_heads, m.head_dim
    q, k, v = (p(x).view(B, T, H, D) for p in (m.q_proj, m.k_proj, m.v_proj))
    u = m.w_proj(x)
    W = m.w_conv.kernel_size
    up = F.pad(u, (0, 0, W - 1, 0))
    conv = sum(m.w_conv.weight[:, j] * up[:, j: j + T] for j in range(W))
    w = conv.view(B, T, H, D)
    w = w / (w.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()   # l2_normalize's eps
    beta = 2 * torch.sigmoid(m.b_proj(x))
    return m.o_proj(_naive(q, k, v, w, beta).reshape(B, T, H * D))


def test_mixer_equals_the_paper_equations():
    torch.manual_seed(0)
    m = attnzoo.build("path_attn", d_model=16, n_heads=2, chunk_size=3).double().eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _mixer_by_hand(m, x), rtol=1e-8, atol=1e-8)


def test_mixer_decodes_across_blocks_and_padding_holes():
    """chunk_size 4 (several blocks), a ragged batch with holes: whole call == prefix + token-by-token."""
    torch.manual_seed(1)
    m = attnzoo.build("path_attn", d_model=16, n_heads=2, chunk_size=4).double().eval()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[0, 3:5] = False
    mask[1, 9] = False
    full, s_full, s = assert_decode_equals_whole(m, x, mask, prefill=6)
    with torch.no_grad():
        nxt = torch.randn(2, 3, 16, dtype=torch.float64)
        torch.testing.assert_close(m(nxt, state=s), m(nxt, state=s_full), rtol=1e-10, atol=1e-10)
        keep = [t for t in range(13) if mask[0, t]]           # row 0 without its hole
        torch.testing.assert_close(m(x[:1, keep]), full[:1, keep], rtol=1e-10, atol=1e-10)


def test_options_build_and_refuse_bad_arguments():
    x = torch.randn(2, 5, 16)
    m = attnzoo.build("path_attn", d_model=16, n_heads=2, w_rank=4, qk_norm=True)
    y, s = m(x, return_state=True)
    assert y.shape == x.shape and s.k.shape == (2, 5, 2, 8) and s.conv.shape == (2, 2, 16)
    assert s.k.dtype == torch.float32
    with pytest.raises(ValueError, match="state"):
        attnzoo.build("path_attn", d_model=16, n_heads=4)(x, state=s)
    for bad in ({"w_rank": 0}, {"chunk_size": 0}, {"n_heads": 3}):
        with pytest.raises(ValueError):
            attnzoo.build("path_attn", d_model=16, **bad)
