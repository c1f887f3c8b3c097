"""Triton block-sparse decode: one query token per sequence against a long KV cache, reading only the
selected blocks (flash-decoding's split over the keys, Dao et al. 2023, with NSA's grouping of a KV
head's G query heads into the rows of one tile, Yuan et al. 2025, arXiv:2502.11089).

Grid (batch·KV head, split): each program takes up to `per_split` entries of its block list, runs the
online softmax over them for the G query heads at once (rows padded to >= 16 for tl.dot) and writes a
partial (o, lse); `combine_splits` merges them: o = Σ_s 2^{lse_s - lse} o_s, lse = log2 Σ_s 2^{lse_s}.
Keys j >= cache_lens[b] are masked (the query sits at position cache_lens[b] - 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def block_sparse_decode_kernel(
    Q, K, V, OP, LP, IDS, CNT, LENS,
    stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ib, stride_ih, stride_cb,
    HKV, G, NSPLIT, per_split, qk_scale,
    BS: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
):
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)  # batch offsets can pass 2^31 elements (long caches)
    hk = bh % HKV
    offs_g = tl.arange(0, BG)
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    gmask = offs_g < G
    q = tl.load(Q + b * stride_qb + (hk * G + offs_g)[:, None] * stride_qh + offs_d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)
    L = tl.load(LENS + b)
    cnt = tl.load(CNT + b * stride_cb + hk)
    s0 = sp * per_split
    s1 = tl.minimum(cnt, s0 + per_split)
    m_i = tl.full([BG], float("-inf"), tl.float32)
    l_i = tl.zeros([BG], tl.float32)
    acc = tl.zeros([BG, BD], tl.float32)
    ids = IDS + b * stride_ib + hk * stride_ih
    kbase = K + b * stride_kb + hk * stride_kh
    vbase = V + b * stride_vb + hk * stride_vh
    for s in range(s0, s1):
        kb = tl.load(ids + s)
        for n0 in tl.static_range(0, BS, BN):
            offs_n = kb * BS + n0 + tl.arange(0, BN)
            kmask = (offs_n[:, None] < L) & dmask[None, :]
            k = tl.load(kbase + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kmask, other=0.0)
            v = tl.load(vbase + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kmask, other=0.0)
            sc = tl.dot(q, tl.trans(k)) * qk_scale
            sc = tl.where(offs_n[None, :] < L, sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_use)
            p = tl.exp2(sc - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    row = (bh * NSPLIT + sp) * G + offs_g
    tl.store(OP + row[:, None] * D + offs_d[None, :], acc / l_safe[:, None], mask=gmask[:, None] & dmask[None, :])
    tl.store(LP + row, tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe)), mask=gmask)


def combine_splits(o_part: torch.Tensor, lse_part: torch.Tensor) -> torch.Tensor:
    """o_part [B, Hkv, S, G, D] (float32), lse_part [B, Hkv, S, G] (log2) -> o [B, Hkv, G, D]."""
    top = lse_part.amax(2, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp2(lse_part - top)  # 0 for empty splits
    den = w.sum(2).clamp_min(1e-30)
    return (w[..., None] * o_part).sum(2) / den[..., None]


def triton_block_sparse_decode(q, k_cache, v_cache, block_ids, block_counts, cache_lens, *, block_size: int,
                               scale: float):
    """q [B, Hq, D]; k_cache, v_cache [B, L, Hkv, D] (last dim contiguous); block_ids int32 [B, Hkv, S];
    block_counts int32 [B, Hkv]; cache_lens [B] -> o [B, Hq, D] in q's dtype."""
    B, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    G = Hq // Hkv
    S = block_ids.shape[-1]
    q = q.contiguous()
    ids, cnt = block_ids.contiguous(), block_counts.contiguous()
    lens = cache_lens.to(device=q.device, dtype=torch.int32).contiguous()
    want = max(1, -(-2 * 132 // (B * Hkv)))  # about two programs per SM of an H100/H200
    per_split = max(1, -(-S // want))
    nsplit = max(1, -(-S // per_split))
    o_part = torch.empty(B, Hkv, nsplit, G, D, device=q.device, dtype=torch.float32)
    lse_part = torch.empty(B, Hkv, nsplit, G, device=q.device, dtype=torch.float32)
    BG = max(16, triton.next_power_of_2(G))
    block_sparse_decode_kernel[(B * Hkv, nsplit)](
        q, k_cache, v_cache, o_part, lse_part, ids, cnt, lens,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), ids.stride(0), ids.stride(1), cnt.stride(0),
        Hkv, G, nsplit, per_split, scale * 1.4426950408889634,
        BS=block_size, BN=min(block_size, 64), BG=BG, D=D, BD=triton.next_power_of_2(D), num_warps=4,
    )
    return combine_splits(o_part, lse_part).reshape(B, Hq, D).to(q.dtype)
