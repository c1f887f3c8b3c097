"""Sparse, routed and head-mixture mixers: block_sparse, routing, moh, gaam, maelre."""

from __future__ import annotations

import pytest
import torch

import attnzoo

D = 32


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def build(name, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return attnzoo.build(name, d_model=D, **kw).to(dtype).eval()


# ---------------------------------------------------------------- block_sparse
def test_block_sparse_with_all_blocks_equals_dense_causal():
    T = 37
    m = build("block_sparse", n_heads=4, n_kv_heads=2, block_size=8, top_k=5)  # 5 blocks >= ceil(37/8)
    ref = build("softmax", n_heads=4, n_kv_heads=2)
    ref.load_state_dict(m.state_dict())
    x = rand(2, T, D)
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x), atol=1e-10)
        m.impl = "reference"
        assert torch.allclose(m(x), ref(x), atol=1e-10)


def test_block_sparse_fast_path_matches_reference_and_is_really_sparse():
    m = build("block_sparse", n_heads=4, n_kv_heads=2, block_size=4, top_k=2, n_sink=2, window=3)
    x = rand(2, 40, D, seed=1)
    with torch.no_grad():
        y = m(x)
        m.impl = "reference"
        y_ref = m(x)
        m.mode = "full"
        y_full = m(x)
    assert torch.allclose(y, y_ref, atol=1e-10)
    assert (y - y_full).abs().max() > 1e-3  # sparse differs from dense at these sizes


def test_block_sparse_mixed_mode_sets_alignment_loss_and_top_k_is_adjustable():
    m = build("block_sparse", dtype=torch.float32, n_heads=4, block_size=4, top_k=2, mode="mixed").train()
    x = rand(2, 30, D, dtype=torch.float32)
    y = m(x)
    assert m.aux_loss is not None and m.aux_loss.item() > 0
    (y.sum() + m.aux_loss).backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.no_grad():
        y_sparse = m(x)
        assert m.aux_loss is None
        m.top_k = 100  # changed after training: now every block is kept
        m.mode = "full"
        y_full = m(x)
        m.mode = "sparse"
        assert torch.allclose(m(x), y_full, atol=1e-5)
        assert not torch.allclose(y_sparse, y_full, atol=1e-3)
        m.top_k = 0
        with pytest.raises(ValueError, match="top_k"):
            m(x)
        m.top_k, m.mode = 2, "both"
        with pytest.raises(ValueError, match="mode"):
            m(x)


# ---------------------------------------------------------------- moh
def test_moh_active_head_path_equals_all_heads_path_with_padding_and_state():
    m = build("moh", n_heads=6, n_kv_heads=3, head_dim=8, n_shared_heads=2, top_k=2)
    x = rand(2, 19, D, seed=8)
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 15:] = False
    with torch.no_grad():
        y_fast, s_fast = m(x, mask=mask, return_state=True)
        m.skip_inactive_heads = False
        y_all, s_all = m(x, mask=mask, return_state=True)
        nxt = rand(2, 4, D, seed=9)
        assert torch.allclose(m(nxt, state=s_fast), m(nxt, state=s_all), atol=1e-10)
        m.skip_inactive_heads = True
        assert torch.allclose(m(nxt, state=s_fast), m(nxt, state=s_all), atol=1e-10)
    assert torch.allclose(y_fast[mask], y_all[mask], atol=1e-10)
    x = rand(2, 150, D, seed=10)  # no padding, no state: the prefix-flash + band path, several query chunks
    with torch.no_grad():
        m.skip_inactive_heads = False
        y_all = m(x)
        m.skip_inactive_heads = True
        assert torch.allclose(m(x), y_all, atol=1e-10)
        assert torch.allclose(m.float()(x.float()), y_all.float(), atol=1e-5)


