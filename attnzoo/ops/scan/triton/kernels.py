"""Triton kernels of the selective scan (Mamba-1, Gu & Dao 2023, arXiv:2312.00752) on the [B, T, D] layout.

    a_t = exp(Δ_t ⊙ A),   h_t = a_t ⊙ h_{t-1} + (Δ_t ⊙ u_t) B_tᵀ,   y_t = h_t C_t + Dskip ⊙ u_t

One program holds BD channels' states h [BD, NP] (NP = N rounded up to a power of two; the padded
states keep A = 0, B = 0 and stay zero) in registers and walks the T steps: [B, T, D, N] never reaches
memory. The forward writes y, the final state, and (for the backward) the state entering each chunk of
L steps, ckpt [B, nC, D, N] float32 (1/L of the states).

Backward, chunk by chunk from the last, with the adjoint g_t = ∂loss/∂h_t carried backwards
(g_{T-1} starts from the final state's gradient):

    g_t  = g'_t + dy_t C_tᵀ               (g'_t = a_{t+1} ⊙ g_{t+1}, the later steps' share)
    dC_t = Σ_d dy_t h_t                    dB_t = Σ_d g_t ⊙ (Δ_t u_t)
    e_t  = Σ_n g_t ⊙ B_t                   (∂loss/∂(Δ_t u_t))
    du_t = Δ_t e_t + Dskip ⊙ dy_t          dΔ_t = u_t e_t + Σ_n g_t ⊙ h_{t-1} ⊙ a_t ⊙ A
    dA  += g_t ⊙ h_{t-1} ⊙ a_t ⊙ Δ_t       dDskip += dy_t ⊙ u_t        d h_init = a_0 ⊙ g_0

The chunk's states are recomputed from its checkpoint into a per-program scratch [L, BD, NP] (written,
then read back in reverse by the same program after a barrier: it stays in L2). dC, dB (sums over the
channels) and dA, dDskip (sums over time, per batch row) leave as float32 partial sums per program that
torch adds up (no atomics: deterministic). The batch rows may be G groups of R rows each with their own
A and Dskip ([G, D, N], [G, D]: a vmapped group of models, attnzoo.train.group): row b reads group b // R.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, b, t, d, n, T, Dm, N):
    """u_t, Δ_t [BD] and B_t, C_t [NP] of batch row b at step t, float32 (zeros outside)."""
    dm, nm = d < Dm, n < N
    off = (b * T + t) * Dm
    u = tl.load(u_ptr + off + d, mask=dm, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + off + d, mask=dm, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + (b * T + t) * N + n, mask=nm, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + (b * T + t) * N + n, mask=nm, other=0.0).to(tl.float32)
    return u, dt, Bt, Ct


@triton.jit
def _program_tile(A_ptr, D_ptr, pid_d, b, Dm, N, R, HAS_D: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr):
    """A program's channels d [BD] and states n [NP], their masks (dm [BD], m2 [BD, NP]), the state offsets
    sd [BD, NP], and its batch row's group's A [BD, NP] and Dskip [BD] (zeros without D), float32."""
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    dm = d < Dm
    m2 = dm[:, None] & (n < N)[None, :]
    grp = b // R
    A = tl.load(A_ptr + grp * Dm * N + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
    Dk = tl.zeros((BD,), dtype=tl.float32)
    if HAS_D:
        Dk = tl.load(D_ptr + grp * Dm + d, mask=dm, other=0.0).to(tl.float32)
    return d, n, dm, m2, d[:, None] * N + n[None, :], A, Dk


@triton.jit
def scan_fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, y_ptr, hT_ptr, ck_ptr, T, Dm, N, R,
                    L: tl.constexpr, HAS_D: tl.constexpr, HAS_H0: tl.constexpr, SAVE: tl.constexpr,
                    BD: tl.constexpr, NP: tl.constexpr, PREFETCH: tl.constexpr = False):
    """Grid (cdiv(D, BD), B): y [B, T, D] (u's dtype), hT [B, D, N] and, with SAVE, ckpt [B, nC, D, N].
    PREFETCH: step t+1's inputs are loaded before step t computes (their latency overlaps a step)."""
    pid_d, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    d, n, dm, m2, sd, A, Dk = _program_tile(A_ptr, D_ptr, pid_d, b, Dm, N, R, HAS_D, BD, NP)
    if HAS_H0:
        h = tl.load(h0_ptr + b * Dm * N + sd, mask=m2, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BD, NP), dtype=tl.float32)
    nC = tl.cdiv(T, L)
    if PREFETCH:
        un, dtn, Bn, Cn = _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, b, 0, d, n, T, Dm, N)
    for t in range(0, T):
        if SAVE:
            if t % L == 0:
                tl.store(ck_ptr + (b * nC + t // L) * Dm * N + sd, h, mask=m2)
        if PREFETCH:  # the last step reloads itself (t + 1 clamped): harmless, and no load past the sequence
            u, dt, Bt, Ct = un, dtn, Bn, Cn
            un, dtn, Bn, Cn = _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, b, tl.minimum(t + 1, T - 1), d, n, T, Dm, N)
        else:
            u, dt, Bt, Ct = _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, b, t, d, n, T, Dm, N)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y += Dk * u
        tl.store(y_ptr + (b * T + t) * Dm + d, y.to(y_ptr.dtype.element_ty), mask=dm)
    tl.store(hT_ptr + b * Dm * N + sd, h, mask=m2)


