"""Gated slot attention as two chunked passes: the slot scores (a gated linear attention whose gate acts on
its output dimension, the m slots), a softmax over the slots, then gated linear attention proper
(ops/linear, its gate on the key dimension, here the slots again). Paper: Zhang et al. (2024), arXiv:2409.07146
(GSA is "a two-layer GLA linked via softmax"); the recurrence is in reference.py.

    z_t = scale · K̃_t q_t,  K̃_t = Diag(α_t) K̃_{t-1} + s_t k_tᵀ      pass 1: chunk_slot_scores (this file)
    p_t = softmax(z_t)
    o_t = Ṽ_tᵀ p_t,         Ṽ_t = Diag(α_t) Ṽ_{t-1} + s_t v_tᵀ      pass 2: gated_linear_attention(p, s, v, log α)

with s_t = 1 - α_t. Pass 1 in chunks of C tokens (b_i = Σ_{l<=i} log α_l from the chunk start, K̃_0 the
memory entering the chunk):

    z_i = scale · [ e^{b_i} ⊙ (K̃_0 q_i) + Σ_{j<=i} (q_i·k_j) s_j ⊙ e^{b_i − b_j} ]
    K̃_C = Diag(e^{b_C}) K̃_0 + Σ_j (s_j ⊙ e^{b_C − b_j}) k_jᵀ

The intra-chunk sum keeps a decay per slot for every pair, without a [C, C, m] tensor: C is a power of two,
and a pair (i, j), j < i, is taken at the one halving level where i lies in the second half and j in the
first half of a block of P tokens, through the block's midpoint h: e^{b_i − b_j} = e^{b_i − b_h} e^{b_h − b_j},

    z_i += e^{b_i − b_h} ⊙ Σ_{j in first half} (q_i·k_j) (s_j ⊙ e^{b_h − b_j})     one [P/2, P/2] x [P/2, m] product

(log2 C levels; i = j is the diagonal). Every exponent is <= 0, so nothing overflows however strongly a slot
forgets. The chunk states pass through a loop over the T / C chunks. Plain autograd (no hand-written
backward). Arithmetic in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.linear import gated_linear_attention


def _to_chunks(x, N: int, C: int, ct):
    """[B, T, H, D] -> [B, H, N, C, D] in dtype ct, the tail zero-padded (a step with log α = 0 and s = 0
    leaves the memory as it is)."""
    B, T, H, D = x.shape
    x = x.to(ct).transpose(1, 2)
    if N * C != T:
        x = F.pad(x, (0, 0, 0, N * C - T))
    return x.reshape(B, H, N, C, D)


def _chunk_length(T: int, chunk_size: int) -> int:
    """The largest power of two <= chunk_size, but no longer than T needs (the next power of two >= T)."""
    return min(1 << (chunk_size.bit_length() - 1), 1 << max(T - 1, 0).bit_length())


def _intra_scores(q, k, s, b):
    """Σ_{j<=i} (q_i·k_j) s_j ⊙ e^{b_i − b_j} per chunk by halving levels (module docstring).
    q, k [..., C, K]; s, b [..., C, M]; C a power of two. Returns [..., C, M]."""
    *lead, C, K = q.shape
    M = s.shape[-1]
    z = (q * k).sum(-1, keepdim=True) * s                                    # i = j: no decay
    P = 2
    while P <= C:
        h, n = P // 2, C // P
        qv, kv = q.reshape(*lead, n, 2, h, K), k.reshape(*lead, n, 2, h, K)
        sv, bv = s.reshape(*lead, n, 2, h, M), b.reshape(*lead, n, 2, h, M)
        mid = bv[..., 0, -1:, :]                                             # b at the block's midpoint
        w = sv[..., 0, :, :] * (mid - bv[..., 0, :, :]).exp()               # first half: s_j e^{b_h − b_j}
        e = (bv[..., 1, :, :] - mid).exp()                                   # second half: e^{b_i − b_h}
        add = e * ((qv[..., 1, :, :] @ kv[..., 0, :, :].transpose(-1, -2)) @ w)
        z = z + torch.stack([torch.zeros_like(add), add], -3).reshape(*lead, C, M)
        P *= 2
    return z


def chunk_slot_scores(q, k, g, *, scale=1.0, initial_state=None, chunk_size=64):
    """Pass 1: z [B, T, H, M] (z_t = scale · K̃_t q_t, in float32 / float64) and the last key memory K̃
    [B, H, M, K]. q, k [B, T, H, K]; g [B, T, H, M] = log α (<= 0); initial_state K̃_0 [B, H, M, K] or None."""
    B, T, H, K = q.shape
    M = g.shape[-1]
    ct = compute_dtype(q, k, g, initial_state)
    C = _chunk_length(T, chunk_size)
    N = -(-T // C)
    qc, kc, gc = (_to_chunks(t, N, C, ct) for t in (q, k, g))
    s = -torch.expm1(gc)                                                    # 1 - α, exact for small |log α|
    b = gc.cumsum(-2)                                                       # [B, H, N, C, M]
    z = _intra_scores(qc, kc, s, b)
    local = (s * (b[..., -1:, :] - b).exp()).transpose(-1, -2) @ kc        # [B, H, N, M, K]
    decay = b[..., -1, :].exp()[..., None]                                  # e^{b_C} [B, H, N, M, 1]
    S = torch.zeros(B, H, M, K, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    entering = []
    for n in range(N):
        entering.append(S)
        S = decay[:, :, n] * S + local[:, :, n]
    S_in = torch.stack(entering, 2)                                         # [B, H, N, M, K]
    z = z + b.exp() * (qc @ S_in.transpose(-1, -2))
    z = (scale * z).reshape(B, H, N * C, M)[:, :, :T].transpose(1, 2)
    return z, S


def chunk_gated_slot_attention(q, k, v, g, *, scale=1.0, initial_state=None, output_final_state=False,
                               chunk_size=64, gla_impl="torch"):
    """Both passes (module docstring); same arguments and returns as the public op (api.py), gla_impl the
    implementation of the second pass (ops/linear's impl)."""
    K0, V0 = (None, None) if initial_state is None else initial_state
    ct = compute_dtype(q, k, v, g, K0, V0)
    z, K_last = chunk_slot_scores(q, k, g, scale=scale, initial_state=K0, chunk_size=chunk_size)
    p = torch.softmax(z, -1)
    gf = g.to(ct)
    o, V_last = gated_linear_attention(p, -torch.expm1(gf), v.to(ct), gf, scale=1.0, initial_state=V0,
                                       output_final_state=output_final_state, impl=gla_impl)
    return o.to(q.dtype), ((K_last, V_last) if output_final_state else None)
