"""Device helpers shared by the fused short-sequence GLA kernels (fused.py forward, fused_bwd.py
backward): sequence bounds, row / column tile loads, the gate loads and the pairwise intra-chunk terms
of the vector gate. See fused.py for the layout and the equations."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _bounds(cu_seqlens, n, T, VARLEN: tl.constexpr):
    if VARLEN:
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    else:
        bos = n.to(tl.int64) * T
        eos = bos + T
    return bos, eos


@triton.jit
def _rows(x, t, mt, i_h, cols, H: tl.constexpr, D: tl.constexpr):
    """x[t, i_h, cols] as [BT, BD] (zeros outside the sequence and past D)."""
    return tl.load(x + t[:, None] * (H * D) + i_h * D + cols[None, :], mask=mt[:, None] & (cols < D)[None, :],
                   other=0.0)


@triton.jit
def _cols(x, t, mt, i_h, rows, H: tl.constexpr, D: tl.constexpr):
    """The transposed tile x[t, i_h, rows]ᵀ as [BD, BT]."""
    return tl.load(x + t[None, :] * (H * D) + i_h * D + rows[:, None], mask=(rows < D)[:, None] & mt[None, :],
                   other=0.0)


@triton.jit
def _scalar_gate(g, t, mt, i_h, H: tl.constexpr):
    """(b [BT] the chunk-local cumulative log gate, bl its value at the last valid token)."""
    gc = tl.load(g + t * H + i_h, mask=mt, other=0.0).to(tl.float32)
    return tl.cumsum(gc, axis=0), tl.sum(gc, axis=0)


@triton.jit
def _vector_gate_T(g, t, mt, i_h, kk, H: tl.constexpr, K: tl.constexpr):
    """(bT [BK, BT] transposed chunk-local cumulative log gate, bl [BK] at the last valid token)."""
    gT = _cols(g, t, mt, i_h, kk, H, K).to(tl.float32)
    return tl.cumsum(gT, axis=1), tl.sum(gT, axis=1)


@triton.jit
def _pairwise(bT, kf, qf, dA, mt, BT: tl.constexpr, DK: tl.constexpr):
    """The vector gate's intra-chunk terms, row by row (i), with e_ij = e^{b_i − b_j} (j <= i) per channel.
    DK False: A [BT(i), BT(j)] = Σ_k q_ik k_jk e_ijk (zero above the diagonal) and a zero dkT.
    DK True: Aᵀ [BT(j), BT(i)] and dkT [BK, BT(j)] = Σ_{i>=j} dA_ij e_ij ⊙ q_i, dA [BT(i), BT(j)].
    bT, kf, qf [BK, BT] float32 (transposed tiles)."""
    ar = tl.arange(0, BT)
    AT = tl.zeros([BT, BT], dtype=tl.float32)
    dkT = tl.zeros(bT.shape, dtype=tl.float32)
    for i in tl.static_range(BT):
        sel = (ar == i)[None, :]
        bi = tl.sum(tl.where(sel, bT, 0.0), axis=1)
        qi = tl.sum(tl.where(sel, qf, 0.0), axis=1)
        keep = (ar <= i)[None, :] & mt[None, :]
        w = tl.where(keep, tl.exp(tl.where(keep, bi[:, None] - bT, 0.0)), 0.0) * qi[:, None]  # [BK, BT(j)]
        row = tl.sum(w * kf, axis=0)  # [BT(j)] = A_ij
        if DK:
            AT = tl.where(sel, row[:, None], AT)
            dArow = tl.sum(tl.where((ar == i)[:, None], dA, 0.0), axis=0)  # [BT(j)] = dA_ij
            dkT += dArow[None, :] * w
        else:
            AT = tl.where((ar == i)[:, None], row[None, :], AT)
    return AT, dkT


@triton.jit
def _pairwise_dq(bT, kf, dAT, mt, BT: tl.constexpr):
    """dqT [BK, BT(i)] = Σ_{j<=i} dA_ij e^{b_i − b_j} ⊙ k_j (vector gate), dAT [BT(j), BT(i)] = dA_ij."""
    ar = tl.arange(0, BT)
    dqT = tl.zeros(bT.shape, dtype=tl.float32)
    for i in tl.static_range(BT):
        sel = (ar == i)[None, :]
        bi = tl.sum(tl.where(sel, bT, 0.0), axis=1)
        dArow = tl.sum(tl.where(sel, dAT, 0.0), axis=1)  # [BT(j)]
        keep = (ar <= i)[None, :] & mt[None, :]
        e = tl.where(keep, tl.exp(tl.where(keep, bi[:, None] - bT, 0.0)), 0.0)
        dqT = tl.where(sel, tl.sum(dArow[None, :] * e * kf, axis=1)[:, None], dqT)
    return dqT
