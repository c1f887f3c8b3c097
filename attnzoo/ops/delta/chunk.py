"""Chunked (gated) delta rule on torch: the WY / UT-transform form, fast on CPU.

Papers: Yang, Wang, Zhang, Shen, Kim, "Parallelizing Linear Transformers with the Delta Rule
over Sequence Length", 2024, arXiv:2406.06484 (DeltaNet, WY form); Yang, Kautz, Hatamizadeh,
"Gated Delta Networks: Improving Mamba2 with Delta Rule", 2024, arXiv:2412.06464 (the gate).

Shapes: q, k [B, T, H, K] (keys L2-normalised), v [B, T, H, V], beta [B, T, H] in (0, 1),
g [B, T, H] log-space scalar gate (<= 0) or None; initial_state [B, H, K, V] ([N, H, K, V] for
N sequences packed by cu_seqlens, run one after the other). Same arguments as api.delta_rule
(less impl, plus chunk_size).
Returns (o [B, T, H, V] in q's dtype, final_state [B, H, K, V] or None); state and all
arithmetic in float32 (float64 when any input is float64).

    S_t = exp(g_t) (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

Per chunk of C tokens, with b_i the cumulative log gate from the chunk start and
D_ij = exp(b_i - b_j) for i >= j (CHUNKED.md section 2):

    A  = StrictLower(diag(β) (K Kᵀ) ⊙ D),   T = (I + A)^{-1} diag(β)
    W  = T (K ⊙ e^b),   U = T V,   V' = U - W S_0
    O  = (Q ⊙ e^b) S_0 + ((Q Kᵀ) ⊙ D ⊙ Lower) V'
    S_c = e^{b_c} S_0 + (K ⊙ e^{b_c - b})ᵀ V'

Every exponent is <= 0 as written and is a sum of gates taken directly (the pair exponent
b_i - b_j is the segment sum Σ_{j<l<=i} g_l, its upper triangle -inf before exp), so strong
forgetting underflows to 0 instead of overflowing and float32 gate gradients stay accurate.
Everything except the state passing is batched over all chunks; the state passes through a loop
over T / C chunks with one matrix product each, S_{n+1} = M_n S_n + B_n, where
M_n = e^{b_c} I - (K ⊙ e^{b_c - b})ᵀ W_n and B_n = (K ⊙ e^{b_c - b})ᵀ U_n are batched beforehand.
Long sequences run as cache-sized segments of whole chunks, the state carried over
(ops/common/chunk_layout.py), so the time grows linearly in T.

The backward is written by hand (one torch.autograd.Function): with G_n the gradient of the state
leaving chunk n, a reverse loop over chunks gives

    G_{n-1} = M_nᵀ G_n + (Q ⊙ e^b)ᵀ dO_n - W_nᵀ (QK ⊙ D)ᵀ dO_n,
    dV'_n = (QK ⊙ D)ᵀ dO_n + (K ⊙ e^{b_c - b}) G_n   (batched after the loop)

and the rest is batched: with X = diag(β) [K ⊙ e^b, V] and [W U] = (I + A)^{-1} X,
dX_V = (I + A)^{-T} dV', dX_K = -dX_V S_nᵀ and dA = -StrictLower(dX_V V'ᵀ), then the products
above by hand. Gate gradients are sums over the pairs whose decay spans a step (cumsums of
products, no cancellation). Not twice differentiable.
"""

from __future__ import annotations

from functools import partial

import torch

from attnzoo.ops.common.checks import check_chunk_size, check_delta_inputs
from attnzoo.ops.common.chunk_layout import from_chunks, segmented_scan, segments, to_chunks
from attnzoo.ops.common.gate_sums import pairwise_decay, pairwise_decay_grad, prefix_excl, revcumsum, suffix_excl
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.common.varlen import run_per_sequence


