"""Triton kernels for the per-chunk output of gated linear attention and its value gradient.

Layout as in state.py (packed tokens, chunks of BT from each sequence's start, b the
chunk-local cumulative log gate, h the state entering each chunk, dh the gradient of the state
leaving it). One program per (chunk, V block, head). With S_0 = h of the chunk (CHUNKED.md §1):

    o_i  = scale · [ (q_i ⊙ e^{b_i})ᵀ S_0 + Σ_{j<=i} A_ij v_j ]
    dv_j = scale · Σ_{i>=j} A_ij do_i + (k_j ⊙ e^{b_c - b_j})ᵀ dS_c

A_ij = Σ_k q_ik k_jk e^{b_ik - b_jk} (i >= j). For no gate or a scalar gate (GATE 0, 1) A is
formed here, pairwise, as (Q Kᵀ) ⊙ e^{b_i - b_j}. For a vector gate (GATE 2) it depends on the
chunk's branch (safe.chunk_is_safe, GLA: Yang et al. 2023, arXiv:2312.06635):
safe chunks (total decay >= −SAFE_LOG) form it here as one factorised product per K block about
the half of the chunk's decay, c = b_l / 2 (vector_fast.py), A = (q ⊙ e^{b − c})(k ⊙ e^{c − b})ᵀ and
Aᵀ = (k ⊙ e^{c − b})(q ⊙ e^{b − c})ᵀ from transposed loads; the others
read it from the buffer written by vector.chunk_intra_kernel ([N_tok, H, BT], float32).
FACTOR_F32 takes the factorised operands in float32 (tf32 dots; see vector_fast.FACTOR_F32).
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnzoo.ops.linear.triton.state import chunk_rows
from attnzoo.ops.linear.triton.safe import chunk_is_safe
from attnzoo.ops.linear.triton.vector_fast import factor_cast


@triton.jit
def chunk_output_kernel(
    q, k, v, b, h, A, o, cu_seqlens, chunk_seq, chunk_idx, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, GATE: tl.constexpr, FACTOR_F32: tl.constexpr = False,
):
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    t = t0 + tl.arange(0, BT)
    mt = t < eos
    last = tl.minimum(t0 + BT, eos) - 1
    vv = i_v * BV + tl.arange(0, BV)
    h_base = h + i_c.to(tl.int64) * H * K * V + i_h * K * V
    acc_o = tl.zeros([BT, BV], dtype=tl.float32)
    acc_A = tl.zeros([BT, BT], dtype=tl.float32)
    safe = False
    if GATE == 2:
        safe = chunk_is_safe(b, last, i_h, H, K, BK)
    for i_k in range(tl.cdiv(K, BK)):
        kk = i_k * BK + tl.arange(0, BK)
        mk = kk < K
        qt = tl.load(q + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        if GATE == 2:
            bq = tl.load(b + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
            qs = (qt * tl.exp(bq)).to(qt.dtype)
        else:
            qs = qt
        hs = tl.load(h_base + kk[:, None] * V + vv[None, :], mask=mk[:, None] & (vv < V)[None, :], other=0.0)
        acc_o += tl.dot(qs, hs.to(qs.dtype))
        if GATE < 2:
            kT = tl.load(k + t[None, :] * (H * K) + i_h * K + kk[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            acc_A += tl.dot(qt, kT)
        elif safe:  # factorised about c = b_l / 2: (q ⊙ e^{b − c}) (k ⊙ e^{c − b})ᵀ, |exponents| <= SAFE_LOG / 2
            kT = tl.load(k + t[None, :] * (H * K) + i_h * K + kk[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            bT = tl.load(b + t[None, :] * (H * K) + i_h * K + kk[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            c = 0.5 * tl.load(b + last * (H * K) + i_h * K + kk, mask=mk, other=0.0)
            acc_A += tl.dot(factor_cast(qt * tl.exp(bq - c[None, :]), qt, FACTOR_F32),
                            factor_cast(kT * tl.exp(c[:, None] - bT), qt, FACTOR_F32))
    causal = (tl.arange(0, BT)[:, None] >= tl.arange(0, BT)[None, :]) & mt[:, None] & mt[None, :]
    if GATE == 1:
        bt = tl.load(b + t * H + i_h, mask=mt, other=0.0)
        acc_o *= tl.exp(bt)[:, None]
        acc_A *= tl.exp(tl.where(causal, bt[:, None] - bt[None, :], 0.0))
    if GATE == 2:
        if safe:
            Ablk = tl.where(causal, acc_A, 0.0)
        else:
            Ablk = tl.load(A + t[:, None] * (H * BT) + i_h * BT + tl.arange(0, BT)[None, :], mask=causal, other=0.0)
    else:
        Ablk = tl.where(causal, acc_A, 0.0)
    vt = tl.load(v + t[:, None] * (H * V) + i_h * V + vv[None, :], mask=mt[:, None] & (vv < V)[None, :], other=0.0)
    acc_o += tl.dot(Ablk.to(vt.dtype), vt)
    tl.store(o + t[:, None] * (H * V) + i_h * V + vv[None, :], (acc_o * scale).to(o.dtype.element_ty),
             mask=mt[:, None] & (vv < V)[None, :])


@triton.jit
def chunk_dv_kernel(
    q, k, do, b, dh, A, dv, cu_seqlens, chunk_seq, chunk_idx, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, GATE: tl.constexpr, FACTOR_F32: tl.constexpr = False,
):
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    t = t0 + tl.arange(0, BT)
    mt = t < eos
    last = tl.minimum(t0 + BT, eos) - 1
    vv = i_v * BV + tl.arange(0, BV)
    dh_base = dh + i_c.to(tl.int64) * H * K * V + i_h * K * V
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    AT = tl.zeros([BT, BT], dtype=tl.float32)  # AT[j, i] = A[i, j]
    safe = False
    if GATE == 1:
        bt = tl.load(b + t * H + i_h, mask=mt, other=0.0)
        bl = tl.load(b + last * H + i_h)
    if GATE == 2:
        safe = chunk_is_safe(b, last, i_h, H, K, BK)
    for i_k in range(tl.cdiv(K, BK)):
        kk = i_k * BK + tl.arange(0, BK)
        mk = kk < K
        kt = tl.load(k + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        if GATE == 1:
            ks = (kt * tl.exp(bl - bt)[:, None]).to(kt.dtype)
        elif GATE == 2:
            bk = tl.load(b + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
            blk = tl.load(b + last * (H * K) + i_h * K + kk, mask=mk, other=0.0)
            ks = (kt * tl.exp(blk[None, :] - bk)).to(kt.dtype)
        else:
            ks = kt
        dhs = tl.load(dh_base + kk[:, None] * V + vv[None, :], mask=mk[:, None] & (vv < V)[None, :], other=0.0)
        acc += tl.dot(ks, dhs.to(ks.dtype))
        if GATE < 2:
            qT = tl.load(q + t[None, :] * (H * K) + i_h * K + kk[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            AT += tl.dot(kt, qT)
        elif safe:  # factorised about c = b_l / 2: (k ⊙ e^{c − b}) (q ⊙ e^{b − c})ᵀ from transposed loads
            qT = tl.load(q + t[None, :] * (H * K) + i_h * K + kk[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            bT = tl.load(b + t[None, :] * (H * K) + i_h * K + kk[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            c = 0.5 * blk
            AT += tl.dot(factor_cast(kt * tl.exp(c[None, :] - bk), kt, FACTOR_F32),
                         factor_cast(qT * tl.exp(bT - c[:, None]), kt, FACTOR_F32))
    anti = (tl.arange(0, BT)[:, None] <= tl.arange(0, BT)[None, :]) & mt[:, None] & mt[None, :]
    if GATE == 1:
        AT *= tl.exp(tl.where(anti, bt[None, :] - bt[:, None], 0.0))
    if GATE == 2:
        if safe:
            AT = tl.where(anti, AT, 0.0)
        else:
            AT = tl.load(A + t[None, :] * (H * BT) + i_h * BT + tl.arange(0, BT)[:, None], mask=anti, other=0.0)
    else:
        AT = tl.where(anti, AT, 0.0)
    dot_ = tl.load(do + t[:, None] * (H * V) + i_h * V + vv[None, :], mask=mt[:, None] & (vv < V)[None, :], other=0.0)
    acc += scale * tl.dot(AT.to(dot_.dtype), dot_)
    tl.store(dv + t[:, None] * (H * V) + i_h * V + vv[None, :], acc.to(dv.dtype.element_ty),
             mask=mt[:, None] & (vv < V)[None, :])
