"""Triton kernels of the short causal depthwise conv on the [B, T, C] layout (no transposes).

    pre_t = b + Σ_{j<W} w[:, j] ⊙ x_{t-W+1+j},     y_t = act(pre_t),     x_s = state[W-1+s] for s < 0

the short conv of H3 (Fu et al. 2022, arXiv:2212.14052) and Mamba (Gu & Dao 2023, arXiv:2312.00752),
W <= 8, float32 accumulation. Backward, with dpre_t = dy_t ⊙ act'(pre_t) (pre recomputed in-kernel;
silu'(p) = σ(p) (1 + p (1 - σ(p)))):

    dx_s = Σ_{k<W} w[:, W-1-k] ⊙ dpre_{s+k}   (0 <= s+k < T; rows s < 0 are d state)
    dw[:, j] = Σ_{b,t} dpre_t ⊙ x_{t-W+1+j},   db = Σ_{b,t} dpre_t

The backward programs cover the rows s of [state ; x] (s from -(W-1) to T-1), BT rows at a time, ROWS
rows per program; each writes its partial dw [WP, BC] and db [BC] to a buffer that torch sums (no
atomics: deterministic).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _inputs(xb, sb, s, s0, c, T, C, W: tl.constexpr, HAS_STATE: tl.constexpr):
    """x rows s [BT] (int32 offsets: T * C < 2^31) at channels c [BC], float32; rows s < 0 from the state
    (read only by a tile whose first row s0 < 0), zeros where there is none."""
    cm = (c < C)[None, :]
    v = tl.load(xb + s[:, None] * C + c[None, :], mask=((s >= 0) & (s < T))[:, None] & cm, other=0.0)
    v = v.to(tl.float32)
    if HAS_STATE:
        if s0 < 0:
            st = tl.load(sb + (s + W - 1)[:, None] * C + c[None, :], mask=((s < 0) & (s >= 1 - W))[:, None] & cm,
                         other=0.0)
            v += st.to(tl.float32)
    return v


@triton.jit
def _preact(xb, sb, w_ptr, b_ptr, r, r0, c, T, C, W: tl.constexpr, HAS_BIAS: tl.constexpr,
            HAS_STATE: tl.constexpr):
    """pre at output rows r [BT] (first row r0): b + Σ_j w[:, j] x_{r-W+1+j}, float32 [BT, BC]."""
    cm = c < C
    acc = tl.zeros((r.shape[0], c.shape[0]), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(W):
        wj = tl.load(w_ptr + c * W + j, mask=cm, other=0.0).to(tl.float32)
        acc += wj[None, :] * _inputs(xb, sb, r - (W - 1 - j), r0 - (W - 1 - j), c, T, C, W, HAS_STATE)
    return acc


@triton.jit
def short_conv_fwd_kernel(x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, T, C, W: tl.constexpr, HAS_BIAS: tl.constexpr,
                          HAS_STATE: tl.constexpr, SILU: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """Grid (cdiv(T, BT), cdiv(C, BC), B): y [B, T, C] (x's dtype) of one tile."""
    pid_t, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    r0 = pid_t * BT
    r = r0 + tl.arange(0, BT)
    c = pid_c * BC + tl.arange(0, BC)
    xb = x_ptr + b * T * C  # the batch offset in int64, offsets inside a sequence in int32
    sb = s_ptr + b * (W - 1) * C
    acc = _preact(xb, sb, w_ptr, b_ptr, r, r0, c, T, C, W, HAS_BIAS, HAS_STATE)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    m = (r < T)[:, None] & (c < C)[None, :]
    tl.store(y_ptr + b * T * C + r[:, None] * C + c[None, :], acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dpre(xb, sb, dyb, w_ptr, b_ptr, r, r0, c, T, C, W: tl.constexpr, HAS_BIAS: tl.constexpr,
          HAS_STATE: tl.constexpr, SILU: tl.constexpr):
    """dpre at output rows r [BT] (zeros outside 0 <= r < T), float32 [BT, BC]."""
    m = ((r >= 0) & (r < T))[:, None] & (c < C)[None, :]
    g = tl.load(dyb + r[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
    if SILU:
        p = _preact(xb, sb, w_ptr, b_ptr, r, r0, c, T, C, W, HAS_BIAS, HAS_STATE)
        sg = tl.sigmoid(p)
        g = g * sg * (1.0 + p * (1.0 - sg))
    return g


@triton.jit
def short_conv_bwd_kernel(x_ptr, w_ptr, b_ptr, s_ptr, dy_ptr, dx_ptr, ds_ptr, dw_ptr, db_ptr, T, C,
                          W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
                          BT: tl.constexpr, BC: tl.constexpr, ROWS: tl.constexpr, WP: tl.constexpr):
    """Grid (cdiv(T + W - 1, ROWS), cdiv(C, BC), B): dx (and d state) of ROWS rows of [state ; x], and this
    program's partial dw [P, C, W] / db [P, C] at P = b * num_programs(0) + pid_t (float32)."""
    pid_t, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    c = pid_c * BC + tl.arange(0, BC)
    cm = c < C
    xb, dyb, dxb = x_ptr + b * T * C, dy_ptr + b * T * C, dx_ptr + b * T * C
    sb, dsb = s_ptr + b * (W - 1) * C, ds_ptr + b * (W - 1) * C
    taps = tl.arange(0, WP)
    dw = tl.zeros((WP, BC), dtype=tl.float32)
    db = tl.zeros((BC,), dtype=tl.float32)
    # BT rows at a time; strips past the sequence's end are skipped (ROWS = 512 over a T = 64 sequence ran 27
    # of its 32 strips fully masked: a zoo gated_deltanet group step at T = 64 spent a quarter of its time there)
    for i in range(0, ROWS, BT):
        s0 = pid_t * ROWS + i - (W - 1)
        if s0 < T:  # some row of this strip exists
            s = s0 + tl.arange(0, BT)  # input rows, from -(W-1) to T-1 over all programs
            # output rows r = s + W - 1 (each output row once over all programs): tap 0 of dx, db and dw
            g = _dpre(xb, sb, dyb, w_ptr, b_ptr, s + W - 1, s0 + W - 1, c, T, C, W, HAS_BIAS, HAS_STATE, SILU)
            dxa = tl.load(w_ptr + c * W, mask=cm, other=0.0).to(tl.float32)[None, :] * g
            db += tl.sum(g, axis=0)
            for j in tl.static_range(W):
                xs = _inputs(xb, sb, s + j, s0 + j, c, T, C, W, HAS_STATE)  # x_{r-W+1+j}
                dw += tl.where(taps[:, None] == j, tl.sum(g * xs, axis=0)[None, :], 0.0)
            for k in range(W - 1):  # the other taps: output rows s + k (a loop, not unrolled: fewer registers)
                g = _dpre(xb, sb, dyb, w_ptr, b_ptr, s + k, s0 + k, c, T, C, W, HAS_BIAS, HAS_STATE, SILU)
                dxa += tl.load(w_ptr + c * W + (W - 1 - k), mask=cm, other=0.0).to(tl.float32)[None, :] * g
            mx = ((s >= 0) & (s < T))[:, None] & cm[None, :]
            tl.store(dxb + s[:, None] * C + c[None, :], dxa.to(dx_ptr.dtype.element_ty), mask=mx)
            if HAS_STATE:
                if s0 < 0:  # the first rows of the first program
                    ms = ((s < 0) & (s >= 1 - W))[:, None] & cm[None, :]
                    tl.store(dsb + (s + W - 1)[:, None] * C + c[None, :], dxa.to(ds_ptr.dtype.element_ty), mask=ms)
    p = b * tl.num_programs(0) + pid_t
    tl.store(dw_ptr + (p * C + c[None, :]) * W + taps[:, None], dw, mask=cm[None, :] & (taps[:, None] < W))
    if HAS_BIAS:
        tl.store(db_ptr + p * C + c, db, mask=cm)