@pytest.mark.parametrize("block_size", [3, None])
def test_moh_active_heads_decode_token_by_token_and_attend_only_selected_pairs(block_size, monkeypatch):
    import attnzoo.mixers.moh as moh_module

    m = build("moh", n_heads=8, head_dim=8, n_shared_heads=2, top_k=3, block_size=block_size, qk_norm=True)
    x = rand(3, 40, D, seed=11)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, :5] = False  # left padding in one row
    calls, sdpa_rows = [], []
    real_op, real_sdpa = moh_module.subset_causal_attention, moh_module.F.scaled_dot_product_attention

    def spy(q, k, v, q_pos, count=None, **kw):
        calls.append((q.shape, None if count is None else count.clone()))
        return real_op(q, k, v, q_pos, count, **kw)

    def spy_sdpa(q, *args, **kw):
        sdpa_rows.append(q.shape[1] * q.shape[2])  # (kv heads) x (query heads per kv head) read
        return real_sdpa(q, *args, **kw)

    with torch.no_grad():
        m.skip_inactive_heads = False
        y_all = m(x, mask=mask)
        m.skip_inactive_heads = True
        monkeypatch.setattr(moh_module, "subset_causal_attention", spy)
        y = m(x[:, :25], mask=mask[:, :25], return_state=True)
        state, outs = y[1], [y[0]]
        monkeypatch.setattr(moh_module.F, "scaled_dot_product_attention", spy_sdpa)
        for t in range(25, 40):
            y, state = m(x[:, t : t + 1], mask=mask[:, t : t + 1], state=state, return_state=True)
            outs.append(y)
        monkeypatch.setattr(moh_module.F, "scaled_dot_product_attention", real_sdpa)
    assert torch.allclose(torch.cat(outs, 1)[mask], y_all[mask], atol=1e-10)
    # prefill: exactly top_k routed (token, head) queries per real token reach the attention;
    # decode: each step attends with the 2 shared + 3 routed heads of each row, no other head
    routed = [c for shape, c in calls if c is not None]
    assert sum(int(c.sum()) for c in routed) == 3 * int(mask[:, :25].sum())
    assert sum(sdpa_rows) == 5 * int(mask[:, 25:].sum())
    # the no-padding prefill takes the batched path: shared heads through one causal SDPA call
    calls.clear()
    with torch.no_grad():
        m.skip_inactive_heads = False
        y_all = m(x)
        m.skip_inactive_heads = True
        assert torch.allclose(m(x), y_all, atol=1e-10)
    assert len(calls) == 1 and int(calls[0][1].sum()) == 3 * 3 * 40


def test_moh_gates_follow_the_formula_and_balance_loss():
    m = build("moh", n_heads=6, head_dim=8, n_shared_heads=2, top_k=2).train()
    x = rand(3, 11, D, seed=10)
    g, chosen = m.head_gates(x, None)
    logits = m.router(x)
    alpha = 2 * torch.softmax(logits[..., -2:], -1)
    assert torch.allclose(g[..., :2].sum(-1), alpha[..., 0] * 2)
    assert torch.allclose(g[..., 2:].sum(-1), alpha[..., 1] * 2)
    assert (chosen.sum(-1) == 2).all() and ((g[..., 2:] > 0) == chosen).all()
    p = torch.softmax(logits[..., 2:6], -1)
    f = chosen.double().mean((0, 1)) / 2
    assert torch.allclose(m.aux_loss, 0.01 * 4 * (p.mean((0, 1)) * f).sum())
    # uniform routing probabilities give L_b = 1, so aux_loss = 0.01
    with torch.no_grad():
        m.router.weight.zero_()
        m.head_gates(x, None)
        assert torch.allclose(m.aux_loss, torch.tensor(0.01, dtype=torch.float64))
    with pytest.raises(ValueError, match="top_k"):
        attnzoo.build("moh", d_model=D, n_heads=4, n_shared_heads=1, top_k=4)
    with pytest.raises(ValueError, match="n_shared_heads"):
        attnzoo.build("moh", d_model=D, n_heads=4, n_shared_heads=0)
    for bad in (0, (8, 0), 2.5):
        with pytest.raises(ValueError, match="block_size"):
            attnzoo.build("moh", d_model=D, n_heads=4, n_shared_heads=1, block_size=bad)


# ---------------------------------------------------------------- routing
def _dense(m, x, causal):
    from attnzoo.mixers.layers import apply_rope
    from attnzoo.ops.softmax import softmax_attention

    q, k, v = m.qkv(x)
    pos = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    q, k = apply_rope(q, pos), apply_rope(k, pos)
    o = softmax_attention(q, k, v, causal=causal, impl="reference")
    return m.o_proj(o.reshape(*x.shape[:2], -1))


