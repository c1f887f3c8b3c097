"""Block top-k selection and the torch block-sparse path against the dense masked reference (float64)."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.softmax.reference import softmax_attention_reference
from attnzoo.ops.sparse import (
    allowed_keys,
    block_queries,
    block_sparse_attention,
    block_sparse_decode,
    block_topk_attention,
    pooled_block_keys,
    select_blocks,
)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def qkv(B, T, Hq, Hkv, D, seed=0, dtype=torch.float64):
    return rand(B, T, Hq, D, seed=seed, dtype=dtype), rand(B, T, Hkv, D, seed=seed + 1, dtype=dtype), \
        rand(B, T, Hkv, D, seed=seed + 2, dtype=dtype)


def test_selection_keeps_own_local_and_sink_blocks_and_the_top_scored_ones():
    B, T, Hq, Hkv, D, bs = 2, 100, 4, 2, 8, 8
    q, k, _ = qkv(B, T, Hq, Hkv, D)
    qrep, kbar = block_queries(q, bs), pooled_block_keys(k, None, bs)
    assert torch.allclose(kbar[:, 2], k[:, 16:24].mean(1)) and torch.equal(qrep[:, 3], q[:, 24])
    assert torch.allclose(kbar[:, -1], k[:, 96:].mean(1))  # the partial last block: its own count
    assert torch.allclose(kbar, pooled_block_keys(k, torch.ones(B, T, dtype=torch.bool), bs))
    ids, cnt = select_blocks(qrep, kbar, top_k=3, sink_blocks=1, local_blocks=2, score="logits")
    M = -(-T // bs)
    assert ids.shape == (B, Hkv, M, 6) and ids.dtype == torch.int32
    logits = torch.einsum("bmkgd,bnkd->bkmn", qrep.view(B, M, Hkv, 2, D), kbar) / 2 * D**-0.5
    for m in range(M):
        row = ids[:, :, m]
        real = [sorted(r[: c].tolist()) for r, c in zip(row.reshape(-1, 6), cnt[:, :, m].reshape(-1))]
        forced = {b for b in range(m + 1) if b < 1 or b > m - 2}
        n_cand = max(0, m - len(forced & set(range(m))))
        for (bi, hi), sel in zip([(b, h) for b in range(B) for h in range(Hkv)], real):
            assert sel == sorted(set(sel)) and max(sel) == m and set(sel) >= forced  # ascending, own last
            assert len(sel) == len(forced) + min(3, n_cand)
            chosen = [b for b in sel if b not in forced]
            others = [b for b in range(m) if b not in forced and b not in chosen]
            if chosen and others:
                assert logits[bi, hi, m, chosen].min() >= logits[bi, hi, m, others].max()
        assert (row[..., :][cnt[:, :, m][..., None] <= torch.arange(6)] == -1).all()  # -1 padded


def test_softmax_and_logit_scores_rank_differently_and_bad_arguments_raise():
    B, T, Hq, Hkv, D, bs = 1, 256, 8, 1, 4, 4
    q, k = rand(B, T, Hq, D, seed=6) * 4, rand(B, T, Hkv, D, seed=7) * 4
    qrep, kbar = block_queries(q, bs), pooled_block_keys(k, None, bs)
    a = select_blocks(qrep, kbar, top_k=2, score="softmax")[0]
    b = select_blocks(qrep, kbar, top_k=2, score="logits")[0]
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="score"):
        select_blocks(qrep, kbar, top_k=2, score="max")
    with pytest.raises(ValueError, match="local_blocks"):
        select_blocks(qrep, kbar, top_k=2, local_blocks=0)
    with pytest.raises(ValueError, match="top_k"):
        select_blocks(qrep, kbar, top_k=-1)


CASES = [(1, 4, 2, 2, 1), (63, 8, 4, 2, 2), (65, 16, 2, 1, 1), (200, 16, 4, 4, 3)]


@pytest.mark.parametrize("T,bs,Hq,Hkv,top_k", CASES)
def test_torch_path_equals_reference_forward_and_backward(T, bs, Hq, Hkv, top_k):
    q, k, v = qkv(2, T, Hq, Hkv, 8, seed=T)
    ids, cnt = select_blocks(block_queries(q, bs), pooled_block_keys(k, None, bs), top_k=top_k, sink_blocks=1)
    outs, grads = [], []
    w = rand(2, T, Hq, 8, seed=99)
    for impl in ("torch", "reference"):
        ins = [t.clone().requires_grad_(True) for t in (q, k, v)]
        o = block_sparse_attention(*ins, ids, cnt, block_size=bs, impl=impl)
        (o * w).sum().backward()
        outs.append(o)
        grads.append([t.grad for t in ins])
    assert torch.allclose(outs[0], outs[1], atol=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12)


def test_reference_is_dense_attention_restricted_to_the_selection_and_all_blocks_is_dense_causal():
    B, T, Hq, Hkv, D, bs = 2, 45, 4, 2, 8, 8
    q, k, v = qkv(B, T, Hq, Hkv, D, seed=3)
    o, ids, cnt = block_topk_attention(q, k, v, block_size=bs, top_k=2, impl="reference")
    allowed = allowed_keys(ids, T, bs)  # [B, Hkv, T, T]
    assert not (allowed & ~torch.ones(T, T, dtype=torch.bool).tril()).any()
    assert (allowed.sum(-1) < torch.arange(1, T + 1)).any()  # really sparse
    G = Hq // Hkv
    for h in range(Hq):
        ref = softmax_attention_reference(q[:, :, h:h + 1], k[:, :, h // G:h // G + 1], v[:, :, h // G:h // G + 1],
                                          allowed=allowed[:, h // G], scale=D**-0.5)
        assert torch.allclose(o[:, :, h:h + 1], ref, atol=1e-12)
    dense, _, _ = block_topk_attention(q, k, v, block_size=bs, top_k=100, impl="torch")
    causal = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T)
    for h in range(Hq):
        ref = softmax_attention_reference(q[:, :, h:h + 1], k[:, :, h // G:h // G + 1], v[:, :, h // G:h // G + 1],
                                          allowed=causal, scale=D**-0.5)
        assert torch.allclose(dense[:, :, h:h + 1], ref, atol=1e-12)


def test_decode_equals_the_last_row_of_prefill_with_the_same_selection():
    B, Hq, Hkv, D, bs = 3, 4, 2, 8, 8
    lens = torch.tensor([40, 17, 8])
    q, k, v = qkv(B, 40, Hq, Hkv, D, seed=5)
    for impl in ("torch", "reference"):
        for b, n in enumerate(lens.tolist()):
            qb, kb, vb = q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n]
            ids, cnt = select_blocks(block_queries(qb, bs), pooled_block_keys(kb, None, bs), top_k=2, sink_blocks=1)
            full = block_sparse_attention(qb, kb, vb, ids, cnt, block_size=bs, impl=impl)
            m = (n - 1) // bs
            o = block_sparse_decode(qb[:, -1], kb, vb, ids[:, :, m], cnt[:, :, m], lens[b:b + 1], block_size=bs,
                                    impl=impl)
            assert torch.allclose(o, full[:, -1], atol=1e-12)
        # batched over rows of different cache lengths (padding after each row's length is ignored)
        valid = torch.arange(40)[None] < lens[:, None]
        qrep = torch.stack([q[b, (n - 1) // bs * bs] for b, n in enumerate(lens.tolist())])[:, None]
        ids, cnt = select_blocks(qrep, pooled_block_keys(k, valid, bs), top_k=2, sink_blocks=1,
                                 q_block=((lens - 1) // bs)[:, None])
        qd = q[torch.arange(B), lens - 1]
        o = block_sparse_decode(qd, k, v, ids[:, :, 0], cnt[:, :, 0], lens, block_size=bs, impl=impl)
        ref = block_sparse_decode(qd, k, v, ids[:, :, 0], cnt[:, :, 0], lens, block_size=bs, impl="reference")
        assert torch.allclose(o, ref, atol=1e-12)


def test_bad_inputs_raise_value_errors():
    q, k, v = qkv(1, 20, 4, 2, 8)
    ids, cnt = select_blocks(block_queries(q, 8), pooled_block_keys(k, None, 8), top_k=1)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        block_sparse_attention(q[:, :, :3], k, v, ids, cnt, block_size=8)
    with pytest.raises(ValueError, match="block_ids"):
        block_sparse_attention(q, k, v, ids[:, :, :2], cnt, block_size=8)
    with pytest.raises(ValueError, match="block_ids"):
        block_sparse_attention(q, k, v, ids.float(), cnt, block_size=8)
    with pytest.raises(ValueError, match="impl"):
        block_sparse_attention(q, k, v, ids, cnt, block_size=8, impl="fast")
    with pytest.raises(ValueError, match="cache_lens"):
        block_sparse_decode(q[:, -1], k, v, ids[:, :, -1], cnt[:, :, -1], torch.tensor([20, 20]), block_size=8)
