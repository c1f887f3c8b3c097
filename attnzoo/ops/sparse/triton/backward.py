"""Triton backward of block-sparse causal attention (FlashAttention-2's backward, Dao 2023,
arXiv:2307.08691, over the selected blocks only). The selection is an integer input: not differentiated.

    P = exp2(qk_scale · Q Kᵀ - lse),  δ_i = Σ_d o_id do_id,  dS = P ⊙ (dO Vᵀ - δ)
    dQ = scale · dS K,  dK = scale · dSᵀ Q,  dV = Pᵀ dO

dq: one program per (query tile, batch·query head), walking the query block's selected key blocks as
the forward does. dk/dv: one program per (key tile, batch·KV head), walking the query blocks that
selected its key block (the transposed selection, `transpose_selection`) and, for each, the G query
heads of its group; so dk, dv are written once, without atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def transpose_selection(block_ids, block_counts, n_key_blocks: int):
    """Query blocks per key block: (q_ids int32 [B, Hkv, N, R] ascending, -1 padded; q_counts [B, Hkv, N]).

    Built with torch (one sort of the B·Hkv·M·S entries and one host sync for R, the longest list)."""
    B, Hkv, M, S = block_ids.shape
    dev = block_ids.device
    s = torch.arange(S, device=dev)
    real = (s < block_counts[..., None].long()) & (block_ids >= 0)
    m_of = torch.arange(M, device=dev)[:, None].expand(M, S)
    row = torch.arange(B * Hkv, device=dev)[:, None, None]
    key = (row * n_key_blocks + block_ids.long().view(B * Hkv, M, S)) * M + m_of  # sort by (row, kv, m)
    key = key[real.view(B * Hkv, M, S)]
    key = torch.sort(key).values
    m_sorted = key % M
    slot = key // M  # row * N + kv
    q_counts = torch.bincount(slot, minlength=B * Hkv * n_key_blocks)
    starts = torch.cumsum(q_counts, 0) - q_counts
    rank = torch.arange(key.numel(), device=dev) - starts[slot]
    R = max(1, int(q_counts.max())) if key.numel() else 1
    q_ids = torch.full((B * Hkv * n_key_blocks, R), -1, dtype=torch.int32, device=dev)
    q_ids[slot, rank] = m_sorted.to(torch.int32)
    return q_ids.view(B, Hkv, n_key_blocks, R), q_counts.to(torch.int32).view(B, Hkv, n_key_blocks)


@triton.jit
def dq_tile(q, do, k, v, dq, lse, delta, qk_scale, offs_m, offs_n, T, MASK: tl.constexpr):
    s = tl.dot(q, tl.trans(k)) * qk_scale
    p = tl.exp2(s - lse[:, None])
    if MASK:
        p = tl.where((offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < T), p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k)


@triton.jit
def block_sparse_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, IDS, CNT,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ib, stride_ih, stride_im, stride_cb, stride_ch,
    T, H, G, qk_scale, sm_scale,
    BS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # batch offsets can pass 2^31 elements (long caches)
    h = bh % H
    hk = h // G
    m = pid // (BS // BM)
    row0 = pid * BM
    offs_m = row0 + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    qmask = (offs_m[:, None] < T) & dmask[None, :]
    qoff = b * stride_qb + offs_m[:, None] * stride_qt + h * stride_qh + offs_d[None, :]
    q = tl.load(Q + qoff, mask=qmask, other=0.0)
    do = tl.load(DO + qoff, mask=qmask, other=0.0)  # DO and DQ share q's strides
    lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BM, BD], tl.float32)
    ids = IDS + b * stride_ib + hk * stride_ih + m * stride_im
    cnt = tl.load(CNT + b * stride_cb + hk * stride_ch + m)
    kbase = K + b * stride_kb + hk * stride_kh
    vbase = V + b * stride_vb + hk * stride_vh
    for s in range(cnt - 1):
        kb = tl.load(ids + s)
        for n0 in tl.static_range(0, BS, BN):
            offs_n = kb * BS + n0 + tl.arange(0, BN)
            k = tl.load(kbase + offs_n[:, None] * stride_kt + offs_d[None, :], mask=dmask[None, :], other=0.0)
            v = tl.load(vbase + offs_n[:, None] * stride_vt + offs_d[None, :], mask=dmask[None, :], other=0.0)
            dq = dq_tile(q, do, k, v, dq, lse, delta, qk_scale, offs_m, offs_n, T, False)
    if cnt > 0:
        kb = tl.load(ids + cnt - 1)
        for n0 in tl.static_range(0, BS, BN):
            if kb * BS + n0 <= row0 + BM - 1:
                offs_n = kb * BS + n0 + tl.arange(0, BN)
                kmask = (offs_n[:, None] < T) & dmask[None, :]
                k = tl.load(kbase + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kmask, other=0.0)
                v = tl.load(vbase + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kmask, other=0.0)
                dq = dq_tile(q, do, k, v, dq, lse, delta, qk_scale, offs_m, offs_n, T, True)
    tl.store(DQ + qoff, (dq * sm_scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def block_sparse_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, QIDS, QCNT,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ib, stride_ih, stride_in, stride_cb, stride_ch,
    T, H, HKV, G, qk_scale, sm_scale,
    BS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)  # batch offsets can pass 2^31 elements (long caches)
    hk = bh % HKV
    kb = pid // (BS // BN)
    offs_n = pid * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    kmask = (offs_n[:, None] < T) & dmask[None, :]
    koff = b * stride_kb + offs_n[:, None] * stride_kt + hk * stride_kh + offs_d[None, :]
    voff = b * stride_vb + offs_n[:, None] * stride_vt + hk * stride_vh + offs_d[None, :]
    k = tl.load(K + koff, mask=kmask, other=0.0)
    v = tl.load(V + voff, mask=kmask, other=0.0)
    dk = tl.zeros([BN, BD], tl.float32)
    dv = tl.zeros([BN, BD], tl.float32)
    qids = QIDS + b * stride_ib + hk * stride_ih + kb * stride_in
    cnt = tl.load(QCNT + b * stride_cb + hk * stride_ch + kb)
    for s in range(cnt):
        m = tl.load(qids + s)
        for g in range(G):
            h = hk * G + g
            for m0 in tl.static_range(0, BS, BM):
                offs_m = m * BS + m0 + tl.arange(0, BM)
                if m * BS + m0 + BM - 1 >= pid * BN:  # some query of the tile is at or after the keys
                    qm = (offs_m[:, None] < T) & dmask[None, :]
                    qoff = b * stride_qb + offs_m[:, None] * stride_qt + h * stride_qh + offs_d[None, :]
                    q = tl.load(Q + qoff, mask=qm, other=0.0)
                    do = tl.load(DO + qoff, mask=qm, other=0.0)
                    lse = tl.load(LSE + (b * H + h) * T + offs_m, mask=offs_m < T, other=0.0)
                    delta = tl.load(DELTA + (b * H + h) * T + offs_m, mask=offs_m < T, other=0.0)
                    st = tl.dot(k, tl.trans(q)) * qk_scale  # [BN, BM]
                    pt = tl.exp2(st - lse[None, :])
                    pt = tl.where((offs_n[:, None] <= offs_m[None, :]) & (offs_m[None, :] < T), pt, 0.0)
                    dv += tl.dot(pt.to(do.dtype), do)
                    dpt = tl.dot(v, tl.trans(do))
                    dst = pt * (dpt - delta[None, :])
                    dk += tl.dot(dst.to(q.dtype), q)
    tl.store(DK + koff, (dk * sm_scale).to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + voff, dv.to(DV.dtype.element_ty), mask=kmask)
