"""MoBA (mixture of block attention): the gate against the paper's rule written out one query at a time,
the mixer against the whole formula (float64), its limits (every block selected = causal softmax
attention, one block = attention inside the own block), the block-mean cache and decoding."""


import pytest
import torch

import attnzoo
from tests.mixers._decode_checks import assert_decode_equals_whole, check_compiled_decode_rule
from tests.mixers._decode_checks import check_ragged_padding_then_continuation
from tests.mixers._mixer_checks import check_reference_matches_fast
from attnzoo.mixers.layers import apply_rope
from attnzoo.ops.sparse.token_select import select_moba_blocks

KW = dict(n_heads=4, n_kv_heads=2, block_size=4, top_k=2)


def _naive_gate(q, K, t, bs, top_k):
    """The set of blocks query q at position t reads: its own block and the top_k - 1 earlier blocks by
    q · mean(K over the block)."""
    m = t // bs
    score = {j: float(q @ K[j * bs: (j + 1) * bs].mean(0)) for j in range(m)}
    return {m} | set(sorted(score, key=lambda j: -score[j])[: top_k - 1])


def _softmax_over(q, ks, vs):
    s = torch.stack([q @ k for k in ks]) / q.shape[-1] ** 0.5
    return torch.softmax(s, 0) @ torch.stack(vs)


def test_gate_equals_the_rule():
    g = torch.Generator().manual_seed(0)
    B, T, Hq, Hkv, D, bs = 2, 23, 4, 2, 4, 4
    q = torch.randn(B, T, Hq, D, generator=g, dtype=torch.float64)
    K = torch.randn(B, T, Hkv, D, generator=g, dtype=torch.float64)
    n = T // bs
    kbar = K[:, : n * bs].reshape(B, n, bs, Hkv, D).mean(2)
    pos = torch.arange(T).expand(B, T)
    for top_k in (1, 3, 9):
        ids, cnt = select_moba_blocks(q, kbar, pos, -(-T // bs), block_size=bs, top_k=top_k)
        assert ids.shape == (B, Hq, T, min(6, top_k))
        for b in range(B):
            for h in range(Hq):
                for t in range(T):
                    got = set(ids[b, h, t, : cnt[b, h, t]].tolist())
                    assert got == _naive_gate(q[b, t, h], K[b, :, h // 2], t, bs, top_k), (b, h, t, top_k)


def _naive_mixer(m, x):
    B, T, _ = x.shape
    H, hd, G, bs = m.n_heads, m.head_dim, m.n_heads // m.n_kv_heads, m.block_size
    pos = torch.arange(T).expand(B, T)
    q = apply_rope(m.q_proj(x).view(B, T, H, hd), pos)
    k = apply_rope(m.k_proj(x).view(B, T, m.n_kv_heads, hd), pos)
    v = m.v_proj(x).view(B, T, m.n_kv_heads, hd)
    out = torch.zeros(B, T, H, hd, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                blocks = _naive_gate(q[b, t, h], k[b, :, h // G], t, bs, m.top_k)
                js = [j for j in range(t + 1) if j // bs in blocks]
                out[b, t, h] = _softmax_over(q[b, t, h], [k[b, j, h // G] for j in js], [v[b, j, h // G] for j in js])
    return m.o_proj(out.reshape(B, T, H * hd))


@pytest.mark.parametrize("kw", [KW, dict(KW, n_kv_heads=1, block_size=3, top_k=3), dict(KW, n_kv_heads=4)])
def test_mixer_equals_the_formula(kw):
    torch.manual_seed(0)
    m = attnzoo.build("moba", d_model=32, **kw).double()
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _naive_mixer(m, x), rtol=1e-10, atol=1e-10)


def test_every_block_selected_is_causal_softmax_attention_and_one_block_is_local():
    torch.manual_seed(1)
    m = attnzoo.build("moba", d_model=32, n_heads=4, n_kv_heads=2, block_size=4, top_k=6).double()
    full = attnzoo.build("softmax", d_model=32, n_heads=4, n_kv_heads=2).double()
    full.load_state_dict(m.state_dict())
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), full(x), rtol=1e-10, atol=1e-10)
        m.top_k = 1  # only the own block: each block of 4 is its own causal sequence (RoPE is relative)
        y = m(x)
        for s in range(0, 21, 4):
            torch.testing.assert_close(y[:, s: s + 4], full(x[:, s: s + 4]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dense_max", [1 << 25, 0])  # the masked SDPA, then the gather
def test_reference_mixer_matches_fast_mixer_forward_and_gradients(dense_max, monkeypatch):
    import attnzoo.ops.sparse.token_select as ts

    monkeypatch.setattr(ts, "DENSE_MAX_SCORES", dense_max)
    torch.manual_seed(2)
    m = attnzoo.build("moba", d_model=32, **KW).double()
    r = attnzoo.build("moba", d_model=32, impl="reference", **KW).double()
    x, ys, _ = check_reference_matches_fast(m, r, (2, 26, 32))
    y32 = attnzoo.build("moba", d_model=32, **KW)
    y32.load_state_dict({k: t.float() for k, t in m.state_dict().items()})
    assert (y32(x.detach().float()).double() - ys[1]).abs().max() < 1e-5


def test_decode_reuses_the_block_means_and_equals_the_whole_sequence():
    torch.manual_seed(3)
    m = attnzoo.build("moba", d_model=32, **KW).double().eval()
    x = torch.randn(3, 15, 32, dtype=torch.float64)
    _, s_full, s = assert_decode_equals_whole(m, x)
    assert s.kbar.shape == (3, 3, 2, 8)  # 15 // 4 complete blocks
    torch.testing.assert_close(s.kbar, s_full.kbar, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_full.kbar, s_full.k[:, :12].reshape(3, 3, 4, 2, 8).mean(2))


def test_ragged_padding_then_continuation_equals_the_unpadded_run():
    torch.manual_seed(4)
    m = attnzoo.build("moba", d_model=32, **KW).double().eval()
    check_ragged_padding_then_continuation(m, T=13, n_next=6, hole=6)  # row 1: a hole inside its second block


def test_the_compiled_decode_rule_equals_the_cached_one(monkeypatch):
    """Under torch.compile the mixer reads no host value: it recomputes every block mean
    instead of skipping the cached ones (recorded: 1 graph in decode, graph_breaks.json). That path, run
    eagerly, equals the cached one, output and state, on rows whose seen counts differ."""
    import attnzoo.mixers.moba as mod

    torch.manual_seed(6)
    check_compiled_decode_rule(monkeypatch, mod, attnzoo.build("moba", d_model=32, **KW).double().eval())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="block_size"):
        attnzoo.build("moba", d_model=32, block_size=0)
    with pytest.raises(ValueError, match="top_k"):
        attnzoo.build("moba", d_model=32, top_k=0)
    with pytest.raises(ValueError, match="impl"):
        attnzoo.build("moba", d_model=32, impl="triton")
    with pytest.raises(ValueError, match="top_k"):
        select_moba_blocks(torch.zeros(1, 2, 1, 4), torch.zeros(1, 0, 1, 4), torch.zeros(1, 2, dtype=torch.long), 1,
                           block_size=4, top_k=0)
    m = attnzoo.build("moba", d_model=32, **KW)
    _, s = m(torch.randn(2, 6, 32), return_state=True)
    with pytest.raises(ValueError, match="state"):
        attnzoo.build("moba", d_model=32, n_heads=4, block_size=4)(torch.randn(2, 3, 32), state=s)
