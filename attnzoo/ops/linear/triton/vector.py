"""Triton kernels for the intra-chunk part of gated linear attention with a per-key-channel gate
g [B, T, H, K] (GLA, Yang et al. 2023, arXiv:2312.06635; HGRN2, Qin et al. 2024, arXiv:2404.07904).

Layout as in state.py. A chunk of BT tokens is cut into sub-chunks of BC tokens. For the
sub-chunk I with first row r and last row r', every exponent stays <= 0 (CHUNKED.md §1):

    rows of I against earlier columns j < r:   A_ij = Σ_k (q_ik e^{b_ik - b_rk}) (k_jk e^{b_rk - b_jk})
    the diagonal block I x I:                  A_ij = Σ_k q_ik k_jk e^{b_ik - b_jk}   (pairwise, i >= j)

and in the backward the same split gives dq_I (reference r) and dk_I (reference r', rows i > r').
Nothing forms e^{-b}, so a chunk that forgets strongly (g ~ -10 per token) stays finite.

SUB_FACTOR (chunk.TUNE["vector_sub_factor"]): a diagonal block whose own decay, min over the K block's
channels of b_{r'} − b_r, is >= −SUB_SAFE_LOG (safe.py) is one product instead of the pairwise sum,
factorised about the block's midpoint c = (b_r + b_{r'}) / 2 (every exponent within ±SUB_SAFE_LOG / 2):

    A_II = (q_I ⊙ e^{b_I − c}) (k_I ⊙ e^{c − b_I})ᵀ, masked to i >= j
    dq_I += e^{b_I − c} ⊙ (dA_II (k_I ⊙ e^{c − b_I})),   dk_I += e^{c − b_I} ⊙ (dA_IIᵀ (q_I ⊙ e^{b_I − c}))

with float32 operands (tf32 dots on the GPU) and dA_IIᵀ from transposed loads. The pairwise form (a
[BC, BC, BK] broadcast) stays for blocks that forget harder (2026-12-07 H100 profile: the two sub-chunk
kernels took 5.1 of the strong-gate op's 6.45 ms). The decision is per (sub-chunk, K block), so the two
kernels may take different branches for one block; each branch is exact in exact arithmetic.

These kernels serve only the chunks whose total decay exceeds SAFE_LOG (min_k b at the last valid
row < −SAFE_LOG); on the others both return at once, and the factorised path of
vector_fast.py (A in output's kernels, dq/dk/db in chunk_vector_fast_dqdk_kernel)
takes over.

Grids: chunk_intra_kernel (n_chunks, H), chunk_vector_dqdk_kernel (n_chunks, K/BK, H). Each program
decides chunk_is_safe once, returns at once on a safe chunk, and otherwise loops over the chunk's
sub-chunks that hold valid rows, running the per-(sub-chunk[, K block]) body (_intra_subchunk,
_dqdk_subchunk) for each. With typical gates every chunk is safe and the launches cost only their
programs' decisions, so the grids carry no sub-chunk axis (4x fewer programs than one program per
sub-chunk). The sub-chunk bodies call chunk_rows again rather than take bos, eos, t0 from the
kernel, so that to the compiler the chunk-wide pointer tiles (rows t0 .. t0 + BT) stay inside the
sub-chunk loop: hoisted out of it they stay live across the whole body (ptxas for sm_90: the intra
kernel at bf16 K = 128 took 229 registers instead of 189). The dq/dk kernel keeps its K blocks in
the grid: its body (five [BC, ·] products over V per K block) is the heaviest of the op and only
runs on strongly forgetting chunks, where the parallelism of K/BK programs per (chunk, head)
matters at small batch·length, and a loop over K blocks inside the sub-chunk loop would serialise
16 bodies (K = 128) per program.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnzoo.ops.linear.triton.state import chunk_rows
from attnzoo.ops.linear.triton.safe import block_is_factorable, chunk_is_safe


@triton.jit
def chunk_intra_kernel(
    q, k, b, A, cu_seqlens, chunk_seq, chunk_idx,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    SUB_FACTOR: tl.constexpr = False,
):
    """A [N_tok, H, BT] float32: row i holds A_ij for the chunk's columns j (zero above the diagonal).
    Grid (n_chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    if chunk_is_safe(b, tl.minimum(t0 + BT, eos) - 1, i_h, H, K, BK):
        return  # the output and dv kernels form this chunk's A by the factorised product
    n_sub = tl.cdiv(tl.minimum(eos - t0, BT), BC).to(tl.int32)  # the sub-chunks that hold valid rows
    for s in tl.range(n_sub, num_stages=1):  # not software-pipelined: that adds shared-memory buffers
        _intra_subchunk(q, k, b, A, cu_seqlens, chunk_seq, chunk_idx, i_c, s, i_h, H, K, BT, BC, BK, SUB_FACTOR)


@triton.jit
def _pair_decay(bI, m3):
    """e^{b_ik − b_jk} [i, j, k] over one diagonal block, zero outside the mask m3 [i, j, 1] (i >= j, valid)."""
    return tl.where(m3, tl.exp(tl.where(m3, bI[:, None, :] - bI[None, :, :], 0.0)), 0.0)


@triton.jit
def _intra_diag_pairwise(qI, kI, bI, m3):
    """Σ_k q_ik k_jk e^{b_ik − b_jk} for i >= j of one diagonal block and K block ([BC, BC, BK] broadcast)."""
    return tl.sum(qI.to(tl.float32)[:, None, :] * kI.to(tl.float32)[None, :, :] * _pair_decay(bI, m3), axis=2)


@triton.jit
def _intra_diag_factored(k, b, qI, bI, br, bre, ti, mi, kk, mk, mik, i_h, H: tl.constexpr, K: tl.constexpr):
    """The same block as one product about its midpoint c = (b_r + b_r') / 2, float32 operands; the pairs
    i < j are NOT masked here (the caller drops them)."""
    cI = 0.5 * (br + bre)
    qf = tl.where(mik, qI.to(tl.float32) * tl.exp(tl.where(mik, bI - cI[None, :], 0.0)), 0.0)
    mikT = mk[:, None] & mi[None, :]
    kIT = tl.load(k + ti[None, :] * (H * K) + i_h * K + kk[:, None], mask=mikT, other=0.0)
    bIT = tl.load(b + ti[None, :] * (H * K) + i_h * K + kk[:, None], mask=mikT, other=0.0)
    kf = tl.where(mikT, kIT.to(tl.float32) * tl.exp(tl.where(mikT, cI[:, None] - bIT, 0.0)), 0.0)
    return tl.dot(qf, kf)


@triton.jit
def _intra_subchunk(
    q, k, b, A, cu_seqlens, chunk_seq, chunk_idx, i_c, s, i_h,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    SUB_FACTOR: tl.constexpr,
):
    """The rows of sub-chunk s of chunk i_c (head i_h): A_off against the chunk's earlier columns
    and the diagonal block A_d, stored into A."""
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    r = t0 + s * BC
    re = tl.minimum(r + BC, eos) - 1
    ti = r + tl.arange(0, BC)
    mi = ti < eos
    tj = t0 + tl.arange(0, BT)
    mj = (tj < r) & (r < eos)
    ac = tl.arange(0, BC)
    m3 = ((ac[:, None] >= ac[None, :]) & mi[:, None] & mi[None, :])[:, :, None]
    A_off = tl.zeros([BC, BT], dtype=tl.float32)
    A_d = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        kk = i_k * BK + tl.arange(0, BK)
        mk = kk < K
        mik = mi[:, None] & mk[None, :]
        qI = tl.load(q + ti[:, None] * (H * K) + i_h * K + kk[None, :], mask=mik, other=0.0)
        kI = tl.load(k + ti[:, None] * (H * K) + i_h * K + kk[None, :], mask=mik, other=0.0)
        bI = tl.load(b + ti[:, None] * (H * K) + i_h * K + kk[None, :], mask=mik, other=0.0)
        br = tl.load(b + r * (H * K) + i_h * K + kk, mask=mk & (r < eos), other=0.0)
        qh = tl.where(mik, qI * tl.exp(tl.where(mik, bI - br[None, :], 0.0)), 0.0)
        mjk = mk[:, None] & mj[None, :]
        kT = tl.load(k + tj[None, :] * (H * K) + i_h * K + kk[:, None], mask=mjk, other=0.0)
        bT = tl.load(b + tj[None, :] * (H * K) + i_h * K + kk[:, None], mask=mjk, other=0.0)
        kh = tl.where(mjk, kT * tl.exp(tl.where(mjk, br[:, None] - bT, 0.0)), 0.0)
        A_off += tl.dot(qh.to(qI.dtype), kh.to(qI.dtype))
        # SUB_FACTOR is a constexpr: without it only the pairwise form is compiled (a runtime `if` on a
        # Python False still compiles both branches: Triton 3.6 on sm_90 then rejected the unset names)
        if SUB_FACTOR:
            bre = tl.load(b + re * (H * K) + i_h * K + kk, mask=mk & (r < eos), other=0.0)
            if block_is_factorable(br, bre, mk):  # about the block's midpoint
                A_d += _intra_diag_factored(k, b, qI, bI, br, bre, ti, mi, kk, mk, mik, i_h, H, K)
            else:
                A_d += _intra_diag_pairwise(qI, kI, bI, m3)
        else:
            A_d += _intra_diag_pairwise(qI, kI, bI, m3)
    cols = tl.arange(0, BT)
    in_diag = (cols >= s * BC) & (cols < s * BC + BC)
    base = A + ti[:, None] * (H * BT) + i_h * BT
    tl.store(base + cols[None, :], A_off, mask=mi[:, None] & ~in_diag[None, :])
    # the factorised blocks' masked pairs (i < j) hold e^{b_i − b_j} > 1 products: dropped here
    A_d = tl.where((ac[:, None] >= ac[None, :]) & mi[:, None] & mi[None, :], A_d, 0.0)
    tl.store(base + s * BC + ac[None, :], A_d, mask=mi[:, None])


@triton.jit
def _dqdk_diag_pairwise(w, qf, kf, bI, causal, dq_acc, dk_acc):
    """dq_i += Σ_j w_ij k_j e^{b_i − b_j}, dk_j += Σ_i w_ij q_i e^{b_i − b_j} over one diagonal block
    (w = scale · dA, zero for i < j), pairwise ([BC, BC, BK] broadcast)."""
    w3 = w[:, :, None] * _pair_decay(bI, causal[:, :, None])  # [i, j, k]
    return dq_acc + tl.sum(w3 * kf[None, :, :], axis=1), dk_acc + tl.sum(w3 * qf[:, None, :], axis=0)


@triton.jit
def chunk_vector_dqdk_kernel(
    q, k, v, do, b, h, dh, dq, dk, db, cu_seqlens, chunk_seq, chunk_idx, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, SUB_FACTOR: tl.constexpr = False,
):
    """dq, dk [N_tok, H, K] and db = q ⊙ dq − k ⊙ dk (float32) for the chunk's rows and K block.
    Grid (n_chunks, K/BK, H)."""
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    if chunk_is_safe(b, tl.minimum(t0 + BT, eos) - 1, i_h, H, K, BK):
        return  # chunk_vector_fast_dqdk_kernel handles this chunk
    n_sub = tl.cdiv(tl.minimum(eos - t0, BT), BC).to(tl.int32)  # the sub-chunks that hold valid rows
    for s in tl.range(n_sub, num_stages=1):  # not software-pipelined: that adds shared-memory buffers
        _dqdk_subchunk(q, k, v, do, b, h, dh, dq, dk, db, cu_seqlens, chunk_seq, chunk_idx, scale,
                       i_c, s, i_k, i_h, H, K, V, BT, BC, BK, BV, SUB_FACTOR)


@triton.jit(noinline=True)
def _dqdk_subchunk(
    q, k, v, do, b, h, dh, dq, dk, db, cu_seqlens, chunk_seq, chunk_idx, scale, i_c, s, i_k, i_h,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, SUB_FACTOR: tl.constexpr,
):
    """dq, dk, db of sub-chunk s's rows and K block i_k in chunk i_c, head i_h. Not inlined: this body
    alone sits at the 255-register limit and spills (~1 KB at K = V = 128, as when it was the whole
    kernel); inlined into the sub-chunk loop, whatever the compiler hoists out of the loop (h's and
    dh's pointer tiles, the K-block masks) stays live across it and spills more (ptxas for sm_90,
    bf16, chunk bounds reloaded: up to +0.56 KB, at K = V = 100). As a call, the spills stay within 36 B of
    the old one-program-per-sub-chunk kernel's, fewer for fp32 (ptxas -v output of a one-off script,
    benchmarks/compile_gla_sm90.py, in the git history; removed with the unreferenced scripts, issue #17)."""
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    last = tl.minimum(t0 + BT, eos) - 1
    r = t0 + s * BC
    re = tl.minimum(r + BC, eos) - 1
    ti = r + tl.arange(0, BC)
    mi = ti < eos
    tc = t0 + tl.arange(0, BT)
    mc = tc < eos
    kk = i_k * BK + tl.arange(0, BK)
    mk = kk < K
    mik = mi[:, None] & mk[None, :]
    s_base = i_c.to(tl.int64) * H * K * V + i_h * K * V
    dq_acc = tl.zeros([BC, BK], dtype=tl.float32)
    dk_acc = tl.zeros([BC, BK], dtype=tl.float32)
    dA_row = tl.zeros([BC, BT], dtype=tl.float32)   # [i in I, j in chunk] = do_i · v_j
    dA_colT = tl.zeros([BC, BT], dtype=tl.float32)  # [j in I, i in chunk] = v_j · do_i
    dA_d = tl.zeros([BC, BC], dtype=tl.float32)     # [i in I, j in I] = do_i · v_j
    dA_dT = tl.zeros([BC, BC], dtype=tl.float32)    # [j in I, i in I] = v_j · do_i (SUB_FACTOR only)
    for i_v in range(tl.cdiv(V, BV)):
        vv = i_v * BV + tl.arange(0, BV)
        mv = vv < V
        miv = mi[:, None] & mv[None, :]
        doI = tl.load(do + ti[:, None] * (H * V) + i_h * V + vv[None, :], mask=miv, other=0.0)
        vI = tl.load(v + ti[:, None] * (H * V) + i_h * V + vv[None, :], mask=miv, other=0.0)
        vIT = tl.load(v + ti[None, :] * (H * V) + i_h * V + vv[:, None], mask=mv[:, None] & mi[None, :], other=0.0)
        vT = tl.load(v + tc[None, :] * (H * V) + i_h * V + vv[:, None], mask=mv[:, None] & mc[None, :], other=0.0)
        doT = tl.load(do + tc[None, :] * (H * V) + i_h * V + vv[:, None], mask=mv[:, None] & mc[None, :], other=0.0)
        hT = tl.load(h + s_base + kk[None, :] * V + vv[:, None], mask=mk[None, :] & mv[:, None], other=0.0)
        dhT = tl.load(dh + s_base + kk[None, :] * V + vv[:, None], mask=mk[None, :] & mv[:, None], other=0.0)
        dq_acc += tl.dot(doI, hT.to(doI.dtype))
        dk_acc += tl.dot(vI, dhT.to(vI.dtype))
        dA_row += tl.dot(doI, vT)
        dA_colT += tl.dot(vI, doT)
        dA_d += tl.dot(doI, vIT)
        if SUB_FACTOR:
            doIT = tl.load(do + ti[None, :] * (H * V) + i_h * V + vv[:, None], mask=mv[:, None] & mi[None, :],
                           other=0.0)
            dA_dT += tl.dot(vI, doIT)
    off_I = ti[:, None] * (H * K) + i_h * K + kk[None, :]
    qI = tl.load(q + off_I, mask=mik, other=0.0)
    kI = tl.load(k + off_I, mask=mik, other=0.0)
    bI = tl.load(b + off_I, mask=mik, other=0.0)
    bl = tl.load(b + last * (H * K) + i_h * K + kk, mask=mk, other=0.0)
    dq_acc *= scale * tl.exp(bI)
    dk_acc *= tl.exp(tl.where(mik, bl[None, :] - bI, 0.0))
    off_c = tc[:, None] * (H * K) + i_h * K + kk[None, :]
    mck = mc[:, None] & mk[None, :]
    bc = tl.load(b + off_c, mask=mck, other=0.0)
    # dq_I from the earlier columns j < r, reference row r
    br = tl.load(b + r * (H * K) + i_h * K + kk, mask=mk & (r < eos), other=0.0)
    kc = tl.load(k + off_c, mask=mck, other=0.0)
    mj = mck & ((tc < r) & (r < eos))[:, None]
    kh = tl.where(mj, kc * tl.exp(tl.where(mj, br[None, :] - bc, 0.0)), 0.0)
    dq_acc += tl.exp(tl.where(mik, bI - br[None, :], 0.0)) * tl.dot((dA_row * scale).to(kc.dtype), kh.to(kc.dtype))
    # dk_I from the later rows i > r', reference row r'
    bre = tl.load(b + re * (H * K) + i_h * K + kk, mask=mk & (r < eos), other=0.0)
    qc = tl.load(q + off_c, mask=mck, other=0.0)
    ml = mck & (tc > re)[:, None]
    qh = tl.where(ml, qc * tl.exp(tl.where(ml, bc - bre[None, :], 0.0)), 0.0)
    dk_acc += tl.exp(tl.where(mik, bre[None, :] - bI, 0.0)) * tl.dot((dA_colT * scale).to(qc.dtype), qh.to(qc.dtype))
    # the diagonal block: factorised about its midpoint where its decay allows (SUB_FACTOR), else pairwise
    ac = tl.arange(0, BC)
    qf = qI.to(tl.float32)
    kf = kI.to(tl.float32)
    causal = (ac[:, None] >= ac[None, :]) & mi[:, None] & mi[None, :]       # [i, j]
    w = tl.where(causal, dA_d * scale, 0.0)
    if SUB_FACTOR:  # a constexpr: without it only the pairwise form is compiled
        if block_is_factorable(br, bre, mk):
            cI = 0.5 * (br + bre)
            wT = tl.where((ac[:, None] <= ac[None, :]) & mi[:, None] & mi[None, :], dA_dT * scale, 0.0)  # [j, i]
            eq = tl.exp(tl.where(mik, bI - cI[None, :], 0.0))
            ek = tl.exp(tl.where(mik, cI[None, :] - bI, 0.0))
            dq_acc += eq * tl.dot(w, tl.where(mik, kf * ek, 0.0))
            dk_acc += ek * tl.dot(wT, tl.where(mik, qf * eq, 0.0))
        else:
            dq_acc, dk_acc = _dqdk_diag_pairwise(w, qf, kf, bI, causal, dq_acc, dk_acc)
    else:
        dq_acc, dk_acc = _dqdk_diag_pairwise(w, qf, kf, bI, causal, dq_acc, dk_acc)
    tl.store(dq + off_I, dq_acc.to(dq.dtype.element_ty), mask=mik)
    tl.store(dk + off_I, dk_acc.to(dk.dtype.element_ty), mask=mik)
    tl.store(db + off_I, qf * dq_acc - kf * dk_acc, mask=mik)
