"""Triton kernel for dq, dk (and the gate's per-token gradient) of chunked gated linear attention
with no gate or a scalar gate (RetNet / Lightning g_gamma, Mamba-2 / simple GLA g [B, T, H]).

Layout as in state.py. One program per (chunk, head), holding the whole K (<= 256) so that
the per-token gate gradient can be summed over K in registers. With S_0 = h (state entering the
chunk), dS_c = dh (gradient of the state leaving it), D_ij = e^{b_i - b_j} (i >= j) and
dA_ij = scale · do_i · v_j:

    dq_i = scale · e^{b_i} (do_i S_0ᵀ) + Σ_{j<=i} dA_ij D_ij k_j
    dk_j = e^{b_c - b_j} (v_j dS_cᵀ) + Σ_{i>=j} dA_ij D_ij q_i
    db_t = Σ_k (q_t ⊙ dq_t − k_t ⊙ dk_t)
    dg_t = Σ_{s>=t in the chunk} db_s + <S_c, dS_c>                 (the identity of CHUNKED.md §3)

with S_c = e^{b_c} S_0 + Σ_j e^{b_c − b_j} k_j v_jᵀ the state leaving the chunk, so that
<S_c, dS_c> = e^{b_c} <S_0, dS_c> + Σ_j k_j · (e^{b_c − b_j} v_j dS_cᵀ): both parts come from tiles
this kernel holds anyway (the second is dk's inter-chunk term), and the kernel writes dg itself
(the gradient of every later cumulative gate stays exact: no reverse cumsum over the sequence).

The transposed products are formed from transposed loads, never by transposing a tensor-core
result (the pattern Triton < 3.7.1 miscompiles on Hopper, fla issue #640).
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnzoo.ops.linear.triton.state import chunk_rows


@triton.jit
def chunk_value_products(do, v, h, dh, t, mt, kk, mk, s_base, i_h, H: tl.constexpr, V: tl.constexpr,
                         BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HDH: tl.constexpr = False):
    """The value-side products of one chunk and K block, summed over V blocks: do h_cᵀ [BT, BK],
    v dh_cᵀ [BT, BK], ds = do vᵀ and dsT = v doᵀ [BT, BT] (the transposed one from transposed
    loads, not by transposing a tensor-core result); with HDH also Σ_v h_c ⊙ dh_c per key channel
    ([BK]; zeros without HDH)."""
    acc_dq = tl.zeros([BT, BK], dtype=tl.float32)
    acc_dk = tl.zeros([BT, BK], dtype=tl.float32)
    ds = tl.zeros([BT, BT], dtype=tl.float32)   # ds[i, j] = do_i · v_j
    dsT = tl.zeros([BT, BT], dtype=tl.float32)  # dsT[j, i] = v_j · do_i
    hdh = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        vv = i_v * BV + tl.arange(0, BV)
        mv = vv < V
        mtv = mt[:, None] & mv[None, :]
        mvt = mv[:, None] & mt[None, :]
        dot_ = tl.load(do + t[:, None] * (H * V) + i_h * V + vv[None, :], mask=mtv, other=0.0)
        vt = tl.load(v + t[:, None] * (H * V) + i_h * V + vv[None, :], mask=mtv, other=0.0)
        doT = tl.load(do + t[None, :] * (H * V) + i_h * V + vv[:, None], mask=mvt, other=0.0)
        vT = tl.load(v + t[None, :] * (H * V) + i_h * V + vv[:, None], mask=mvt, other=0.0)
        hT = tl.load(h + s_base + kk[None, :] * V + vv[:, None], mask=mk[None, :] & mv[:, None], other=0.0)
        dhT = tl.load(dh + s_base + kk[None, :] * V + vv[:, None], mask=mk[None, :] & mv[:, None], other=0.0)
        acc_dq += tl.dot(dot_, hT.to(dot_.dtype))
        acc_dk += tl.dot(vt, dhT.to(vt.dtype))
        ds += tl.dot(dot_, vT)
        dsT += tl.dot(vt, doT)
        if HDH:
            hdh += tl.sum(hT.to(tl.float32) * dhT.to(tl.float32), axis=0)
    return acc_dq, acc_dk, ds, dsT, hdh


@triton.jit
def chunk_scalar_dqdk_kernel(
    q, k, v, do, b, h, dh, dq, dk, db, cu_seqlens, chunk_seq, chunk_idx, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, GATE: tl.constexpr, FUSED_DG: tl.constexpr = True,
):
    """FUSED_DG (scalar gate): write dg (the in-chunk reverse cumsum plus <S_c, dS_c>) instead of db."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    t = t0 + tl.arange(0, BT)
    mt = t < eos
    kk = tl.arange(0, BK)
    mk = kk < K
    mtk = mt[:, None] & mk[None, :]
    s_base = i_c.to(tl.int64) * H * K * V + i_h * K * V
    acc_dq, acc_dk, ds, dsT, hdh = chunk_value_products(do, v, h, dh, t, mt, kk, mk, s_base, i_h, H, V, BT, BK, BV,
                                                        HDH=FUSED_DG if GATE == 1 else False)
    ar = tl.arange(0, BT)
    causal = (ar[:, None] >= ar[None, :]) & mt[:, None] & mt[None, :]
    anti = (ar[:, None] <= ar[None, :]) & mt[:, None] & mt[None, :]
    if GATE == 1:
        bt = tl.load(b + t * H + i_h, mask=mt, other=0.0)
        bl = tl.load(b + tl.minimum(t0 + BT, eos) * H - H + i_h)
        acc_dq *= (scale * tl.exp(bt))[:, None]
        acc_dk *= tl.exp(bl - bt)[:, None]
        ds = tl.where(causal, ds * scale * tl.exp(tl.where(causal, bt[:, None] - bt[None, :], 0.0)), 0.0)
        dsT = tl.where(anti, dsT * scale * tl.exp(tl.where(anti, bt[None, :] - bt[:, None], 0.0)), 0.0)
    else:
        acc_dq *= scale
        ds = tl.where(causal, ds * scale, 0.0)
        dsT = tl.where(anti, dsT * scale, 0.0)
    qt = tl.load(q + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mtk, other=0.0)
    kt = tl.load(k + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mtk, other=0.0)
    if GATE == 1:
        if FUSED_DG:  # <S_c, dS_c>, S_c = e^{b_c} S_0 + Σ_j e^{b_c − b_j} k_j v_jᵀ the state leaving the chunk
            after = tl.exp(bl) * tl.sum(hdh, axis=0) + tl.sum(tl.sum(kt.to(tl.float32) * acc_dk, axis=1), axis=0)
    acc_dq += tl.dot(ds.to(kt.dtype), kt)
    acc_dk += tl.dot(dsT.to(qt.dtype), qt)
    off = t[:, None] * (H * K) + i_h * K + kk[None, :]
    tl.store(dq + off, acc_dq.to(dq.dtype.element_ty), mask=mtk)
    tl.store(dk + off, acc_dk.to(dk.dtype.element_ty), mask=mtk)
    if GATE == 1:
        dbt = tl.sum(qt.to(tl.float32) * acc_dq - kt.to(tl.float32) * acc_dk, axis=1)
        if FUSED_DG:  # dg: reverse cumsum of db inside the chunk plus everything after it (`after`)
            dbt = tl.sum(dbt, axis=0) - tl.cumsum(dbt, axis=0) + dbt + after
        tl.store(db + t * H + i_h, dbt, mask=mt)
