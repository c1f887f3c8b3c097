"""The forward WY / UT transform of the chunked (gated) delta rule, one Triton program per (chunk, head).

Papers: Yang et al. 2024, arXiv:2406.06484 (DeltaNet, WY form); Yang, Kautz & Hatamizadeh 2024,
arXiv:2412.06464 (the gate). Packed layout as in ops/linear/triton/cumsum.py: k [N_tok, H, K],
v [N_tok, H, V], beta [N_tok, H], b [N_tok, H] the chunk-local cumulative log gate (GATE=1) or
absent (GATE=0); chunks of BT tokens from each sequence's start. CHUNKED.md section 2, with
D_ij = exp(b_i - b_j) for i >= j:

    A    = StrictLower(diag(β) (K Kᵀ) ⊙ D)
    Ainv = (I + A)^{-1}                        (forward substitution, one row per step)
    W    = Ainv (β e^b ⊙ K),   U = Ainv (β ⊙ V)

Ainv [N_tok, H, BT] float32 (row t holds its chunk row), W [N_tok, H, K] and U [N_tok, H, V] in the
input dtype. Every exponent is <= 0 as written (b_i - b_j with i > j, b_i).
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnzoo.ops.linear.triton.state import chunk_rows


@triton.jit
def unit_lower_inverse(N, BT: tl.constexpr):
    """(I - N)^{-1} for N [BT, BT] strictly lower (float32): row i of X = (I - N)^{-1} is
    e_i + Σ_{j<i} N_ij X_j, built top-down in place (rows below i still hold N)."""
    r = tl.arange(0, BT)
    for i in range(1, BT):
        sel = r == i
        a = tl.sum(tl.where(sel[:, None], N, 0.0), 0)  # row i of N (zero at and after column i)
        a = a + tl.sum(a[:, None] * N, 0) * (r < i)  # + Σ_j N_ij (X_j - e_j): rows j < i are done
        N = tl.where(sel[:, None], a[None, :], N)
    return N + (r[:, None] == r[None, :]).to(tl.float32)


@triton.jit
def delta_wy_fwd_kernel(
    k, v, beta, b, w, u, Ainv, cu_seqlens, chunk_seq, chunk_idx,
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
    bt = tl.load(beta + t * H + i_h, mask=mt, other=0.0).to(tl.float32)
    KK = tl.dot(kt, tl.trans(kt))
    strict = (r[:, None] > r[None, :]) & mt[:, None] & mt[None, :]
    row = bt
    if GATE == 1:
        bg = tl.load(b + t * H + i_h, mask=mt, other=0.0)
        KK *= tl.exp(tl.where(strict, bg[:, None] - bg[None, :], 0.0))
        row = bt * tl.exp(bg)
    X = unit_lower_inverse(tl.where(strict, -KK * bt[:, None], 0.0), BT)
    tl.store(Ainv + t[:, None] * (H * BT) + i_h * BT + r[None, :], X, mask=mt[:, None])
    Xd = X.to(kt.dtype)
    wt = tl.dot(Xd, (kt * row[:, None]).to(kt.dtype))
    tl.store(w + t[:, None] * (H * K) + i_h * K + kk[None, :], wt.to(w.dtype.element_ty),
             mask=mt[:, None] & mk[None, :])
    for i_v in range(tl.cdiv(V, BV)):
        vv = i_v * BV + tl.arange(0, BV)
        m = mt[:, None] & (vv < V)[None, :]
        vt = tl.load(v + t[:, None] * (H * V) + i_h * V + vv[None, :], mask=m, other=0.0)
        ut = tl.dot(Xd, (vt * bt[:, None]).to(vt.dtype))
        tl.store(u + t[:, None] * (H * V) + i_h * V + vv[None, :], ut.to(u.dtype.element_ty), mask=m)
