"""The forward WY / UT transform of the chunked (gated) delta rule, one Triton program per (chunk, head).

Papers: Yang et al. 2024, arXiv:2406.06484 (DeltaNet, WY form); Yang, Kautz & Hatamizadeh 2024,
arXiv:2412.06464 (the gate). Packed layout as in ops/linear/triton/cumsum.py: k [N_tok, H, K],
v [N_tok, H, V], beta [N_tok, H], b [N_tok, H] the chunk-local cumulative log gate (GATE=1) or
absent (GATE=0); chunks of BT tokens from each sequence's start. CHUNKED.md section 2, with
D_ij = exp(b_i - b_j) for i >= j:

    A    = StrictLower(diag(β) (K Kᵀ) ⊙ D)
    Ainv = (I + A)^{-1}                        (by blocks of 16, below)
    W    = Ainv (β e^b ⊙ K),   U = Ainv (β ⊙ V)

Ainv [N_tok, H, BT] float32 (row t holds its chunk row), W [N_tok, H, K] and U [N_tok, H, V] in the
input dtype. Every exponent is <= 0 as written (b_i - b_j with i > j, b_i).

The inverse goes by blocks of BC = 16 rows (BT = 4 BC): each diagonal block L_ii = I + A_ii is
inverted as (I - N)^{-1} = (I + N)(I + N²)(I + N⁴)(I + N⁸) with N = -A_ii strictly lower (N^16 = 0),
six 16 x 16 products; the blocks below the diagonal follow from X = L^{-1} as
X_ij = -X_ii Σ_{j<=m<i} A_im X_mj. The inverse's products run in IEEE float32 (small; tf32 would
round it to 10 bits); W and U take Ainv in the input dtype as the other products do.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnzoo.ops.linear.triton.state import chunk_rows


DOT = tl.constexpr("ieee")  # precision of the inverse's float32 products
BC = tl.constexpr(16)  # rows of the inverse's blocks (a chunk is 4 of them)


@triton.jit
def inverse16(N, BC: tl.constexpr):
    """(I - N)^{-1} for N [BC, BC] strictly lower (float32, BC = 16: N^16 = 0)."""
    r = tl.arange(0, BC)
    eye = (r[:, None] == r[None, :]).to(tl.float32)
    X = eye + N
    P = tl.dot(N, N, input_precision=DOT)  # N^2
    X = tl.dot(X, eye + P, input_precision=DOT)
    P = tl.dot(P, P, input_precision=DOT)  # N^4
    X = tl.dot(X, eye + P, input_precision=DOT)
    P = tl.dot(P, P, input_precision=DOT)  # N^8
    return tl.dot(X, eye + P, input_precision=DOT)


@triton.jit
def _rows(k, beta, b, t0, eos, i_h, off, H: tl.constexpr, K: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
          GATE: tl.constexpr):
    """Rows t0 + off .. + BC of one chunk: k [BC, BK], beta [BC] (float32), b [BC] (0 without a gate),
    the row mask, and the rows' scale β e^b of W."""
    t = t0 + off + tl.arange(0, BC)
    mt = t < eos
    kk = tl.arange(0, BK)
    kt = tl.load(k + t[:, None] * (H * K) + i_h * K + kk[None, :], mask=mt[:, None] & (kk < K)[None, :], other=0.0)
    bt = tl.load(beta + t * H + i_h, mask=mt, other=0.0).to(tl.float32)
    if GATE == 1:
        bg = tl.load(b + t * H + i_h, mask=mt, other=0.0)
        row = bt * tl.exp(bg)
    else:
        bg = tl.zeros([BC], dtype=tl.float32)
        row = bt
    return kt, bt, bg, mt, (kt * row[:, None]).to(kt.dtype)


