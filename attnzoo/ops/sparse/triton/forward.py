"""Triton forward of block-sparse causal attention: FlashAttention-2's online softmax (Dao 2023,
arXiv:2307.08691) over only the key blocks a query block selected (NSA's selected-attention kernel,
Yuan et al. 2025, arXiv:2502.11089, with the query tile taken along the sequence instead of the GQA group).

One program per (query tile of BM rows, batch·query head). It reads its KV head's list
block_ids[b, hk, m, :block_counts[b, hk, m]] (ascending: the last entry is the one that can hold keys
after a query, so only that block is masked causally) and walks each block in key tiles of BN:

    m_i <- max(m_i, rowmax(S)),  l_i <- l_i e^{m_old - m_i} + rowsum(e^{S - m_i}),  acc <- acc e^{..} + P V

in base 2 (qk_scale = scale · log2 e). Writes o (input dtype) and the row log-sum-exp (log2, float32)
for the backward. A row with no allowed key gets o = 0.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_tile(q, k, v, m_i, l_i, acc, qk_scale, offs_m, offs_n, T, MASK: tl.constexpr):
    """One key tile of the online softmax; MASK applies causality (key <= query) and key < T."""
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASK:
        ok = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < T)
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def block_sparse_fwd_kernel(
    Q, K, V, O, LSE, IDS, CNT,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh, stride_ib, stride_ih, stride_im, stride_cb, stride_ch,
    T, H, G, qk_scale,
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
    q = tl.load(Q + b * stride_qb + offs_m[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=(offs_m[:, None] < T) & dmask[None, :], other=0.0)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    ids = IDS + b * stride_ib + hk * stride_ih + m * stride_im
    cnt = tl.load(CNT + b * stride_cb + hk * stride_ch + m)
    kbase = K + b * stride_kb + hk * stride_kh
    vbase = V + b * stride_vb + hk * stride_vh
    for s in range(cnt - 1):  # blocks strictly before the last selected one: complete and all visible
        kb = tl.load(ids + s)
        for n0 in tl.static_range(0, BS, BN):
            offs_n = kb * BS + n0 + tl.arange(0, BN)
            k = tl.load(kbase + offs_n[:, None] * stride_kt + offs_d[None, :], mask=dmask[None, :], other=0.0)
            v = tl.load(vbase + offs_n[:, None] * stride_vt + offs_d[None, :], mask=dmask[None, :], other=0.0)
            m_i, l_i, acc = attend_tile(q, k, v, m_i, l_i, acc, qk_scale, offs_m, offs_n, T, False)
    if cnt > 0:  # the last selected block (the own block when present): masked causally
        kb = tl.load(ids + cnt - 1)
        for n0 in tl.static_range(0, BS, BN):
            if kb * BS + n0 <= row0 + BM - 1:  # skip key tiles entirely after the query tile
                offs_n = kb * BS + n0 + tl.arange(0, BN)
                kmask = (offs_n[:, None] < T) & dmask[None, :]
                k = tl.load(kbase + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kmask, other=0.0)
                v = tl.load(vbase + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kmask, other=0.0)
                m_i, l_i, acc = attend_tile(q, k, v, m_i, l_i, acc, qk_scale, offs_m, offs_n, T, True)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    tl.store(O + b * stride_ob + offs_m[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=(offs_m[:, None] < T) & dmask[None, :])
    lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(l_safe))
    tl.store(LSE + bh * T + offs_m, lse, mask=offs_m < T)