def _chunk_major(x):
    """[B, H, N, ...] -> [N, B * H, ...] contiguous: the loop over chunks then reads whole blocks."""
    B, H, N = x.shape[:3]
    return x.permute(2, 0, 1, *range(3, x.dim())).reshape(N, B * H, *x.shape[3:])


def _segment_forward(ctx, inputs, S0, o_out, scale, C, ct):
    """One segment: q, k [B, T, H, K]; v [B, T, H, V]; beta, g [B, T, H] (g may be None); S0
    [B, H, K, V] in the compute dtype ct, or None. Writes o (q's dtype) into o_out, returns the
    final state in ct; inside, chunks [B, H, N, C, ...] in ct, q times scale."""
    q_, k_, v_, beta_, g_ = inputs
    T = q_.shape[1]
    N = -(-T // C)  # the padded tail has beta = g = k = v = 0: it leaves the state untouched
    ctx.meta = (T, scale, [None if x is None else x.dtype for x in (q_, k_, v_, beta_, g_)])
    q = to_chunks(q_, N, C, ct, scale)
    k, v, beta = to_chunks(k_, N, C, ct), to_chunks(v_, N, C, ct), to_chunks(beta_, N, C, ct)
    g = None if g_ is None else to_chunks(g_, N, C, ct)
    B, H, N, C, K = q.shape
    V = v.shape[-1]
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    X = q.new_empty(B, H, N, C, K + V)  # X = [β e^b ⊙ K, β V], written in place
    torch.mul(v, beta[..., None], out=X[..., K:])
    if g is None:
        D = lower.to(q.dtype)
        eb = ea = gamma = None
        torch.mul(k, beta[..., None], out=X[..., :K])
        q_dec, k_dec = q, k
    else:
        D = pairwise_decay(g, dim=-1)  # exp(b_i - b_j) for i >= j, 0 above
        eb = g.cumsum(-1).exp()
        ea = suffix_excl(g, -1).exp()  # exp(b_c - b_j)
        gamma = eb[..., -1:, None]  # [B, H, N, 1, 1]
        torch.mul(k, (beta * eb)[..., None], out=X[..., :K])
        q_dec, k_dec = q * eb[..., None], k * ea[..., None]
    KK = k @ k.transpose(-1, -2)
    A = (KK * D).mul_(beta[..., :, None]).tril_(-1)
    L = A  # I + A, unit lower triangular (the solve reads only the strict lower part)
    # WU = L^{-1} X, solved as WUᵀ = Xᵀ L^{-T} (right-hand side): the memory is then already in
    # the column-major layout the triangular solver wants, so nothing is copied (about 3x faster)
    WU = torch.linalg.solve_triangular(L.transpose(-1, -2), X.transpose(-1, -2), upper=True, left=False,
                                       unitriangular=True).transpose(-1, -2)
    W, U = WU[..., :K], WU[..., K:]
    QK = (q @ k.transpose(-1, -2)).mul_(D)
    # state passing with one matrix product per chunk: S_{n+1} = M_n S_n + B_n, where
    # M_n = e^{b_c} I - (K ⊙ e^{b_c - b})ᵀ W_n and B_n = (K ⊙ e^{b_c - b})ᵀ U_n (batched before the loop)
    MB = _chunk_major(k_dec.transpose(-1, -2) @ WU)  # [N, B*H, K, K + V]: Kdᵀ W and Kdᵀ U
    Mm, Bn = MB[..., :K].neg_(), MB[..., K:]
    Mm.diagonal(dim1=-2, dim2=-1).add_(1.0 if gamma is None else _chunk_major(gamma[..., 0]))
    S_all = q.new_empty(N + 1, B * H, K, V)
    S_all[0] = 0.0 if S0 is None else S0.reshape(B * H, K, V)
    for n in range(N):
        torch.baddbmm(Bn[n], Mm[n], S_all[n], out=S_all[n + 1])
    S = S_all[N].view(B, H, K, V)
    S_enter = S_all[:N].view(N, B, H, K, V).permute(1, 2, 0, 3, 4).contiguous()
    R = B * H * N
    Vp = torch.baddbmm(U.reshape(R, C, V), W.reshape(R, C, K), S_enter.view(R, K, V), alpha=-1.0)
    Vp = Vp.view(B, H, N, C, V)
    o = (q_dec @ S_enter).add_(QK @ Vp)
    ctx.save_for_backward(q, k, v, beta, g, D, eb, ea, KK, L, WU, QK, S_enter, Vp, S, Mm, q_dec, k_dec)
    from_chunks(o, T, q_.dtype, out=o_out)
    return S



def _segment_backward(ctx, dO, dS, outs):
    """Writes one segment's input gradients into `outs`; returns the gradient of its entering state."""
    q, k, v, beta, g, D, eb, ea, KK, L, WU, QK, S_enter, Vp, S_final, Mm, q_dec, k_dec = ctx.saved_tensors
    B, H, N, C, K = q.shape
    W = WU[..., :K]
    T, scale, _ = ctx.meta
    dO = to_chunks(dO, N, C, q.dtype)
    G = dS.to(q.dtype).contiguous()
    V = dO.shape[-1]
    P1 = QK.transpose(-1, -2) @ dO  # [B, H, N, C, V]
    # reverse scan, one product per chunk: G_{n-1} = M_nᵀ G_n + (Q ⊙ e^b)ᵀ dO_n - W_nᵀ (QK ⊙ D)ᵀ dO_n
    Rn = B * H * N
    Qn = torch.matmul(q_dec.transpose(-1, -2), dO).view(Rn, K, V).baddbmm_(
        W.reshape(Rn, C, K).transpose(-1, -2), P1.view(Rn, C, V), alpha=-1.0)
    Qn = _chunk_major(Qn.view(B, H, N, K, V))
    G_all = q.new_empty(N + 1, B * H, K, V)
    G_all[N] = G.reshape(B * H, K, V)
    for n in range(N - 1, -1, -1):
        torch.baddbmm(Qn[n], Mm[n].transpose(-1, -2), G_all[n + 1], out=G_all[n])
    dS0 = G_all[0].view(B, H, K, V)
    G_next = G_all[1:].view(N, B, H, K, V).permute(1, 2, 0, 3, 4).contiguous()  # leaving chunk n
    dVp = torch.matmul(k_dec, G_next).add_(P1)
    # outputs: O = q_dec S_enter + QK Vp
    dq_dec = dO @ S_enter.transpose(-1, -2)
    dQK_raw = dO @ Vp.transpose(-1, -2)
    dQK = dQK_raw * D  # D is 0 above the diagonal
    dq = dQK @ k
    dk = dQK.transpose(-1, -2) @ q
    # state: S_next = gamma S + k_dec^T Vp
    dk_dec = Vp @ G_next.transpose(-1, -2)
    # UT transform: WU = L^{-1} X with X = [beta eb k, beta v] and Vp = U - W S, so
    # dX_v = L^{-T} dVp, dX_k = L^{-T}(-dVp Sᵀ) = -dX_v Sᵀ and dA = -StrictLower(dX WUᵀ) = -StrictLower(dX_v Vpᵀ)
    R = B * H * N
    dXv = torch.linalg.solve_triangular(L, dVp.transpose(-1, -2), upper=False, left=False,
                                        unitriangular=True).transpose(-1, -2)  # L^{-T} dVp
    dXk_neg = dXv @ S_enter.transpose(-1, -2)  # -dX_K
    Mp = (dXv @ Vp.transpose(-1, -2)).mul_(D)  # -dA ⊙ D (strict lower: the diagonal is zeroed below)
    Mp.diagonal(dim1=-2, dim2=-1).zero_()
    dv = dXv * beta[..., None]
    ebk_dX = (dXk_neg * k).sum(-1).neg_()  # Σ_k k dX_k (times beta eb: X_k = beta eb k)
    Z = Mp * beta[..., :, None]  # -dL/d(K Kᵀ)
    dk.view(R, C, K).baddbmm_(Z.view(R, C, C), k.reshape(R, C, K), alpha=-1.0)
    dk.view(R, C, K).baddbmm_(Z.view(R, C, C).transpose(-1, -2), k.reshape(R, C, K), alpha=-1.0)
    MKK = Mp.mul_(KK)
    dbeta = (v * dXv).sum(-1) - MKK.sum(-1)
    if g is None:
        dq += dq_dec
        dk += dk_dec
        dk.addcmul_(dXk_neg, beta[..., None], value=-1.0)
        dbeta += ebk_dX
        dg = None
    else:
        dq.addcmul_(dq_dec, eb[..., None])
        dk.addcmul_(dk_dec, ea[..., None])
        dk.addcmul_(dXk_neg, (beta * eb)[..., None], value=-1.0)
        dbeta += ebk_dX * eb
        r = (dq_dec * q_dec).sum(-1) + ebk_dX * eb * beta  # d(e^b) e^b: every step up to i
        s = (dk_dec * k_dec).sum(-1)  # d(e^{b_c - b_j}) e^{b_c - b_j}: steps after j
        dgam = (S_enter * G_next).sum((-1, -2))[..., None] * eb[..., -1:]  # e^{b_c}: every step
        # dL/d(exponent) of (QKᵀ ⊙ D)_ij and of A_ij = β_i (KKᵀ)_ij D_ij
        pair = dQK_raw.mul_(QK).addcmul_(MKK, beta[..., :, None], value=-1.0)
        dg = revcumsum(r, -1) + prefix_excl(s, -1) + dgam + pairwise_decay_grad(pair, dim=-1)
    for i, (x, out) in enumerate(zip((dq, dk, dv, dbeta, dg), outs)):
        if out is not None:
            from_chunks(x, T, out.dtype, scale if i == 0 else None, out=out)
    return dS0




def chunk_delta_rule(
    q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    chunk_size=64,
):
    check_delta_inputs(q, k, v, beta, g, initial_state, cu_seqlens=cu_seqlens)
    check_chunk_size(chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, beta, g, initial_state)
    dev = q.device
    scale = K ** -0.5 if scale is None else scale
    if compiling():  # torch.compile: one opaque custom op, the same computation (chunk_op.py, registered by
        # the package's __init__; ops/common/opaque.py says why)
        o, S = torch.ops.attnzoo.delta_chunk_torch(q, k, v, beta, g, initial_state, cu_seqlens, float(scale),
                                                   bool(output_final_state), int(chunk_size))
        return o, (S if output_final_state else None)
    if cu_seqlens is not None:  # packed sequences, one after the other
        return run_per_sequence(
            chunk_delta_rule, cu_seqlens, (q, k, v, beta, g), initial_state=initial_state,
            output_final_state=output_final_state, scale=scale, chunk_size=chunk_size,
            empty=lambda: (v.new_zeros(1, 0, H, V, dtype=q.dtype), torch.zeros(1, H, K, V, dtype=ct, device=dev)))
    if T == 0:  # an empty sequence: nothing to output, the state passes through
        S = torch.zeros(B, H, K, V, dtype=ct, device=dev) if initial_state is None else initial_state.to(ct)
        return v.new_zeros(B, 0, H, V, dtype=q.dtype), (S if output_final_state else None)
    C = min(chunk_size, T)
    S = None if initial_state is None else initial_state.to(ct)
    sizes = [hi - lo for lo, hi in segments(T, C, B * H, max(K, V))]  # cache-sized segments
    o, S = segmented_scan(partial(_segment_forward, scale=scale, C=C, ct=ct), _segment_backward, S, sizes, V,
                               q, k, v, beta, g)
    return o, (S if output_final_state else None)
