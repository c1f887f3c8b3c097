"""Token-by-token Triton kernel of the (gated) delta rule (decoding: small T at inference).

    S_t = e^{g_t} (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

computed as S <- e^{g_t} S;  S <- S + β_t k_t (v_t - k_tᵀ S)ᵀ. One program per (V block, sequence,
head) keeps S [K, BV] in float32 registers (all of K: the recall k_tᵀ S sums over it) and walks the
sequence's tokens; packed layout and cu_seqlens as in wy.py, or (VARLEN off) n_seqs regular
sequences of T tokens, so that a decode step launches this kernel alone (no offsets tensor is built;
the gate is read in its own dtype, not cast first). Forward only: a call that needs gradients takes
the chunked path. Cost per token is O(K·V) whatever the context length.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnzoo.ops.linear.triton.fused_common import _bounds

# Launch config of the decode kernel: V block and warps (a dict so that benchmarks/gpu_profile_gaps.py can
# time others in one process). First guesses: the H100 run of 2026-12-07 found this kernel 2x slower than
# fla's fused_recurrent_gated_delta_rule at B = 64 (0.153 vs 0.078 ms), about 0.9 TB/s of state traffic.
TUNE = {"bv": 32, "num_warps": 4}


@triton.jit
def delta_recurrent_fwd_kernel(
    q, k, v, beta, g, o, h0, ht, cu_seqlens, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, VARLEN: tl.constexpr,
):
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    n, i_h = i_nh // H, i_nh % H
    bos, eos = _bounds(cu_seqlens, n, T, VARLEN)
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
        bt = tl.load(beta + t * H + i_h).to(tl.float32)
        if GATE == 1:
            S *= tl.exp(tl.load(g + t * H + i_h).to(tl.float32))
        pred = tl.sum(S * kt[:, None], axis=0)  # what the state recalls for k_t
        S += kt[:, None] * (bt * (vt - pred))[None, :]
        tl.store(o + t * (H * V) + i_h * V + vv, (tl.sum(S * qt[:, None], axis=0) * scale).to(o.dtype.element_ty),
                 mask=mv)
    if STORE_HT:
        tl.store(ht + s_off, S, mask=mkv)


def recurrent_delta_fwd(q, k, v, beta, g, *, scale, initial_state, output_final_state, cu_seqlens, n_seqs):
    """Packed q, k [N_tok, H, K], v [N_tok, H, V], beta [N_tok, H]; g [N_tok, H] (any float dtype) or None;
    cu_seqlens int32 [n_seqs + 1], or None for n_seqs sequences of N_tok / n_seqs tokens each."""
    N_tok, H, K = q.shape
    V = v.shape[-1]
    BK = triton.next_power_of_2(K)
    BV = min(TUNE["bv"], triton.next_power_of_2(V))
    o = torch.empty_like(v)
    ht = q.new_empty(n_seqs, H, K, V, dtype=torch.float32) if output_final_state else None
    delta_recurrent_fwd_kernel[(n_seqs * H, triton.cdiv(V, BV))](
        q, k, v, beta, g if g is not None else q, o, initial_state if initial_state is not None else q,
        ht if ht is not None else q, q if cu_seqlens is None else cu_seqlens, N_tok // n_seqs, scale,
        H=H, K=K, V=V, BK=BK, BV=BV, GATE=0 if g is None else 1, HAS_H0=initial_state is not None,
        STORE_HT=output_final_state, VARLEN=cu_seqlens is not None, num_warps=TUNE["num_warps"],
    )
    return o, ht
