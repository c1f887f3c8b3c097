"""Token-by-token Triton kernel for gated linear attention (decoding: small T at inference).

    S_t = diag(e^{g_t}) S_{t-1} + k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

One program per (sequence, head, V block) keeps S [K, BV] in float32 registers and walks the
sequence's tokens; packed layout and cu_seqlens as in cumsum.py. g is the per-step log
gate (g_gamma already added), [N_tok, H] (GATE=1) or [N_tok, H, K] (GATE=2). Forward only: a
call that needs gradients takes the chunked path. Cost per token is O(K·V) whatever the context
length, since the context lives in S.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def recurrent_fwd_kernel(
    q, k, v, g, o, h0, ht, cu_seqlens, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + n).to(tl.int64)
    eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    kk = tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mk, mv = kk < K, vv < V
    mkv = mk[:, None] & mv[None, :]
    s_off = n * H * K * V + i_h * K * V + kk[:, None] * V + vv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + s_off, mask=mkv, other=0.0)
    for t in range(bos, eos):
        qt = tl.load(q + t * (H * K) + i_h * K + kk, mask=mk, other=0.0).to(tl.float32)
        kt = tl.load(k + t * (H * K) + i_h * K + kk, mask=mk, other=0.0).to(tl.float32)
        vt = tl.load(v + t * (H * V) + i_h * V + vv, mask=mv, other=0.0).to(tl.float32)
        if GATE == 1:
            S *= tl.exp(tl.load(g + t * H + i_h))
        elif GATE == 2:
            S *= tl.exp(tl.load(g + t * (H * K) + i_h * K + kk, mask=mk, other=0.0))[:, None]
        S += kt[:, None] * vt[None, :]
        ot = tl.sum(S * qt[:, None], axis=0) * scale
        tl.store(o + t * (H * V) + i_h * V + vv, ot.to(o.dtype.element_ty), mask=mv)
    if STORE_HT:
        tl.store(ht + s_off, S, mask=mkv)


def recurrent_gla_fwd(q, k, v, g, *, scale, initial_state, output_final_state, cu_seqlens, n_seqs):
    """Packed q, k [N_tok, H, K], v [N_tok, H, V]; g [N_tok, H(, K)] float32 or None."""
    N_tok, H, K = q.shape
    V = v.shape[-1]
    BK = triton.next_power_of_2(K)
    BV = min(32, triton.next_power_of_2(V))
    o = torch.empty_like(v)
    ht = q.new_empty(n_seqs, H, K, V, dtype=torch.float32) if output_final_state else None
    gate = 0 if g is None else (1 if g.dim() == 2 else 2)
    grid = (n_seqs * H, triton.cdiv(V, BV))
    recurrent_fwd_kernel[grid](
        q, k, v, g if g is not None else q, o, initial_state if initial_state is not None else q,
        ht if ht is not None else q, cu_seqlens, scale,
        H=H, K=K, V=V, BK=BK, BV=BV, GATE=gate, HAS_H0=initial_state is not None, STORE_HT=output_final_state,
    )
    return o, ht
