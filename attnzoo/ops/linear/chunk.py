"""Chunked gated linear attention in plain torch, with a hand-written backward: fast on CPU.

Papers: Yang, Wang, Shen, Panda, Kim (2023), "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635 (the chunkwise form and the secondary chunking of
a vector gate); Katharopoulos, Vyas, Pappas, Fleuret (2020), "Transformers are RNNs",
arXiv:2006.16236 (no gate); Sun et al. (2023), "Retentive Network", arXiv:2307.08621 (constant
per-head decay g_gamma).

    o, S = chunk_gated_linear_attention(q, k, v, g=None, *, g_gamma=None, scale=None,
                                        initial_state=None, output_final_state=False,
                                        cu_seqlens=None, chunk_size=64)

q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H] (scalar gate) or [B, T, H, K] (vector gate), in
log space (<= 0), or None; g_gamma [H] or None; initial_state [B, H, K, V]. Returns o [B, T, H, V]
in q's dtype and the final state [B, H, K, V] in float32 (float64 for float64 inputs) or None.
Packed sequences (cu_seqlens [N + 1], B == 1; states [N, H, K, V]) run one after the other.
Same semantics as the reference loop (reference.py):

    S_t = diag(exp(g_t + g_gamma)) S_{t-1} + k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

Algorithm (CHUNKED.md section 1). T is cut into chunks of C tokens (the last one zero-padded: a
step with g = 0, k = v = 0 leaves the state as it is). Inside a chunk, b_i = Σ_{j<=i} g_j is the
cumulative log gate from the chunk start, and with S_0 the state entering the chunk

    o_i = (q_i ⊙ e^{b_i})ᵀ S_0 + Σ_{j<=i} A_ij v_j,   A_ij = Σ_k q_ik k_jk e^{b_ik − b_jk}
    S_C = diag(e^{b_C}) S_0 + Σ_j (k_j ⊙ e^{b_C − b_j}) v_jᵀ

The intra-chunk sums and the chunk-local states are batched matrix products over all chunks
(scalar gate and no gate: chunk_intra.py, a pairwise C x C decay; vector gate: chunk_factored.py,
A = (q ⊙ e^b)(k ⊙ e^{-b})ᵀ on the rows whose decay from the chunk start is at most e^{-20} (the
others from chunk_vector.py's assembled C x C matrix of halving levels and a band), or
chunk_intra.py's nested levels for chunk lengths other than nb·2^m, nb <= 4); the states are
then passed by a short loop over chunks (T / C steps, two small elementwise ops each), and the
inter-chunk outputs are one more batched product. Long sequences run as cache-sized segments
of whole chunks, the state carried from one to the next (ops/common/chunk_layout.py), so the time grows
linearly in T. Every exponent is a sum of gates
taken directly and is <= 0 (or, on the factorised path, bounded by 20), so nothing overflows
however strongly the gate forgets, and float32 gate gradients stay accurate.

The backward is written by hand (one torch.autograd.Function, no autograd graph of the many small
ops): the state gradients run the same scan in reverse (dS_{n-1} = e^{b_C} ⊙ dS_n + q_inᵀ do),
and each gate gradient is the sum over the pairs (query, key) whose decay spans that step, summed
as cumsums of products (e.g. Σ_{i>=l} (q_in ⊙ dq_in)_i for the e^{b_i} factor of the inter term,
Σ_{j<l} (k_out ⊙ dk_out)_j for e^{b_C − b_j}, and rowsum(S_0 ⊙ dS_C) ⊙ e^{b_C} for every step of
the chunk). It is not twice differentiable. Arithmetic is in float32 for bf16/fp16/fp32 inputs
and float64 for float64 inputs.
"""

from __future__ import annotations

from functools import partial

import torch

from attnzoo.ops.common.checks import check_chunk_size, check_gla_inputs
from attnzoo.ops.common.chunk_layout import from_chunks, segmented_scan, segments, to_chunks
from attnzoo.ops.common.gate_sums import add_prefix_excl_, add_revcumsum_, suffix_excl
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.common.varlen import run_per_sequence
from attnzoo.ops.linear.chunk_factored import factored_backward, factored_forward
from attnzoo.ops.linear.chunk_intra import (
    scalar_intra_backward,
    scalar_intra_forward,
    vector_intra_backward,
    vector_intra_forward,
)
from attnzoo.ops.linear.chunk_vector import assembled_plan

SUB_CHUNK = 16  # chunks shorter than this are not padded


