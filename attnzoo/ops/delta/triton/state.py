"""Triton kernels that pass the state of the chunked (gated) delta rule across chunks.

Layout as in wy.py (packed tokens, chunks of BT from each sequence's start). One program per
(V block, sequence, head) keeps the state S [K, BV] in float32 registers (all of K: the corrected
values need W S over every key channel) and walks its sequence's chunks. With S_n the state
entering chunk n, bl its last row's cumulative log gate (CHUNKED.md section 2):

    forward:  h[n] = S_n;  V'_n = U_n - W_n S_n;  S_{n+1} = e^{bl} S_n + (K ⊙ e^{bl - b})ᵀ V'_n
    backward: dh[n] = G_n (the gradient of S_{n+1});
              dV'_n = scale (Q Kᵀ ⊙ D)ᵀ dO_n + (K ⊙ e^{bl - b}) G_n
              G_{n-1} = e^{bl} G_n + scale (Q ⊙ e^b)ᵀ dO_n - W_nᵀ dV'_n

h [N_chunks, H, K, V] in the input dtype for 16-bit inputs (float32 otherwise), V' (v_new) in the
input dtype, dV' (dv_new) float32. Every exponent is <= 0 as written.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _seq(cu_seqlens, chunk_offsets, H: tl.constexpr, BT: tl.constexpr):
    i_nh = tl.program_id(0)
    n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + n).to(tl.int64)
    eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    return n, i_h, bos, eos, tl.cdiv(eos - bos, BT), tl.load(chunk_offsets + n).to(tl.int64)


@triton.jit
def delta_state_fwd_kernel(
    k, w, u, b, h, v_new, h0, ht, cu_seqlens, chunk_offsets,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    n, i_h, bos, eos, n_chunks, c0 = _seq(cu_seqlens, chunk_offsets, H=H, BT=BT)
    kk = tl.arange(0, BK)
    vv = tl.program_id(1) * BV + tl.arange(0, BV)
    mk, mv = kk < K, vv < V
    s_off = i_h * K * V + kk[:, None] * V + vv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + n * H * K * V + s_off, mask=mk[:, None] & mv[None, :], other=0.0)
    r = tl.arange(0, BT)
    for i in range(0, n_chunks):
        tl.store(h + (c0 + i) * H * K * V + s_off, S.to(h.dtype.element_ty), mask=mk[:, None] & mv[None, :])
        t = bos + i * BT + r
        mt = t < eos
        mtk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        wt = tl.load(w + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mtk, other=0.0)
        ut = tl.load(u + t[:, None] * (H * V) + i_h * V + vv[None, :], mask=mtv, other=0.0)
        vn = ut.to(tl.float32) - tl.dot(wt, S.to(wt.dtype))
        tl.store(v_new + t[:, None] * (H * V) + i_h * V + vv[None, :], vn.to(v_new.dtype.element_ty), mask=mtv)
        kT = tl.load(k + t[None, :] * (H * K) + i_h * K + kk[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
        if GATE == 1:
            last = tl.minimum(bos + (i + 1) * BT, eos) - 1
            bl = tl.load(b + last * H + i_h)
            bt = tl.load(b + t * H + i_h, mask=mt, other=0.0)
            S *= tl.exp(bl)
            kT = (kT * tl.exp(bl - bt)[None, :]).to(wt.dtype)
        S += tl.dot(kT, vn.to(kT.dtype))
    if STORE_HT:
        tl.store(ht + n * H * K * V + s_off, S, mask=mk[:, None] & mv[None, :])


@triton.jit
def delta_state_bwd_kernel(
    q, k, w, b, do, dh, dv_new, dht, dh0, cu_seqlens, chunk_offsets, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):
    n, i_h, bos, eos, n_chunks, c0 = _seq(cu_seqlens, chunk_offsets, H=H, BT=BT)
    kk = tl.arange(0, BK)
    vv = tl.program_id(1) * BV + tl.arange(0, BV)
    mk, mv = kk < K, vv < V
    s_off = i_h * K * V + kk[:, None] * V + vv[None, :]
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + n * H * K * V + s_off, mask=mk[:, None] & mv[None, :], other=0.0)
    r = tl.arange(0, BT)
    for j in range(0, n_chunks):
        i = n_chunks - 1 - j
        tl.store(dh + (c0 + i) * H * K * V + s_off, dS.to(dh.dtype.element_ty), mask=mk[:, None] & mv[None, :])
        t = bos + i * BT + r
        mt = t < eos
        mtk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        qt = tl.load(q + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mtk, other=0.0)
        kt = tl.load(k + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mtk, other=0.0)
        wt = tl.load(w + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mtk, other=0.0)
        dot_ = tl.load(do + t[:, None] * (H * V) + i_h * V + vv[None, :], mask=mtv, other=0.0)
        AT = tl.dot(kt, tl.trans(qt))  # AT[j, i] = k_j · q_i
        anti = (r[:, None] <= r[None, :]) & mt[:, None] & mt[None, :]
        if GATE == 1:
            last = tl.minimum(bos + (i + 1) * BT, eos) - 1
            bl = tl.load(b + last * H + i_h)
            bt = tl.load(b + t * H + i_h, mask=mt, other=0.0)
            AT *= tl.exp(tl.where(anti, bt[None, :] - bt[:, None], 0.0))
            ks = (kt * tl.exp(bl - bt)[:, None]).to(kt.dtype)
            qs = (qt * (scale * tl.exp(bt))[:, None]).to(qt.dtype)
        else:
            ks = kt
            qs = (qt * scale).to(qt.dtype)
        AT = tl.where(anti, AT * scale, 0.0)
        dvn = tl.dot(AT.to(dot_.dtype), dot_) + tl.dot(ks, dS.to(ks.dtype))
        tl.store(dv_new + t[:, None] * (H * V) + i_h * V + vv[None, :], dvn, mask=mtv)
        if GATE == 1:
            dS *= tl.exp(bl)
        dS += tl.dot(tl.trans(qs), dot_.to(qs.dtype)) - tl.dot(tl.trans(wt), dvn.to(wt.dtype))
    if STORE_DH0:
        tl.store(dh0 + n * H * K * V + s_off, dS, mask=mk[:, None] & mv[None, :])
