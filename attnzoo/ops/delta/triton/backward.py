"""Per-chunk backward kernels of the chunked (gated) delta rule (after the reverse state pass).

Layout and names as in wy.py and state.py: h[n] = S_n (state entering chunk n), dh[n] = G_n (the
gradient of the state leaving it), v_new = V' = U - W S_n, dv_new = dV'. q is unscaled; the output
is o = scale · ((Q ⊙ e^b) S_n + (Q Kᵀ ⊙ D ⊙ Lower) V'), and the state leaving the chunk is
e^{bl} S_n + (K ⊙ e^{bl - b})ᵀ V'. Writing dX = Ainvᵀ dV' (the gradient of β ⊙ V through the UT
transform; that of β e^b ⊙ K is -dX S_nᵀ since dW = -dV' S_nᵀ) and dA = -StrictLower(dX V'ᵀ):

delta_wy_bwd_kernel (chunk, head):  dv = β ⊙ dX;  dβ = Σ v ⊙ dX - Σ_j (dA' ⊙ KKᵀ)_ij + e^b Σ k ⊙ dX_K;
    dk_wy = -(Z K + Zᵀ K) + dX_K ⊙ β e^b  with dA' = -dA ⊙ D, Z = dA' ⊙ β_i;  and its share of db.
delta_dqk_kernel (chunk, K block, head):  dq = scale (dO V'ᵀ ⊙ D) K + scale e^b ⊙ dO S_nᵀ;
    dk = (scale dO V'ᵀ ⊙ D)ᵀ Q + e^{bl - b} ⊙ V' G_nᵀ + dk_wy;  and its share of db.

db_t is the gradient of the chunk-local cumulative gate b_t (CHUNKED.md section 3: a pairwise decay
D_ij, i > j, contributes p_ij = dD_ij D_ij to db_i and -p_ij to db_j; e^{bl} and e^{bl - b_j} reach
the chunk's last row); dg is its reverse cumsum inside the chunk (ops/linear/triton/cumsum.py).
Terms that cancel exactly (the diagonal of a pairwise decay, j = last in e^{bl - b_j}) are left out
rather than summed: with strong gates they are far larger than the gradient and fp32 rounding of
their difference dominated dg (3e-3 relative against the float64 loop at g ~ -10, now ~1e-6).
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnzoo.ops.linear.triton.state import chunk_rows


@triton.jit
def delta_wy_bwd_kernel(
    k, v, beta, b, Ainv, h, v_new, dv_new, dv, dk_wy, dbeta, db, cu_seqlens, chunk_seq, chunk_idx,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    r = tl.arange(0, BT)
    t = t0 + r
    mt = t < eos
    kk = tl.arange(0, BK)
    mk = kk < K
    kt = tl.load(k + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    dt = kt.dtype
    bt = tl.load(beta + t * H + i_h, mask=mt, other=0.0).to(tl.float32)
    # AinvT[j, i] = Ainv[i, j] (rows of padded positions are never read: masked to 0)
    AinvT = tl.load(Ainv + t[None, :] * (H * BT) + i_h * BT + r[:, None], mask=mt[None, :], other=0.0).to(dt)
    h_base = h + i_c.to(tl.int64) * H * K * V + i_h * K * V
    dXk = tl.zeros([BT, BK], dtype=tl.float32)  # dX V'... : -(gradient of β e^b ⊙ K)
    Mp = tl.zeros([BT, BT], dtype=tl.float32)  # dX V'ᵀ
    dbeta_acc = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        vv = i_v * BV + tl.arange(0, BV)
        mv = vv < V
        m = mt[:, None] & mv[None, :]
        off = t[:, None] * (H * V) + i_h * V + vv[None, :]
        dX = tl.dot(AinvT, tl.load(dv_new + off, mask=m, other=0.0).to(dt))
        vt = tl.load(v + off, mask=m, other=0.0)
        vnt = tl.load(v_new + off, mask=m, other=0.0)
        hT = tl.load(h_base + kk[None, :] * V + vv[:, None], mask=mk[None, :] & mv[:, None], other=0.0)
        tl.store(dv + off, (dX * bt[:, None]).to(dv.dtype.element_ty), mask=m)
        dbeta_acc += tl.sum(vt.to(tl.float32) * dX, 1)
        Mp += tl.dot(dX.to(dt), tl.trans(vnt))
        dXk += tl.dot(dX.to(dt), hT.to(dt))
    strict = (r[:, None] > r[None, :]) & mt[:, None] & mt[None, :]
    if GATE == 1:
        bg = tl.load(b + t * H + i_h, mask=mt, other=0.0)
        Mp *= tl.exp(tl.where(strict, bg[:, None] - bg[None, :], 0.0))
        eb = tl.exp(bg)
    else:
        eb = tl.full([BT], 1.0, dtype=tl.float32)
    Mp = tl.where(strict, Mp, 0.0)
    KK = tl.dot(kt, tl.trans(kt))
    Z = (Mp * bt[:, None]).to(dt)
    dk = -(tl.dot(Z, kt) + tl.dot(tl.trans(Z), kt)) - dXk * (bt * eb)[:, None]
    MKK = Mp * KK
    ebk = -tl.sum(dXk * kt.to(tl.float32), 1)  # Σ_k k ⊙ (gradient of β e^b ⊙ K)
    dbeta_acc += ebk * eb - tl.sum(MKK, 1)
    tl.store(dk_wy + t[:, None] * (H * K) + i_h * K + kk[None, :], dk, mask=mt[:, None] & mk[None, :])
    tl.store(dbeta + t * H + i_h, dbeta_acc, mask=mt)
    if GATE == 1:
        pair = -MKK * bt[:, None]
        tl.store(db + t * H + i_h, tl.sum(pair, 1) - tl.sum(pair, 0) + ebk * eb * bt, mask=mt)


@triton.jit
def delta_dqk_kernel(
    q, k, b, h, dh, v_new, do, dk_wy, dq, dk, db_part, cu_seqlens, chunk_seq, chunk_idx, scale, N_TOK,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr,
):
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    r = tl.arange(0, BT)
    t = t0 + r
    mt = t < eos
    kk = i_k * BK + tl.arange(0, BK)
    mk = kk < K
    mtk = mt[:, None] & mk[None, :]
    qt = tl.load(q + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mtk, other=0.0)
    kt = tl.load(k + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mtk, other=0.0)
    dt = kt.dtype
    base = i_c.to(tl.int64) * H * K * V + i_h * K * V
    dq_dec = tl.zeros([BT, BK], dtype=tl.float32)  # dO S_nᵀ
    dk_dec = tl.zeros([BT, BK], dtype=tl.float32)  # V' G_nᵀ
    dQK = tl.zeros([BT, BT], dtype=tl.float32)  # dO V'ᵀ
    dgam = tl.zeros([BK], dtype=tl.float32)  # Σ_v S_n ⊙ G_n
    for i_v in range(tl.cdiv(V, BV)):
        vv = i_v * BV + tl.arange(0, BV)
        mv = vv < V
        m = mt[:, None] & mv[None, :]
        off = t[:, None] * (H * V) + i_h * V + vv[None, :]
        dot_ = tl.load(do + off, mask=m, other=0.0)
        vnt = tl.load(v_new + off, mask=m, other=0.0)
        hoff = base + kk[None, :] * V + vv[:, None]
        hT = tl.load(h + hoff, mask=mk[None, :] & mv[:, None], other=0.0)
        dhT = tl.load(dh + hoff, mask=mk[None, :] & mv[:, None], other=0.0)
        dq_dec += tl.dot(dot_, hT.to(dt))
        dk_dec += tl.dot(vnt.to(dt), dhT.to(dt))
        dQK += tl.dot(dot_, tl.trans(vnt.to(dt)))
        dgam += tl.sum(hT.to(tl.float32) * dhT.to(tl.float32), 0)
    causal = (r[:, None] >= r[None, :]) & mt[:, None] & mt[None, :]
    last = tl.minimum(t0 + BT, eos) - 1
    if GATE == 1:
        bg = tl.load(b + t * H + i_h, mask=mt, other=0.0)
        bl = tl.load(b + last * H + i_h)
        dQK *= tl.exp(tl.where(causal, bg[:, None] - bg[None, :], 0.0))
        eb = tl.exp(bg)
        ea = tl.exp(bl - bg)
    else:
        eb = tl.full([BT], 1.0, dtype=tl.float32)
        ea = eb
    dQK = tl.where(causal, dQK * scale, 0.0).to(dt)
    dq_attn = tl.dot(dQK, kt)
    dk_attn = tl.dot(tl.trans(dQK), qt)
    dq_dec = dq_dec * (scale * eb)[:, None]
    dk_dec = dk_dec * ea[:, None]
    off_k = t[:, None] * (H * K) + i_h * K + kk[None, :]
    dkw = tl.load(dk_wy + off_k, mask=mtk, other=0.0)
    tl.store(dq + off_k, (dq_attn + dq_dec).to(dq.dtype.element_ty), mask=mtk)
    tl.store(dk + off_k, (dk_attn + dk_dec + dkw).to(dk.dtype.element_ty), mask=mtk)
    if GATE == 1:
        # pairs (i > j) of this K block's share of Q Kᵀ ⊙ D: the diagonal (D_ii = 1) and the last row's
        # e^{bl - bl} = 1 carry no gate and are left out, not added and cancelled (fp32 rounding)
        pair = tl.where(causal & (r[:, None] > r[None, :]), dQK.to(tl.float32) * tl.dot(qt, tl.trans(kt)), 0.0)
        s = tl.where(t == last, 0.0, tl.sum(dk_dec * kt.to(tl.float32), 1))
        dbv = tl.sum(pair, 1) - tl.sum(pair, 0) + tl.sum(qt.to(tl.float32) * dq_dec, 1) - s
        dbv += tl.where(t == last, tl.sum(s, 0) + tl.exp(bl) * tl.sum(dgam, 0), 0.0)
        tl.store(db_part + i_k * N_TOK * H + t * H + i_h, dbv, mask=mt)