def _chunk_length(T: int, chunk_size: int) -> int:
    """Chunk length actually used: chunk_size, or less when the whole sequence is shorter."""
    if T >= chunk_size:
        return chunk_size
    if T <= SUB_CHUNK:
        return T
    return min(chunk_size, -(-T // SUB_CHUNK) * SUB_CHUNK)


def _combined_log_gate(g, g_gamma, shape, ct):
    """Log gate g + g_gamma in dtype ct: [B, T, H] (scalar), [B, T, H, K] (vector) or None."""
    B, T, H, _ = shape
    if g is None and g_gamma is None:
        return None
    if g is None:
        return g_gamma.to(ct).expand(B, T, H)
    gl = g.to(ct)
    if g_gamma is not None:
        gam = g_gamma.to(ct)
        gl = gl + (gam[:, None] if gl.dim() == 4 else gam)
    return gl


def _segment_forward(ctx, inputs, S0, o_out, scale, C, ct):
    """One segment: chunks [B, H, N, C, ...] in ct, q times scale; o written into o_out, returns
    the final state; what the backward needs goes into ctx (a _Segment)."""
    q_in_, k_in_, v_in_, gate = inputs
    T = q_in_.shape[1]
    N = -(-T // C)
    ctx.meta = (T, scale, q_in_.dtype, k_in_.dtype, v_in_.dtype)
    q = to_chunks(q_in_, N, C, ct, scale)
    k = to_chunks(k_in_, N, C, ct)
    v = to_chunks(v_in_, N, C, ct)
    g = None if gate is None else to_chunks(gate, N, C, ct)
    B, H, N, C, K = q.shape
    V = v.shape[-1]
    R = B * H * N
    qr, kr, vr = q.view(R, C, K), k.view(R, C, K), v.view(R, C, V)
    if g is None or g.dim() == 4:  # no gate, or a scalar gate per head (intra part after the scan)
        o, intra = None, ("scalar",)
        if g is None:
            q_in, k_out, decay, eb, ea = q, k, None, None, None
        else:
            eb, ea = g.cumsum(-1).exp()[..., None], suffix_excl(g, -1).exp()[..., None]  # [B, H, N, C, 1]
            q_in, k_out = q * eb, k * ea
            decay = eb[..., -1:, :]  # [B, H, N, 1, 1]
    elif assembled_plan(C) is not None:  # vector gate, chunk of nb·2^m: A = (q ⊙ e^b)(k ⊙ e^{-b})ᵀ on safe
        # rows, chunk_vector.py's assembled A on the others (chunk_factored.py)
        A, q_in, k_out, decay, saved = factored_forward(qr, kr, g.view(R, C, K), assembled_plan(C))
        q_in, k_out, decay = q_in.view(q.shape), k_out.view(k.shape), decay.view(B, H, N, K, 1)
        o, intra, eb, ea = None, ("factored", A, saved), None, None
    else:  # vector gate per key channel, other chunk lengths: nested levels (chunk_intra.py)
        o, intra = vector_intra_forward(qr, kr, vr, g.view(R, C, K))
        eb, ea = g.cumsum(-2).exp(), suffix_excl(g, -2).exp()  # e^{b_i}, e^{b_C − b_j}
        q_in, k_out = q * eb, k * ea
        decay = eb[..., -1, :, None]  # [B, H, N, K, 1]
    S_local = k_out.transpose(-1, -2) @ v  # [B, H, N, K, V]
    S_enter = torch.empty_like(S_local)
    S = q.new_zeros(B, H, K, V) if S0 is None else S0
    for n in range(N):
        S_enter[:, :, n] = S
        S = S_local[:, :, n] + (S if decay is None else decay[:, :, n] * S)
    if intra[0] == "scalar":  # o = A @ v + q_in @ S_enter, accumulated in place
        o, A, D = scalar_intra_forward(qr, kr, vr, None if g is None else g.view(R, C),
                                       o=(q_in @ S_enter).view(R, C, V))
        o, intra = o.view(B, H, N, C, V), (A, D)
    elif o is None:
        o = (q_in @ S_enter).view(R, C, V).baddbmm_(intra[1], vr).view(B, H, N, C, V)
    else:
        o = o.view(B, H, N, C, V).add_(q_in @ S_enter)
    ctx.save_for_backward(q, k, v, g, q_in, k_out, eb, ea, decay, S_enter, S)
    ctx.intra = intra
    from_chunks(o, T, q_in_.dtype, out=o_out)
    return S

def _segment_backward(ctx, do, dS, outs):
    """Writes the gradients of one segment's q, k, v, gate into `outs` (views of whole-sequence
    tensors; None where not needed); returns the gradient of the state entering the segment."""
    q, k, v, g, q_in, k_out, eb, ea, decay, S_enter, S_final = ctx.saved_tensors
    B, H, N, C, K = q.shape
    V = v.shape[-1]
    R = B * H * N
    T, scale, q_dtype, k_dtype, v_dtype = ctx.meta
    do = to_chunks(do, N, C, q.dtype)
    dS = dS.to(q.dtype).contiguous()
    qdo = q_in.transpose(-1, -2) @ do  # [B, H, N, K, V]: each chunk's outputs' pull on its entering state
    dS_next = torch.empty_like(S_enter)  # gradient of the state leaving chunk n
    for n in range(N - 1, -1, -1):
        dS_next[:, :, n] = dS
        dS = qdo[:, :, n] + (dS if decay is None else decay[:, :, n] * dS)
    dq_in = do @ S_enter.transpose(-1, -2)  # [B, H, N, C, K]
    dk_out = v @ dS_next.transpose(-1, -2)
    dv = k_out @ dS_next
    dor = do.view(R, C, V)
    qr, kr, vr = q.view(R, C, K), k.view(R, C, K), v.view(R, C, V)
    if ctx.intra[0] == "factored":
        _, A, saved = ctx.intra
        dv.view(R, C, V).baddbmm_(A.transpose(-1, -2), dor)
        d_decay = (S_enter * dS_next).sum(-1).mul_(decay[..., 0])
        dq, dk, dg = factored_backward(saved, qr, kr, q_in.view(R, C, K), k_out.view(R, C, K),
                                       torch.bmm(dor, vr.transpose(-1, -2)).tril_(), dq_in.view(R, C, K),
                                       dk_out.view(R, C, K), d_decay.view(R, K))
        for x, out, sc in zip((dq.view(q.shape), dk.view(k.shape), dv, dg.view(g.shape)), outs, (scale, 1, 1, 1)):
            from_chunks(x, T, out.dtype, None if sc == 1 else sc, out=out)
        return dS
    # gradients through e^{b} (queries), e^{b_C − b} (keys) and e^{b_C} (the state)
    if g is None:
        dq, dk, dg = dq_in, dk_out, None
    elif g.dim() == 4:  # scalar gate: sum the per-channel terms over K
        dg = ((S_enter * dS_next).sum((-1, -2)) * decay[..., 0, 0])[..., None].expand(B, H, N, C).contiguous()
        add_revcumsum_(dg, (dq_in * q_in).sum(-1), -1)
        add_prefix_excl_(dg, (dk_out * k_out).sum(-1), -1)
        dq, dk = dq_in.mul_(eb), dk_out.mul_(ea)
    else:
        dq, dk = dq_in * eb, dk_out * ea
        dg = ((S_enter * dS_next).sum(-1) * decay[..., 0])[..., None, :].expand(B, H, N, C, K).contiguous()
        add_revcumsum_(dg, dq_in.mul_(q_in), -2)
        add_prefix_excl_(dg, dk_out.mul_(k_out), -2)
    dq, dk = dq.contiguous(), dk.contiguous()
    dqr, dkr, dvr = dq.view(R, C, K), dk.view(R, C, K), dv.view(R, C, V)
    if g is None or g.dim() == 4:
        A, D = ctx.intra
        scalar_intra_backward(qr, kr, vr, A, D, dor, dqr, dkr, dvr, None if dg is None else dg.view(R, C))
    else:
        vector_intra_backward(qr, kr, vr, ctx.intra, dor, dqr, dkr, dvr, dg.view(R, C, K))
    for x, out, sc in zip((dq, dk, dv, dg), outs, (scale, None, None, None)):
        if out is not None:
            from_chunks(x, T, out.dtype, sc, out=out)
    return dS



def chunk_gated_linear_attention(
    q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    chunk_size=64,
):
    check_gla_inputs(q, k, v, g, g_gamma, initial_state, normalize=False, cu_seqlens=cu_seqlens)
    check_chunk_size(chunk_size)
    T = q.shape[1]
    ct = compute_dtype(q, k, v, g, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if compiling():  # torch.compile: one opaque custom op, the same computation (chunk_op.py, registered by
        # the package's __init__; ops/common/opaque.py says why)
        o, S = torch.ops.attnzoo.gla_chunk_torch(q, k, v, g, g_gamma, initial_state, cu_seqlens, float(scale),
                                                 bool(output_final_state), int(chunk_size))
        return o, (S if output_final_state else None)
    if cu_seqlens is not None:
        H, K, V = q.shape[2], q.shape[3], v.shape[-1]
        return run_per_sequence(
            chunk_gated_linear_attention, cu_seqlens, (q, k, v, g), initial_state=initial_state,
            output_final_state=output_final_state, g_gamma=g_gamma, scale=scale, chunk_size=chunk_size,
            empty=lambda: (v.new_zeros(1, 0, H, V, dtype=q.dtype), torch.zeros(1, H, K, V, dtype=ct, device=q.device)))
    C = _chunk_length(T, chunk_size)
    gate = _combined_log_gate(g, g_gamma, q.shape, ct)
    S = None if initial_state is None else initial_state.to(ct)
    B, _, H, K = q.shape
    sizes = [hi - lo for lo, hi in segments(T, C, B * H, max(K, v.shape[-1]), q.device)]  # cache-sized segments
    o, S = segmented_scan(partial(_segment_forward, scale=scale, C=C, ct=ct), _segment_backward, S, sizes,
                               v.shape[-1], q, k, v, gate)
    return o, (S if output_final_state else None)