@pytest.mark.parametrize("name,causal", [("routing", True), ("routing_balanced", False)])
def test_routing_with_one_cluster_and_window_T_equals_dense_attention(name, causal):
    T = 17
    kw = {"share_qk": False} if causal else {}  # shared QK skips the own key when causal: next test
    m = build(name, n_heads=4, n_clusters=1, window=T, n_local_heads=0, **kw)
    x = rand(2, T, D, seed=11)
    with torch.no_grad():
        assert torch.allclose(m(x), _dense(m, x, causal), atol=1e-10)
        m2 = build(name, n_heads=4, n_clusters=1, window=T, n_local_heads=2, **kw)  # local heads, window T
        assert torch.allclose(m2(x), _dense(m2, x, causal), atol=1e-10)


@pytest.mark.parametrize("n_local_heads", [0, 2])
def test_routing_shared_qk_skips_its_own_key_unless_alone(n_local_heads):
    """Reformer's shared-QK rule: with q = k, query i attends to keys j < i, and token 0 to itself."""
    from attnzoo.mixers.layers import apply_rope

    T = 13
    m = build("routing", n_heads=4, n_clusters=1, window=T, n_local_heads=n_local_heads, share_qk=True)
    x = rand(2, T, D, seed=16)
    with torch.no_grad():
        q, k, v = m.qkv(x)
        pos = torch.arange(T).expand(2, -1)
        q, k = apply_rope(q, pos), apply_rope(k, pos)
        logits = torch.einsum("bihd,bjhd->bhij", q, k) * m.head_dim**-0.5
        allowed = torch.ones(T, T).tril(-1).bool()
        allowed[0, 0] = True
        o = torch.einsum("bhij,bjhd->bihd", logits.masked_fill(~allowed, float("-inf")).softmax(-1), v)
        assert torch.allclose(m(x), m.o_proj(o.reshape(2, T, -1)), atol=1e-10)
        y, state = m(x[:, :7], return_state=True)  # decoding continues the rule
        assert torch.allclose(m(x[:, 7:], state=state), m(x)[:, 7:], atol=1e-10)


@pytest.mark.parametrize("name", ["routing", "routing_balanced"])
@pytest.mark.parametrize("share_qk", [True, False])
def test_routing_torch_path_matches_reference(name, share_qk):
    m = build(name, n_heads=4, n_clusters=3, window=5, n_local_heads=1, share_qk=share_qk)
    x = rand(2, 23, D, seed=12)
    mask = torch.ones(2, 23, dtype=torch.bool)
    mask[1, :4] = False
    with torch.no_grad():
        y = m(x, mask=mask)
        m.impl = "reference"
        y_ref = m(x, mask=mask)
    assert torch.allclose(y[mask], y_ref[mask], atol=1e-10)


def test_routing_causal_attends_only_within_its_cluster():
    m = build("routing", n_heads=1, n_clusters=4, window=1, n_local_heads=0)  # one routing head

    def ids_of(x):
        return torch.einsum("bthd,hcd->bthc", m.qkv(x)[0], m.centroids).argmax(-1)[0, :, 0]

    x = rand(1, 30, D, seed=13)
    ids, t = ids_of(x), 29
    others = (ids != ids[t]).nonzero().squeeze(1)
    same = (ids[:t] == ids[t]).nonzero().squeeze(1)
    assert len(others) > 0 and len(same) > 0
    with torch.no_grad():
        y = m(x)[0, t]
        x2 = x.clone()
        x2[0, others] += 0.01 * rand(len(others), D, seed=14)  # small: cluster ids stay put
        assert torch.equal(ids, ids_of(x2))
        assert torch.allclose(m(x2)[0, t], y, atol=1e-12)  # other clusters are invisible
        x3 = x.clone()
        x3[0, same[0]] += 0.01 * rand(D, seed=15)
        assert not torch.allclose(m(x3)[0, t], y, atol=1e-9)  # an earlier token of its cluster is seen