@triton.jit
def _block(ki, kj, bi, gi, gj, mi, mj, BC: tl.constexpr, GATE: tl.constexpr, DIAG: tl.constexpr):
    """Block (i, j) of A = β_i (k_i · k_j) e^{b_i - b_j}: strictly lower when DIAG, all of it below."""
    r = tl.arange(0, BC)
    valid = mi[:, None] & mj[None, :]
    if DIAG:
        valid = valid & (r[:, None] > r[None, :])
    a = tl.dot(ki, tl.trans(kj))
    if GATE == 1:
        a *= tl.exp(tl.where(valid, gi[:, None] - gj[None, :], 0.0))
    return tl.where(valid, a * bi[:, None], 0.0)


@triton.jit
def _store_row(Ainv, t0, eos, i_h, off, x0, x1, x2, x3, H: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    r = tl.arange(0, BC)
    t = t0 + off + r
    ptr = Ainv + t[:, None] * (H * BT) + i_h * BT + r[None, :]
    m = (t < eos)[:, None]
    tl.store(ptr, x0, mask=m)
    tl.store(ptr + BC, x1, mask=m)
    tl.store(ptr + 2 * BC, x2, mask=m)
    tl.store(ptr + 3 * BC, x3, mask=m)


@triton.jit
def _store_tile(x, ptr, t0, eos, off, ROW: tl.constexpr, N: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr, i_n):
    """x [BC, BN] into rows t0 + off .. + BC, columns block i_n of width BN (N valid), row stride ROW."""
    t = t0 + off + tl.arange(0, BC)
    cols = i_n * BN + tl.arange(0, BN)
    tl.store(ptr + t[:, None] * ROW + cols[None, :], x.to(ptr.dtype.element_ty),
             mask=(t < eos)[:, None] & (cols < N)[None, :])


@triton.jit
def delta_wy_fwd_kernel(
    k, v, beta, b, w, u, Ainv, cu_seqlens, chunk_seq, chunk_idx,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr,
):
    tl.static_assert(BT == 4 * BC)
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    k0, b0, g0, m0, kb0 = _rows(k, beta, b, t0, eos, i_h, 0, H, K, BC, BK, GATE)
    k1, b1, g1, m1, kb1 = _rows(k, beta, b, t0, eos, i_h, BC, H, K, BC, BK, GATE)
    k2, b2, g2, m2, kb2 = _rows(k, beta, b, t0, eos, i_h, 2 * BC, H, K, BC, BK, GATE)
    k3, b3, g3, m3, kb3 = _rows(k, beta, b, t0, eos, i_h, 3 * BC, H, K, BC, BK, GATE)
    X00 = inverse16(-_block(k0, k0, b0, g0, g0, m0, m0, BC, GATE, True), BC)
    X11 = inverse16(-_block(k1, k1, b1, g1, g1, m1, m1, BC, GATE, True), BC)
    X22 = inverse16(-_block(k2, k2, b2, g2, g2, m2, m2, BC, GATE, True), BC)
    X33 = inverse16(-_block(k3, k3, b3, g3, g3, m3, m3, BC, GATE, True), BC)
    A10 = _block(k1, k0, b1, g1, g0, m1, m0, BC, GATE, False)
    A20 = _block(k2, k0, b2, g2, g0, m2, m0, BC, GATE, False)
    A21 = _block(k2, k1, b2, g2, g1, m2, m1, BC, GATE, False)
    A30 = _block(k3, k0, b3, g3, g0, m3, m0, BC, GATE, False)
    A31 = _block(k3, k1, b3, g3, g1, m3, m1, BC, GATE, False)
    A32 = _block(k3, k2, b3, g3, g2, m3, m2, BC, GATE, False)
    X10 = -tl.dot(X11, tl.dot(A10, X00, input_precision=DOT), input_precision=DOT)
    X21 = -tl.dot(X22, tl.dot(A21, X11, input_precision=DOT), input_precision=DOT)
    X20 = -tl.dot(X22, tl.dot(A20, X00, input_precision=DOT) + tl.dot(A21, X10, input_precision=DOT),
                  input_precision=DOT)
    X32 = -tl.dot(X33, tl.dot(A32, X22, input_precision=DOT), input_precision=DOT)
    X31 = -tl.dot(X33, tl.dot(A31, X11, input_precision=DOT) + tl.dot(A32, X21, input_precision=DOT),
                  input_precision=DOT)
    X30 = -tl.dot(X33, tl.dot(A30, X00, input_precision=DOT) + tl.dot(A31, X10, input_precision=DOT)
                  + tl.dot(A32, X20, input_precision=DOT), input_precision=DOT)
    Z = tl.zeros([BC, BC], dtype=tl.float32)
    _store_row(Ainv, t0, eos, i_h, 0, X00, Z, Z, Z, H, BT, BC)
    _store_row(Ainv, t0, eos, i_h, BC, X10, X11, Z, Z, H, BT, BC)
    _store_row(Ainv, t0, eos, i_h, 2 * BC, X20, X21, X22, Z, H, BT, BC)
    _store_row(Ainv, t0, eos, i_h, 3 * BC, X30, X31, X32, X33, H, BT, BC)
    dt = k0.dtype
    X00, X10, X11, X20, X21, X22 = X00.to(dt), X10.to(dt), X11.to(dt), X20.to(dt), X21.to(dt), X22.to(dt)
    X30, X31, X32, X33 = X30.to(dt), X31.to(dt), X32.to(dt), X33.to(dt)
    wp = w + i_h * K
    _store_tile(tl.dot(X00, kb0), wp, t0, eos, 0, H * K, K, BC, BK, 0)
    _store_tile(tl.dot(X10, kb0) + tl.dot(X11, kb1), wp, t0, eos, BC, H * K, K, BC, BK, 0)
    _store_tile(tl.dot(X20, kb0) + tl.dot(X21, kb1) + tl.dot(X22, kb2), wp, t0, eos, 2 * BC, H * K, K, BC, BK, 0)
    _store_tile(tl.dot(X30, kb0) + tl.dot(X31, kb1) + tl.dot(X32, kb2) + tl.dot(X33, kb3), wp, t0, eos, 3 * BC,
                H * K, K, BC, BK, 0)
    up = u + i_h * V
    for i_v in range(tl.cdiv(V, BV)):
        v0 = _beta_v(v, b0, t0, eos, i_h, 0, i_v, H, V, BC, BV)
        v1 = _beta_v(v, b1, t0, eos, i_h, BC, i_v, H, V, BC, BV)
        v2 = _beta_v(v, b2, t0, eos, i_h, 2 * BC, i_v, H, V, BC, BV)
        v3 = _beta_v(v, b3, t0, eos, i_h, 3 * BC, i_v, H, V, BC, BV)
        _store_tile(tl.dot(X00, v0), up, t0, eos, 0, H * V, V, BC, BV, i_v)
        _store_tile(tl.dot(X10, v0) + tl.dot(X11, v1), up, t0, eos, BC, H * V, V, BC, BV, i_v)
        _store_tile(tl.dot(X20, v0) + tl.dot(X21, v1) + tl.dot(X22, v2), up, t0, eos, 2 * BC, H * V, V, BC, BV, i_v)
        _store_tile(tl.dot(X30, v0) + tl.dot(X31, v1) + tl.dot(X32, v2) + tl.dot(X33, v3), up, t0, eos, 3 * BC,
                    H * V, V, BC, BV, i_v)


@triton.jit
def _beta_v(v, bt, t0, eos, i_h, off, i_v, H: tl.constexpr, V: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr):
    """β ⊙ v of rows t0 + off .. + BC, V block i_v, in v's dtype."""
    t = t0 + off + tl.arange(0, BC)
    vv = i_v * BV + tl.arange(0, BV)
    vt = tl.load(v + t[:, None] * (H * V) + i_h * V + vv[None, :], mask=(t < eos)[:, None] & (vv < V)[None, :],
                 other=0.0)
    return (vt * bt[:, None]).to(vt.dtype)
