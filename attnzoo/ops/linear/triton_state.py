"""Triton kernels that pass the state of gated linear attention across chunks (CHUNKED.md §1).

Packed layout (see triton_cumsum.py): k [N_tok, H, K], v [N_tok, H, V], q, do likewise; b the
chunk-local cumulative log gate, [N_tok, H] (scalar, GATE=1) or [N_tok, H, K] (vector, GATE=2),
or absent (GATE=0). h [N_chunks, H, K, V] is the state *entering* each chunk; dh the gradient
with respect to the state *leaving* each chunk. One program runs over one (sequence, head, K
block, V block) sequentially through that sequence's chunks; the state stays in float32
registers. With c the chunk's last token:

    forward:   S <- diag(e^{b_c}) S + Σ_j (k_j ⊙ e^{b_c - b_j}) v_jᵀ
    backward:  dS <- diag(e^{b_c}) dS + scale · Σ_i (q_i ⊙ e^{b_i}) do_iᵀ

Every exponent is <= 0 as written.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def chunk_bounds(cu_seqlens, chunk_seq, i_c):
    """[bos, eos) (int64) of the packed sequence that holds chunk i_c (chunk tables of triton_chunk)."""
    n = tl.load(chunk_seq + i_c)
    return tl.load(cu_seqlens + n).to(tl.int64), tl.load(cu_seqlens + n + 1).to(tl.int64)


@triton.jit
def chunk_state_fwd_kernel(
    k, v, b, h, h0, ht, cu_seqlens, chunk_offsets,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + n).to(tl.int64)
    eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + n).to(tl.int64)
    kk = i_k * BK + tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mkv = (kk < K)[:, None] & (vv < V)[None, :]
    s_off = i_h * K * V + kk[:, None] * V + vv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + n * H * K * V + s_off, mask=mkv, other=0.0)
    n_chunks = tl.cdiv(eos - bos, BT)
    for i in range(n_chunks):
        tl.store(h + (c0 + i) * H * K * V + s_off, S.to(h.dtype.element_ty), mask=mkv)
        t = bos + i * BT + tl.arange(0, BT)
        mt = t < eos
        kT = tl.load(k + t[None, :] * (H * K) + i_h * K + kk[:, None],
                     mask=(kk < K)[:, None] & mt[None, :], other=0.0)
        vt = tl.load(v + t[:, None] * (H * V) + i_h * V + vv[None, :],
                     mask=mt[:, None] & (vv < V)[None, :], other=0.0)
        last = tl.minimum(bos + (i + 1) * BT, eos) - 1
        if GATE == 1:
            bl = tl.load(b + last * H + i_h)
            bt = tl.load(b + t * H + i_h, mask=mt, other=0.0)
            S *= tl.exp(bl)
            kT = (kT * tl.exp(bl - bt)[None, :]).to(vt.dtype)
        elif GATE == 2:
            bl = tl.load(b + last * (H * K) + i_h * K + kk, mask=kk < K, other=0.0)
            bT = tl.load(b + t[None, :] * (H * K) + i_h * K + kk[:, None],
                         mask=(kk < K)[:, None] & mt[None, :], other=0.0)
            S *= tl.exp(bl)[:, None]
            kT = (kT * tl.exp(bl[:, None] - bT)).to(vt.dtype)
        S += tl.dot(kT, vt)
    if STORE_HT:
        tl.store(ht + n * H * K * V + s_off, S, mask=mkv)


@triton.jit
def chunk_state_bwd_kernel(
    q, do, b, dh, dht, dh0, h, ht, term, cu_seqlens, chunk_offsets, scale, NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, GATE: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):
    """With a gate, also writes term = rowsum(S_c ⊙ dS_c) per chunk (S_c the state leaving the chunk,
    from h of the next chunk or ht), partial over this program's V block (and K block if scalar):
    the gradient of every later cumulative gate, so the reverse cumsum stays inside each chunk."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + n).to(tl.int64)
    eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + n).to(tl.int64)
    kk = i_k * BK + tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mkv = (kk < K)[:, None] & (vv < V)[None, :]
    s_off = i_h * K * V + kk[:, None] * V + vv[None, :]
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + n * H * K * V + s_off, mask=mkv, other=0.0)
    n_chunks = tl.cdiv(eos - bos, BT)
    for j in range(n_chunks):
        i = n_chunks - 1 - j
        tl.store(dh + (c0 + i) * H * K * V + s_off, dS.to(dh.dtype.element_ty), mask=mkv)
        if GATE > 0:
            S_c = tl.load(h + (c0 + i + 1) * H * K * V + s_off, mask=mkv & (i < n_chunks - 1), other=0.0)
            S_c = S_c.to(tl.float32) + tl.load(ht + n * H * K * V + s_off, mask=mkv & (i == n_chunks - 1), other=0.0)
            part = tl.sum(S_c * dS, axis=1)
            if GATE == 1:
                tl.store(term + ((i_k * tl.num_programs(1) + i_v) * NC + c0 + i) * H + i_h, tl.sum(part, axis=0))
            else:
                tl.store(term + ((i_v * NC + c0 + i) * H + i_h) * K + kk, part, mask=kk < K)
        t = bos + i * BT + tl.arange(0, BT)
        mt = t < eos
        qT = tl.load(q + t[None, :] * (H * K) + i_h * K + kk[:, None],
                     mask=(kk < K)[:, None] & mt[None, :], other=0.0)
        dot_ = tl.load(do + t[:, None] * (H * V) + i_h * V + vv[None, :],
                       mask=mt[:, None] & (vv < V)[None, :], other=0.0)
        last = tl.minimum(bos + (i + 1) * BT, eos) - 1
        if GATE == 1:
            bl = tl.load(b + last * H + i_h)
            bt = tl.load(b + t * H + i_h, mask=mt, other=0.0)
            dS *= tl.exp(bl)
            qT = (qT * (scale * tl.exp(bt))[None, :]).to(dot_.dtype)
        elif GATE == 2:
            bl = tl.load(b + last * (H * K) + i_h * K + kk, mask=kk < K, other=0.0)
            bT = tl.load(b + t[None, :] * (H * K) + i_h * K + kk[:, None],
                         mask=(kk < K)[:, None] & mt[None, :], other=0.0)
            dS *= tl.exp(bl)[:, None]
            qT = (qT.to(tl.float32) * scale * tl.exp(bT)).to(dot_.dtype)
        else:
            qT = (qT.to(tl.float32) * scale).to(dot_.dtype)
        dS += tl.dot(qT, dot_)
    if STORE_DH0:
        tl.store(dh0 + n * H * K * V + s_off, dS, mask=mkv)
