"""NSA (native sparse attention): the per-token selection and the three branches against the paper's
formulas written out one query at a time (float64), the gathered torch path against the dense reference
(forward and gradients), the compressed-block cache, and the mixer against the whole formula."""


import pytest
import torch

import attnzoo
from tests.mixers._decode_checks import assert_decode_equals_whole, check_compiled_decode_rule
from tests.mixers._decode_checks import check_ragged_padding_then_continuation
from tests.mixers._mixer_checks import check_reference_matches_fast
from attnzoo.mixers.layers import apply_rope
from attnzoo.ops.sparse.token_select import (
    compressed_attention,
    compression_windows,
    overlap_weights,
    select_token_blocks,
    token_sparse_attention,
    token_sparse_attention_sdpa,
    token_sparse_attention_torch,
)

KW = dict(cmp_block=4, cmp_stride=2, sel_block=4, top_n=1, n_init=1, n_local=1, window=4)


def _rand(*shape, g):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _softmax_over(q, ks, vs):
    """softmax(q·k / sqrt(D)) v over the listed keys; zeros if there are none."""
    if len(ks) == 0:
        return torch.zeros_like(q)
    s = torch.stack([q @ k for k in ks]) / q.shape[-1] ** 0.5
    return torch.softmax(s, 0) @ torch.stack(vs)


def _naive_selection(p, t, n_sel, *, cmp_block, cmp_stride, sel_block, top_n, n_init, n_local, **_):
    """The selected block set of one query at position t from its group's p_cmp [G, Nc] (a Python set)."""
    m = t // sel_block
    local = {j for j in range(m - n_local + 1, m + 1) if j >= 0}
    init = {j for j in range(n_init) if j <= m - n_local}
    score = {}
    for j in range(n_sel):
        if j in local or j in init or j > m - n_local:
            continue
        s = 0.0
        for i in range(p.shape[1]):
            a, b = i * cmp_stride, i * cmp_stride + cmp_block
            s += float(p[:, i].sum()) * max(0, min(b, (j + 1) * sel_block) - max(a, j * sel_block)) / cmp_block
        if s > 0:
            score[j] = s
    top = sorted(score, key=lambda j: -score[j])[:top_n]
    return local | init | set(top)


def test_overlap_weights_share_tokens_and_are_the_identity_for_equal_blocks():
    torch.testing.assert_close(overlap_weights(5, 5, block_len=4, stride=4, sel_block=4, device="cpu",
                                               dtype=torch.float64), torch.eye(5, dtype=torch.float64))
    W = overlap_weights(6, 4, block_len=4, stride=2, sel_block=4, device="cpu", dtype=torch.float64)
    torch.testing.assert_close(W.sum(1), torch.ones(6, dtype=torch.float64))  # blocks inside 16 positions
    assert W[1].tolist() == [0.5, 0.5, 0.0, 0.0]  # block 1 = positions 2..5: half in block 0, half in 1