def test_routing_centroids_move_toward_clustered_data_in_training_only():
    torch.manual_seed(0)
    m = attnzoo.build("routing", d_model=D, n_heads=2, n_clusters=3, window=4, n_local_heads=0,
                      kmeans_decay=0.9).train()
    centers = rand(3, D, seed=16) * 3
    def batch(seed):
        lab = torch.randint(0, 3, (4, 32), generator=torch.Generator().manual_seed(seed))
        return (centers[lab] + 0.1 * rand(4, 32, D, seed=seed + 1)).float()

    def spread():  # mean distance from each data point's normalized query to its nearest centroid
        with torch.no_grad():
            q = m.qkv(batch(999))[0]  # [B, T, H, hd], both heads route
            d = [torch.cdist(q[:, :, h].reshape(-1, q.shape[-1]), m.centroids[h]) for h in range(2)]
            return sum(dh.min(-1).values.mean().item() for dh in d) / 2

    before = spread()
    mu0 = m.centroids.clone()
    m.eval()
    with torch.no_grad():
        m(batch(0))
    assert torch.equal(m.centroids, mu0), "eval forwards must not move the centroids"
    m.train()
    for s in range(40):
        m(batch(s))
        assert m.aux_loss is not None and m.aux_loss.item() > 0
    assert spread() < 0.5 * before
    assert not any(b.requires_grad for b in m.buffers())


# ---------------------------------------------------------------- gaam
def _gauss_product(x, mu, var, delta, c):
    """Π_g N_g directly (no logs): x, mu, var scalars-per-channel tensors [..., Dh], delta/c [G]."""
    M = torch.ones_like(x)
    for dg, cg in zip(delta, c):
        z = (x - (mu + dg)) / var.sqrt()
        M = M * torch.exp(-z**2 / (2 * cg**2)) / torch.sqrt(2 * torch.pi * cg**2)
    return M


def test_gaam_sequence_axis_matches_a_loop_over_time():
    m = build("gaam", n_heads=4, n_gaussians=3)
    with torch.no_grad():
        m.delta.copy_(0.3 * rand(4, 3, seed=20))
        m.c.copy_(1 + 0.5 * rand(4, 3, seed=21).abs())
    x = rand(2, 9, D, seed=22)
    y = m(x)
    Dh = D // 4
    ref = torch.zeros_like(x)
    Ms = []
    for t in range(9):
        mu = x[:, : t + 1].mean(1)
        var = x[:, : t + 1].var(1, unbiased=False) + 1e-8
        M = torch.cat([_gauss_product(x[:, t, h * Dh:(h + 1) * Dh], mu[:, h * Dh:(h + 1) * Dh],
                                      var[:, h * Dh:(h + 1) * Dh], m.delta[h], m.c[h]) for h in range(4)], -1)
        Ms.append(M)
        ref[:, t] = x[:, t] * M / torch.stack(Ms, 0).mean(0)
    # t = 0: σ² = eps, so M_0 underflows in the direct form; in log space M_0 / mean(M_0) = 1 exactly
    assert torch.equal(y[:, 0], x[:, 0])
    assert torch.allclose(y[:, 1:], ref[:, 1:], rtol=1e-9, atol=1e-12)
    assert sum(p.numel() for p in m.parameters()) == 2 * 3 * 4


def test_gaam_feature_axis_matches_the_formula_and_block_keeps_padding():
    torch.manual_seed(0)
    m = attnzoo.get_class("gaam")(D, n_heads=2, n_gaussians=2, axis="feature").double()
    x = rand(2, 5, D, seed=23)
    y = m(x)
    Dh = D // 2
    for h in range(2):
        xh = x[..., h * Dh:(h + 1) * Dh]
        M = _gauss_product(xh, xh.mean(-1, keepdim=True), xh.var(-1, unbiased=False, keepdim=True) + 1e-8,
                           m.delta[h], m.c[h])
        assert torch.allclose(y[..., h * Dh:(h + 1) * Dh], xh * M / M.sum(-1, keepdim=True), rtol=1e-9)
    from attnzoo.mixers.gaam import GaussianBlock

    blk = GaussianBlock(D, layers=(("feature", 2, 2), ("sequence", 4, 3))).double()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, :2] = False
    yb = blk(x, mask=mask)
    # a mixer sees zeros at padded tokens (Mixer.forward drops them), so there each layer adds nothing: x
    assert torch.allclose(yb[~mask], x[~mask])
    assert torch.allclose(yb[1], blk(x[1:])[0])
    with pytest.raises(ValueError, match="axis"):
        attnzoo.build("gaam", d_model=D, axis="time")


