"""Backward kernels of the fused short-sequence GLA path (fused.py has the math and the layout).

Two passes over a sequence's chunks, each a jitted helper: _pass_dq runs the state S forward and writes
dq, _pass_dkdv runs dS backward from dht and writes dk, dv (and dh0 from the caller). The gate
gradient dg_t = Σ_{s>=t} (x_s − y_s) + fin, with x = q ⊙ dq, y = k ⊙ dk (summed over K for a scalar
gate) and fin = rowsum(S_T ⊙ dht), is assembled in one of two ways:

- fused_bwd_kernel (grid N·H, TUNE["bwd_split"] False): one program runs both passes; pass 1 writes x
  into dg's buffer, pass 2 reads it back and writes dg itself (a running sum from the end). One launch.
  With TUNE["dg_seg"] (tokens) pass 1 also checkpoints the state at every segment end and pass 2
  restarts the running sum there at the exact rowsum(S_c ⊙ dS_c): the rounding of x − y then adds up
  over one segment instead of the whole sequence (fp16 in the interpreter, T = 500, K = V = 32, weak
  scalar gate: dg 1.5e-3 from the float64 loop summed over the sequence, 1.1e-3 / 6.6e-4 / 4.9e-4
  with float32 checkpoints every 128 / 64 / 32 tokens, 3.3e-4 for the chunked path).
- fused_bwd_split_kernel (grid 2 x N·H, TUNE["bwd_split"] True): the two passes run as separate
  programs side by side (twice the programs, half the serial chain each): pass 1 writes the exclusive
  prefix E_t = Σ_{s<t} x_s and tot = Σ_s x_s + fin per (sequence, head), pass 2 writes −Σ_{s>=t} y_s;
  then fused_dg_combine_kernel forms dg_t = tot − E_t − Σ_{s>=t} y_s. Two launches.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnzoo.ops.linear.triton.fused_common import (_bounds, _cols, _pairwise, _pairwise_dq, _rows, _scalar_gate,
                                                    _vector_gate_T)


@triton.jit
def _pass_dq(q, k, v, g, do, dq, xbuf, ckpt, S, bos, eos, i_h, kk, vv, scale,
             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr,
             PREFIX: tl.constexpr, SEGC: tl.constexpr):
    """States forward from S: writes dq and, per token, x = q ⊙ dq (PREFIX: its exclusive prefix sum
    along the sequence) into xbuf; with SEGC, the state leaving every SEGC-th chunk into ckpt (_slot).
    Returns (S_T, Σ_t x_t)."""
    ar = tl.arange(0, BT)
    P = tl.zeros([kk.shape[0]], dtype=tl.float32)
    if GATE == 1:
        P = tl.sum(P, axis=0)
    nc = tl.cdiv(eos - bos, BT)
    for c in range(nc):
        t = bos + c * BT + ar
        mt = t < eos
        kT = _cols(k, t, mt, i_h, kk, H, K)
        qT = _cols(q, t, mt, i_h, kk, H, K)
        vt = _rows(v, t, mt, i_h, vv, H, V)
        doT = _cols(do, t, mt, i_h, vv, H, V)
        dt = kT.dtype
        anti = (ar[:, None] <= ar[None, :]) & mt[:, None] & mt[None, :]  # [j, i]: j <= i
        dAT = tl.dot(vt, doT) * scale  # [j, i] = scale · v_j · do_i
        dqT = tl.dot(S.to(dt), doT) * scale
        if GATE == 2:
            bT, bl = _vector_gate_T(g, t, mt, i_h, kk, H, K)
            dqT = dqT * tl.exp(bT) + _pairwise_dq(bT, kT.to(tl.float32), tl.where(anti, dAT, 0.0), mt, BT)
            kd = kT * tl.exp(bl[:, None] - bT)
        elif GATE == 1:
            b, bl = _scalar_gate(g, t, mt, i_h, H)
            dAT = tl.where(anti, dAT * tl.exp(tl.where(anti, b[None, :] - b[:, None], 0.0)), 0.0)
            dqT = dqT * tl.exp(b)[None, :] + tl.dot(kT, dAT.to(dt))
            kd = kT * tl.exp(bl - b)[None, :]
        else:
            dqT += tl.dot(kT, tl.where(anti, dAT, 0.0).to(dt))
            kd = kT
        mkt = (kk < K)[:, None] & mt[None, :]
        tl.store(dq + t[None, :] * (H * K) + i_h * K + kk[:, None], dqT.to(dq.dtype.element_ty), mask=mkt)
        if GATE == 2:
            x = qT.to(tl.float32) * dqT  # [BK, BT]
            if PREFIX:
                x_out = P[:, None] + tl.cumsum(x, axis=1) - x
            else:
                x_out = x
            tl.store(xbuf + t[None, :] * (H * K) + i_h * K + kk[:, None], x_out, mask=mkt)
            P += tl.sum(x, axis=1)
            S *= tl.exp(bl)[:, None]
        elif GATE == 1:
            x = tl.sum(qT.to(tl.float32) * dqT, axis=0)  # [BT]
            if PREFIX:
                x_out = P + tl.cumsum(x, axis=0) - x
            else:
                x_out = x
            tl.store(xbuf + t * H + i_h, x_out, mask=mt)
            P += tl.sum(x, axis=0)
            S *= tl.exp(bl)
        S += tl.dot(kd.to(dt), vt)
        if SEGC > 0:
            if ((c + 1) % SEGC == 0) & (c < nc - 1):
                tl.store(_slot(ckpt, bos, c, i_h, kk, vv, H, K, V, BT, SEGC), S.to(ckpt.dtype.element_ty),
                         mask=(kk < K)[:, None] & (vv < V)[None, :])
    return S, P


@triton.jit
def _slot(ckpt, bos, c, i_h, kk, vv, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
          SEGC: tl.constexpr):
    """Pointers of the checkpoint of the state leaving chunk c (a segment's last, never the sequence's
    last chunk): slot e // (SEGC·BT) of ckpt [slots, H, K, V], e the chunk's last token. Interior
    segment ends of one sequence are SEGC·BT tokens apart and those of the next sequence start at
    least that far after this one's, so no two share a slot."""
    e = bos + (c + 1) * BT - 1
    return ckpt + ((e // (SEGC * BT)) * H + i_h) * (K * V) + kk[:, None] * V + vv[None, :]


@triton.jit
def _pass_dkdv(q, k, v, g, do, dk, dv, dg, ckpt, dS, R, bos, eos, i_h, kk, vv, scale,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr,
               READ_X: tl.constexpr, SEGC: tl.constexpr):
    """dS backward from dS: writes dk, dv and dg_t = R + Σ_{s>=t} (x_s − y_s) with x read from dg
    (READ_X) or 0. With SEGC (and a gate), R restarts at every checkpointed segment end c as the exact
    rowsum(S_c ⊙ dS_c) (CHUNKED.md §3), so that the sums run over one segment, not the sequence.
    Returns dS entering the first chunk."""
    ar = tl.arange(0, BT)
    nc = tl.cdiv(eos - bos, BT)
    for j in range(nc):
        c = nc - 1 - j
        if SEGC > 0:
            if GATE > 0:
                if ((c + 1) % SEGC == 0) & (c < nc - 1):
                    Sc = tl.load(_slot(ckpt, bos, c, i_h, kk, vv, H, K, V, BT, SEGC),
                                 mask=(kk < K)[:, None] & (vv < V)[None, :], other=0.0).to(tl.float32)
                    if GATE == 1:
                        R = tl.sum(tl.sum(Sc * dS, axis=1), axis=0)
                    else:
                        R = tl.sum(Sc * dS, axis=1)
        t = bos + c * BT + ar
        mt = t < eos
        qT = _cols(q, t, mt, i_h, kk, H, K)
        kT = _cols(k, t, mt, i_h, kk, H, K)
        kt = _rows(k, t, mt, i_h, kk, H, K)
        vT = _cols(v, t, mt, i_h, vv, H, V)
        dot_ = _rows(do, t, mt, i_h, vv, H, V)
        dt = kT.dtype
        causal = (ar[:, None] >= ar[None, :]) & mt[:, None] & mt[None, :]  # [i, j]: i >= j
        anti = (ar[:, None] <= ar[None, :]) & mt[:, None] & mt[None, :]    # [j, i]
        dA = tl.dot(dot_, vT) * scale  # [i, j] = scale · do_i · v_j
        dkT = tl.dot(dS.to(dt), vT)
        if GATE == 2:
            bT, bl = _vector_gate_T(g, t, mt, i_h, kk, H, K)
            b = tl.cumsum(_rows(g, t, mt, i_h, kk, H, K).to(tl.float32), axis=0)
            AT, dk_in = _pairwise(bT, kT.to(tl.float32), qT.to(tl.float32), tl.where(causal, dA, 0.0), mt, BT, True)
            dkT = dkT * tl.exp(bl[:, None] - bT) + dk_in
            kd = kt * tl.exp(bl[None, :] - b)
            qs = qT * (scale * tl.exp(bT))
        elif GATE == 1:
            b, bl = _scalar_gate(g, t, mt, i_h, H)
            dA = tl.where(causal, dA * tl.exp(tl.where(causal, b[:, None] - b[None, :], 0.0)), 0.0)
            dkT = dkT * tl.exp(bl - b)[None, :] + tl.dot(qT, dA.to(dt))
            AT = tl.where(anti, tl.dot(kt, qT) * tl.exp(tl.where(anti, b[None, :] - b[:, None], 0.0)), 0.0)
            kd = kt * tl.exp(bl - b)[:, None]
            qs = qT * (scale * tl.exp(b))[None, :]
        else:
            dkT += tl.dot(qT, tl.where(causal, dA, 0.0).to(dt))
            AT = tl.where(anti, tl.dot(kt, qT), 0.0)
            kd = kt
            qs = qT * scale
        dvt = tl.dot(kd.to(dt), dS.to(dt)) + scale * tl.dot(AT.to(dt), dot_)
        tl.store(dv + t[:, None] * (H * V) + i_h * V + vv[None, :], dvt.to(dv.dtype.element_ty),
                 mask=mt[:, None] & (vv < V)[None, :])
        mkt = (kk < K)[:, None] & mt[None, :]
        tl.store(dk + t[None, :] * (H * K) + i_h * K + kk[:, None], dkT.to(dk.dtype.element_ty), mask=mkt)
        if GATE == 2:  # per channel: dg_t = R + Σ_{s >= t in the chunk} (x_s − y_s)
            dg_ptr = dg + t[None, :] * (H * K) + i_h * K + kk[:, None]
            dbT = -kT.to(tl.float32) * dkT
            if READ_X:
                dbT += tl.load(dg_ptr, mask=mkt, other=0.0)
            tot = tl.sum(dbT, axis=1)
            tl.store(dg_ptr, R[:, None] + tot[:, None] - tl.cumsum(dbT, axis=1) + dbT, mask=mkt)
            R += tot
            dS *= tl.exp(bl)[:, None]
        elif GATE == 1:
            dbt = -tl.sum(kT.to(tl.float32) * dkT, axis=0)
            if READ_X:
                dbt += tl.load(dg + t * H + i_h, mask=mt, other=0.0)
            tot = tl.sum(dbt, axis=0)
            tl.store(dg + t * H + i_h, R + tot - tl.cumsum(dbt, axis=0) + dbt, mask=mt)
            R += tot
            dS *= tl.exp(bl)
        dS += tl.dot(qs.to(dt), dot_)
    return dS


@triton.jit
def _setup(cu_seqlens, T, i_nh, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
           BV: tl.constexpr, VARLEN: tl.constexpr):
    """(n, i_h, bos, eos, kk, vv, s_off, mkv) of program i_nh."""
    n, i_h = i_nh // H, i_nh % H
    bos, eos = _bounds(cu_seqlens, n, T, VARLEN)
    kk = tl.arange(0, BK)
    vv = tl.arange(0, BV)
    s_off = i_nh.to(tl.int64) * K * V + kk[:, None] * V + vv[None, :]
    return n, i_h, bos, eos, kk, vv, s_off, (kk < K)[:, None] & (vv < V)[None, :]


@triton.jit
def _fin(S, dht, s_off, mkv, HAS_DHT: tl.constexpr, GATE: tl.constexpr):
    """(dS_T, fin = rowsum(S_T ⊙ dS_T), summed over K for a scalar gate)."""
    dS = tl.zeros(S.shape, dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + s_off, mask=mkv, other=0.0)
    R = tl.sum(S * dS, axis=1)
    if GATE == 1:
        R = tl.sum(R, axis=0)
    return dS, R


@triton.jit
def fused_bwd_kernel(
    q, k, v, g, do, h0, dht, dq, dk, dv, dg, dh0, ckpt, cu_seqlens, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    VARLEN: tl.constexpr, SEGC: tl.constexpr = 0,
):
    """Grid (N·H,): dq, dk, dv, dg (float32) and dh0 of one sequence and head, both passes; SEGC > 0:
    dg per segment of SEGC chunks, from state checkpoints in ckpt ([slots, H, K, V], the input dtype
    for bf16 / fp16 inputs, else float32, as the chunked path's h)."""
    i_nh = tl.program_id(0)
    n, i_h, bos, eos, kk, vv, s_off, mkv = _setup(cu_seqlens, T, i_nh, H, K, V, BK, BV, VARLEN)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + s_off, mask=mkv, other=0.0)
    S, _ = _pass_dq(q, k, v, g, do, dq, dg, ckpt, S, bos, eos, i_h, kk, vv, scale, H, K, V, BT, GATE, False, SEGC)
    dS, R = _fin(S, dht, s_off, mkv, HAS_DHT, GATE)
    tl.debug_barrier()  # pass 2 reads the q ⊙ dq (and checkpoints) this program wrote
    dS = _pass_dkdv(q, k, v, g, do, dk, dv, dg, ckpt, dS, R, bos, eos, i_h, kk, vv, scale, H, K, V, BT, GATE, True,
                    SEGC)
    if STORE_DH0:
        tl.store(dh0 + s_off, dS, mask=mkv)


@triton.jit
def fused_bwd_split_kernel(
    q, k, v, g, do, h0, dht, dq, dk, dv, dg, dh0, E, tot, cu_seqlens, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """Grid (N·H, 2): program (·, 0) pass 1 (dq; E, tot), program (·, 1) pass 2 (dk, dv, −Σ_{s>=t} y_s
    into dg, dh0). tot [N·H] (scalar gate) or [N·H, K] float32."""
    i_nh = tl.program_id(0)
    n, i_h, bos, eos, kk, vv, s_off, mkv = _setup(cu_seqlens, T, i_nh, H, K, V, BK, BV, VARLEN)
    if tl.program_id(1) == 0:
        S = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_H0:
            S += tl.load(h0 + s_off, mask=mkv, other=0.0)
        S, P = _pass_dq(q, k, v, g, do, dq, E, E, S, bos, eos, i_h, kk, vv, scale, H, K, V, BT, GATE, True, 0)
        _, R = _fin(S, dht, s_off, mkv, HAS_DHT, GATE)
        if GATE == 2:
            tl.store(tot + i_nh * K + kk, P + R, mask=kk < K)
        elif GATE == 1:
            tl.store(tot + i_nh, P + R)
    else:
        dS = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_DHT:
            dS += tl.load(dht + s_off, mask=mkv, other=0.0)
        R = tl.zeros([BK], dtype=tl.float32)
        if GATE == 1:
            R = tl.sum(R, axis=0)
        dS = _pass_dkdv(q, k, v, g, do, dk, dv, dg, dg, dS, R, bos, eos, i_h, kk, vv, scale, H, K, V, BT, GATE,
                        False, 0)
        if STORE_DH0:
            tl.store(dh0 + s_off, dS, mask=mkv)


@triton.jit
def fused_dg_combine_kernel(dg, E, tot, cu_seqlens, T, H: tl.constexpr, G: tl.constexpr, BT: tl.constexpr,
                            BG: tl.constexpr, VARLEN: tl.constexpr):
    """dg_t += tot − E_t (in place) for one sequence and head. Grid (N·H,); G = 1 (scalar gate) or K."""
    i_nh = tl.program_id(0)
    n, i_h = i_nh // H, i_nh % H
    bos, eos = _bounds(cu_seqlens, n, T, VARLEN)
    cols = tl.arange(0, BG)
    tv = tl.load(tot + i_nh * G + cols, mask=cols < G, other=0.0)
    for c in range(tl.cdiv(eos - bos, BT)):
        t = bos + c * BT + tl.arange(0, BT)
        m = (t < eos)[:, None] & (cols < G)[None, :]
        off = t[:, None] * (H * G) + i_h * G + cols[None, :]
        tl.store(dg + off, tl.load(dg + off, mask=m, other=0.0) + tv[None, :] - tl.load(E + off, mask=m, other=0.0),
                 mask=m)