def test_compressed_attention_and_selection_equal_the_formula():
    g = torch.Generator().manual_seed(0)
    B, T, Hq, Hkv, D = 2, 19, 4, 2, 4
    l, d, ls = 4, 2, 4
    q, k, v = _rand(B, T, Hq, D, g=g), _rand(B, T, Hkv, D, g=g), _rand(B, T, Hkv, D, g=g)
    kc, vc = compression_windows(k, l, d).mean(2), compression_windows(v, l, d).mean(2)
    pos = torch.arange(T).expand(B, T)
    o, p = compressed_attention(q, kc, vc, pos, block_len=l, stride=d)
    n_sel = -(-T // ls)
    kw = dict(cmp_block=l, cmp_stride=d, sel_block=ls, top_n=2, n_init=1, n_local=1)
    ids, cnt = select_token_blocks(p, pos, n_sel, block_len=l, stride=d, sel_block=ls, top_n=2)
    for b in range(B):
        for t in range(T):
            vis = [i for i in range(kc.shape[1]) if i * d + l - 1 <= t]
            for h in range(Hq):
                want = _softmax_over(q[b, t, h], [kc[b, i, h // 2] for i in vis], [vc[b, i, h // 2] for i in vis])
                torch.testing.assert_close(o[b, t, h], want, rtol=1e-12, atol=1e-12)
            for hk in range(Hkv):
                got = set(ids[b, hk, t, : cnt[b, hk, t]].tolist())
                assert got == _naive_selection(p[b, hk, :, t], t, n_sel, **kw)
                assert (t // ls) in got  # the own block is always read
    assert ids.dtype == torch.int32 and (ids[..., 1:] > ids[..., :-1]).logical_or(ids[..., 1:] < 0).all()


def _selection_inputs(B=2, T=21, Hq=4, Hkv=2, D=4, bs=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    q, k, v = _rand(B, T, Hq, D, g=g), _rand(B, T, Hkv, D, g=g), _rand(B, T, Hkv, D, g=g)
    pos = torch.arange(T).expand(B, T)
    p = torch.softmax(_rand(B, Hkv, Hq // Hkv, T, 9, g=g), -1)
    ids, cnt = select_token_blocks(p, pos, -(-T // bs), block_len=4, stride=2, sel_block=bs, top_n=1)
    return q, k, v, ids, cnt, pos


def test_reference_is_the_per_token_formula():
    q, k, v, ids, cnt, pos = _selection_inputs(T=13)
    o = token_sparse_attention(q, k, v, ids, cnt, pos, block_size=4, impl="reference")
    for b in range(2):
        for t in range(13):
            for h in range(4):
                sel = set(ids[b, h // 2, t, : cnt[b, h // 2, t]].tolist())
                js = [j for j in range(t + 1) if j // 4 in sel]
                want = _softmax_over(q[b, t, h], [k[b, j, h // 2] for j in js], [v[b, j, h // 2] for j in js])
                torch.testing.assert_close(o[b, t, h], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", [token_sparse_attention_sdpa, token_sparse_attention_torch])
@pytest.mark.parametrize("T", [1, 7, 21, 33])
def test_torch_paths_equal_reference_forward_and_gradients(T, path):
    q, k, v, ids, cnt, pos = _selection_inputs(T=T)
    cnt[0, 1, T // 2] = 0  # a query that reads no block gets zeros
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    w = torch.randn(q.shape, dtype=torch.float64)
    o_ref = token_sparse_attention(q, k, v, ids, cnt, pos, block_size=4, impl="reference")
    o = path(q, k, v, ids, cnt, pos, block_size=4)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    assert o[0, T // 2, 2:].abs().max() == 0
    g_ref = torch.autograd.grad((o_ref * w).sum(), (q, k, v))
    g = torch.autograd.grad((o * w).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    o32 = path(q.float(), k.float(), v.float(), ids, cnt, pos, block_size=4)
    assert (o32.double() - o_ref).abs().max() < 1e-5


def test_torch_impl_takes_the_gather_past_the_dense_budget(monkeypatch):
    import attnzoo.ops.sparse.token_select as ts

    q, k, v, ids, cnt, pos = _selection_inputs(T=9)
    calls = []
    monkeypatch.setattr(ts, "token_sparse_attention_torch", lambda *a, **kw: calls.append("gather"))
    monkeypatch.setattr(ts, "token_sparse_attention_sdpa", lambda *a, **kw: calls.append("sdpa"))
    ts.token_sparse_attention(q, k, v, ids, cnt, pos, block_size=4)
    monkeypatch.setattr(ts, "DENSE_MAX_SCORES", 2 * 4 * 9 * 9 - 1)
    ts.token_sparse_attention(q, k, v, ids, cnt, pos, block_size=4)
    assert calls == ["sdpa", "gather"]


def test_gathered_path_in_small_chunks_equals_one_chunk():
    q, k, v, ids, cnt, pos = _selection_inputs(T=17)
    whole = token_sparse_attention_torch(q, k, v, ids, cnt, pos, block_size=4)
    chunks = token_sparse_attention_torch(q, k, v, ids, cnt, pos, block_size=4, max_gathered=1)  # one query each
    torch.testing.assert_close(chunks, whole, rtol=0, atol=0)


def test_all_blocks_selected_is_causal_attention():
    from attnzoo.ops.softmax import softmax_attention

    q, k, v, _, _, pos = _selection_inputs(T=15)
    p = torch.rand(2, 2, 2, 15, 6, dtype=torch.float64)
    ids, cnt = select_token_blocks(p, pos, 4, block_len=4, stride=2, sel_block=4, top_n=10)
    o = token_sparse_attention(q, k, v, ids, cnt, pos, block_size=4)
    torch.testing.assert_close(o, softmax_attention(q, k, v, causal=True, impl="reference"))


def _branches(m, x):
    """q, the six branch projections (RoPE on q and keys) of the mixer, as in the module docstring."""
    B, T, _ = x.shape
    pos = torch.arange(T).expand(B, T)
    q = apply_rope(m.q_proj(x).view(B, T, m.n_heads, m.head_dim), pos)
    kv = list(m.kv_proj(x).view(B, T, 6, m.n_kv_heads, m.head_dim).unbind(2))
    kv = [apply_rope(t, pos) if i % 2 == 0 else t for i, t in enumerate(kv)]
    return q, kv


def _naive_mixer(m, x):
    B, T, _ = x.shape
    H, Hkv, hd = m.n_heads, m.n_kv_heads, m.head_dim
    G = H // Hkv
    l, d, ls = m.cmp_block, m.cmp_stride, m.sel_block
    q, (kcm, vcm, ks, vs, kw, vw) = _branches(m, x)
    nc = max(0, (T - l) // d + 1)
    blocks_k = torch.stack([kcm[:, i * d: i * d + l] for i in range(nc)], 1) if nc else kcm.new_zeros(B, 0, l, Hkv, hd)
    blocks_v = torch.stack([vcm[:, i * d: i * d + l] for i in range(nc)], 1) if nc else vcm.new_zeros(B, 0, l, Hkv, hd)
    kc, vc = m.compress_k(blocks_k), m.compress_v(blocks_v)
    gates = torch.sigmoid(m.gate_proj(x)).view(B, T, H, 3)
    kw_sel = dict(cmp_block=l, cmp_stride=d, sel_block=ls, top_n=m.top_n, n_init=m.n_init, n_local=m.n_local)
    out = torch.zeros(B, T, H, hd, dtype=x.dtype)
    for b in range(B):
        for t in range(T):
            vis = [i for i in range(nc) if i * d + l - 1 <= t]
            p = torch.zeros(G, nc, dtype=x.dtype)
            for h in range(H):
                s = torch.stack([q[b, t, h] @ kc[b, i, h // G] for i in vis]) / hd**0.5 if vis else None
                if vis:
                    p[h % G, vis] = torch.softmax(s, 0)
                if h % G == G - 1:
                    ps = p.clone()
                    for hh in range(h - G + 1, h + 1):
                        sel = _naive_selection(ps, t, -(-T // ls), **kw_sel)
                        js = [j for j in range(t + 1) if j // ls in sel]
                        wins = [j for j in range(t + 1) if t - j < m.window]
                        hk, qq = h // G, q[b, t, hh]
                        o_c = _softmax_over(qq, [kc[b, i, hk] for i in vis], [vc[b, i, hk] for i in vis])
                        o_s = _softmax_over(qq, [ks[b, j, hk] for j in js], [vs[b, j, hk] for j in js])
                        o_w = _softmax_over(qq, [kw[b, j, hk] for j in wins], [vw[b, j, hk] for j in wins])
                        gt = gates[b, t, hh]
                        out[b, t, hh] = gt[0] * o_c + gt[1] * o_s + gt[2] * o_w
                    p = torch.zeros(G, nc, dtype=x.dtype)
    return m.o_proj(out.reshape(B, T, H * hd))


@pytest.mark.parametrize("kw", [KW, dict(KW, cmp_block=6, cmp_stride=3, sel_block=5, top_n=2, n_local=2),
                                dict(KW, top_n=0, n_init=0)])  # the last: only the own block is selected
def test_mixer_equals_the_formula(kw):
    torch.manual_seed(0)
    m = attnzoo.build("nsa", d_model=32, n_heads=4, n_kv_heads=2, **kw).double()
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _naive_mixer(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dense_max", [1 << 25, 0])  # the masked SDPA, then the gather
def test_reference_mixer_matches_fast_mixer_forward_and_gradients(dense_max, monkeypatch):
    import attnzoo.ops.sparse.token_select as ts

    monkeypatch.setattr(ts, "DENSE_MAX_SCORES", dense_max)
    torch.manual_seed(1)
    m = attnzoo.build("nsa", d_model=32, n_heads=4, n_kv_heads=1, **KW).double()
    r = attnzoo.build("nsa", d_model=32, n_heads=4, n_kv_heads=1, impl="reference", **KW).double()
    _, _, g = check_reference_matches_fast(m, r, (2, 23, 32))
    names = [n for n, _ in m.named_parameters()]
    for n in ("compress_k.fc1.weight", "compress_v.pos", "gate_proj.weight"):  # every branch is trained
        assert g[0][1 + names.index(n)].abs().sum() > 0, n


def test_decode_reuses_the_compressed_blocks_and_equals_the_whole_sequence():
    torch.manual_seed(2)
    m = attnzoo.build("nsa", d_model=32, n_heads=2, **KW).double().eval()
    x = torch.randn(3, 14, 32, dtype=torch.float64)
    _, s_full, s = assert_decode_equals_whole(m, x)
    assert s.kc.shape == (3, 6, 2, 16)  # (14 - 4) // 2 + 1 complete blocks
    torch.testing.assert_close(s.kc, s_full.kc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.vc, s_full.vc, rtol=1e-12, atol=1e-12)


def test_ragged_padding_then_continuation_equals_the_unpadded_run():
    torch.manual_seed(3)
    m = attnzoo.build("nsa", d_model=32, n_heads=2, **KW).double().eval()
    check_ragged_padding_then_continuation(m, T=12, n_next=5, hole=9)  # its compressed blocks complete later


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="cmp_stride"):
        attnzoo.build("nsa", d_model=32, cmp_block=2, cmp_stride=4)
    with pytest.raises(ValueError, match="top_n"):
        attnzoo.build("nsa", d_model=32, top_n=-1)
    with pytest.raises(ValueError, match="n_kv_heads"):
        attnzoo.build("nsa", d_model=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="impl"):
        attnzoo.build("nsa", d_model=32, impl="triton")
    q, k, v, ids, cnt, pos = _selection_inputs(T=9)
    with pytest.raises(ValueError, match="block_ids"):
        token_sparse_attention(q, k, v, ids[:, :1], cnt, pos, block_size=4)
    with pytest.raises(ValueError, match="q_pos"):
        token_sparse_attention(q, k, v, ids, cnt, pos[:, :3], block_size=4)
    with pytest.raises(ValueError, match="Triton"):
        token_sparse_attention(q, k, v, ids, cnt, pos, block_size=4, impl="triton")
    with pytest.raises(ValueError, match="n_local"):
        select_token_blocks(torch.rand(1, 1, 1, 3, 2), pos[:1, :3], 1, block_len=4, stride=2, sel_block=4, top_n=1,
                            n_local=0)
    m = attnzoo.build("nsa", d_model=32, n_heads=2, **KW)
    _, s = m(torch.randn(2, 6, 32), return_state=True)
    with pytest.raises(ValueError, match="state"):
        attnzoo.build("nsa", d_model=32, n_heads=4, **KW)(torch.randn(2, 3, 32), state=s)


def test_the_compiled_decode_rule_equals_the_cached_one(monkeypatch):
    """Under torch.compile the mixer reads no host value: it recomputes every block (keeping the cached ones per row)
    instead of skipping the cached ones (recorded: 1 graph in decode, graph_breaks.json). That path, run
    eagerly, equals the cached one, output and state, on rows whose seen counts differ."""
    import attnzoo.mixers.nsa as mod

    torch.manual_seed(6)
    check_compiled_decode_rule(monkeypatch, mod, attnzoo.build("nsa", d_model=32, n_heads=2, **KW).double().eval())


def test_rows_fed_at_different_paces_equal_the_whole_sequence_and_the_state_keeps_only_tails():
    """Chunks of 3 where row 0 gets 2 real tokens every other call: the rows' seen counts drift apart, so the
    compressed-block cache is kept per row and the window/compression tails end at each row's own position."""
    torch.manual_seed(5)
    m = attnzoo.build("nsa", d_model=32, n_heads=2, **KW).double().eval()
    seq = torch.randn(2, 30, 32, dtype=torch.float64)
    with torch.no_grad():
        full = m(seq)
        outs, done, st, i = ([], []), [0, 0], None, 0
        while min(done) < 30:
            xc = torch.zeros(2, 3, 32, dtype=torch.float64)
            mk = torch.zeros(2, 3, dtype=torch.bool)
            for row, n in enumerate((2 if i % 2 else 3, 3)):
                n = min(n, 30 - done[row])
                xc[row, :n], mk[row, :n] = seq[row, done[row]: done[row] + n], True
            y, st = m(xc, mask=mk, state=st, return_state=True)
            for row in range(2):
                outs[row].append(y[row, mk[row]])
                done[row] += int(mk[row].sum())
            i += 1
    for row in range(2):
        torch.testing.assert_close(torch.cat(outs[row]), full[row], rtol=1e-10, atol=1e-10)
    assert st.k_win.shape[1] == KW["window"] and st.k_cmp.shape[1] == KW["cmp_block"] and st.k_slc.shape[1] == 30