# ---------------------------------------------------------------- maelre
def _stack_reference(m, x, kind):
    """No merging: h <- h + W_o Attn(RMSNorm(h)) per stage, softmax or linear (elu+1), y = W_out h."""
    B, T, _ = x.shape
    h = x
    for s in range(m.n_stages):
        q, k, v = m.qkv[s](m.norms[s](h)).view(B, T, 3, m.n_heads, -1).unbind(2)
        if kind == "softmax":
            a = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / q.shape[-1] ** 0.5, -1)
            o = torch.einsum("bhij,bjhd->bihd", a, v)
        else:
            fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
            a = torch.einsum("bihd,bjhd->bhij", fq, fk)
            o = torch.einsum("bhij,bjhd->bihd", a / (a.sum(-1, keepdim=True) + 1e-6), v)
        h = h + m.o[s](o.reshape(B, T, -1))
    return m.out_proj(h)


@pytest.mark.parametrize("threshold,kind", [(100, "softmax"), (1, "linear")])
def test_maelre_without_merging_is_a_stack_of_attention_stages(threshold, kind):
    m = build("maelre", n_heads=4, n_stages=2, merge_ratio=0.0, switch_threshold=threshold)
    x = rand(2, 13, D, seed=30)
    with torch.no_grad():
        assert torch.allclose(m(x), _stack_reference(m, x, kind), atol=1e-10)


def test_maelre_merges_progressively_and_unmerges_to_input_length():
    m = build("maelre", n_heads=4, n_stages=3, merge_ratio=0.3, switch_threshold=12)
    x = rand(2, 21, D, seed=31)
    x[:, 6] = x[:, 3]  # an A slot (even) equal to a B slot (odd): merged first...
    with torch.no_grad():
        y = m(x)
    assert m.last_token_counts == [[21, 21], [15, 15], [11, 11]]  # 21 - 6, then 15 - 4; last two stages softmax
    assert torch.allclose(y[:, 6], y[:, 3])  # ...and then both take their group's output
    for b in range(2):  # every original token takes one of the 11 final groups' outputs
        assert len(torch.unique(y[b].round(decimals=8), dim=0)) == 11


def test_bipartite_merge_is_size_weighted_and_never_touches_padding():
    from attnzoo.ops.sparse.token_merging import bipartite_merge

    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.2], [5.0, 5.0]]], dtype=torch.float64)
    size = torch.tensor([[2.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    active = torch.tensor([[True, True, True, True, False]])  # last slot is padding
    group = torch.arange(5)[None]
    h, s, a, g = bipartite_merge(x, x, size, active, group, ratio=0.25)  # r = floor(0.25 * 4) = 1
    assert a.sum() == 3 and s.sum() == 5  # one merge; total size kept
    assert torch.allclose(h[0, 0], (2 * x[0, 0] + x[0, 1]) / 3)  # slot 0 (size 2) merged into slot 1
    assert g[0, 0] == g[0, 1] == 0 and g[0, 2] == 1 and g[0, 3] == 2
    assert not torch.isin(torch.tensor(5.0, dtype=torch.float64), h[0, :3]).any()


@pytest.mark.parametrize("fn", ["size_weighted_softmax", "size_weighted_linear"])
def test_size_weighted_attention_equals_attention_over_duplicated_tokens(fn):
    from attnzoo.mixers import maelre

    f = getattr(maelre, fn)
    q, k, v = rand(1, 3, 2, 4, seed=32), rand(1, 3, 2, 4, seed=33), rand(1, 3, 2, 4, seed=34)
    ones = torch.ones(1, 3, dtype=torch.float64)
    act = torch.ones(1, 3, dtype=torch.bool)
    dup = lambda t: torch.cat([t, t[:, :1]], 1)
    full = f(q, dup(k), dup(v), torch.ones(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.bool))
    sized = f(q, k, v, ones + torch.tensor([[1.0, 0, 0]], dtype=torch.float64), act)
    assert torch.allclose(full, sized, atol=1e-12)