@triton.jit
def scan_bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, ck_ptr, dy_ptr, dhT_ptr, sc_ptr,
                    du_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dh0_ptr, T, Dm, N, R,
                    L: tl.constexpr, HAS_D: tl.constexpr, HAS_DHT: tl.constexpr, BD: tl.constexpr,
                    NP: tl.constexpr):
    """Grid (cdiv(D, BD), B) = P programs, p = b * cdiv(D, BD) + pid_d: du, dΔ [B, T, D]; partial sums dB,
    dC [P, T, NP] (over this program's channels), dA [B, D, N] and dDskip [B, D] (over time, per row);
    dh0 [B, D, N] float32. sc: scratch [P, L, BD, NP] float32."""
    pid_d, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    p = b * tl.num_programs(0) + pid_d
    d, n, dm, m2, sd, A, Dk = _program_tile(A_ptr, D_ptr, pid_d, b, Dm, N, R, HAS_D, BD, NP)
    loc = tl.arange(0, BD)[:, None] * NP + n[None, :]  # a scratch row's layout [BD, NP]
    scb = sc_ptr + p * L * BD * NP
    if HAS_DHT:
        g = tl.load(dhT_ptr + b * Dm * N + sd, mask=m2, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((BD, NP), dtype=tl.float32)
    dA = tl.zeros((BD, NP), dtype=tl.float32)
    dD = tl.zeros((BD,), dtype=tl.float32)
    nC = tl.cdiv(T, L)
    for cc in range(0, nC):
        c = nC - 1 - cc
        t0 = c * L
        h_in = tl.load(ck_ptr + (b * nC + c) * Dm * N + sd, mask=m2, other=0.0)
        h = h_in
        for i in range(0, L):  # the chunk's states, from its checkpoint
            t = t0 + i
            if t < T:
                u, dt, Bt, Ct = _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, b, t, d, n, T, Dm, N)
                h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
                tl.store(scb + i * BD * NP + loc, h)
        tl.debug_barrier()
        h = tl.load(scb + (tl.minimum(T - t0, L) - 1) * BD * NP + loc)  # h_t of the chunk's last step
        for j in range(0, L):
            i = L - 1 - j
            t = t0 + i
            if t < T:
                u, dt, Bt, Ct = _step_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, b, t, d, n, T, Dm, N)
                dy = tl.load(dy_ptr + (b * T + t) * Dm + d, mask=dm, other=0.0).to(tl.float32)
                if i > 0:
                    h_prev = tl.load(scb + (i - 1) * BD * NP + loc)
                else:
                    h_prev = h_in
                g += dy[:, None] * Ct[None, :]
                tl.store(dC_ptr + (p * T + t) * NP + n, tl.sum(dy[:, None] * h, axis=0))
                tl.store(dB_ptr + (p * T + t) * NP + n, tl.sum(g * (dt * u)[:, None], axis=0))
                e = tl.sum(g * Bt[None, :], axis=1)
                a = tl.exp(dt[:, None] * A)
                gha = g * h_prev * a
                du = dt * e
                if HAS_D:
                    du += Dk * dy
                    dD += dy * u
                off = (b * T + t) * Dm + d
                tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=dm)
                tl.store(ddt_ptr + off, (u * e + tl.sum(gha * A, axis=1)).to(ddt_ptr.dtype.element_ty), mask=dm)
                dA += gha * dt[:, None]
                g = g * a
                h = h_prev
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(dA_ptr + b * Dm * N + sd, dA, mask=m2)
    tl.store(dh0_ptr + b * Dm * N + sd, g, mask=m2)
    if HAS_D:
        tl.store(dD_ptr + b * Dm + d, dD, mask=dm)
