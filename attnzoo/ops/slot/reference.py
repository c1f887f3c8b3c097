"""The truth for gated slot attention: the paper's recurrence one token at a time, in float32 (float64 for
float64 inputs).

Zhang et al. (2024), "Gated Slot Attention for Efficient Linear-Time Sequence Modeling", arXiv:2409.07146:
m memory slots per head, each with a key and a value row, forgotten at its own data-dependent rate α_t,

    K̃_t = Diag(α_t) K̃_{t-1} + (1 - α_t) k_tᵀ          K̃ [m, K]
    Ṽ_t = Diag(α_t) Ṽ_{t-1} + (1 - α_t) v_tᵀ          Ṽ [m, V]
    o_t = Ṽ_tᵀ softmax(scale · K̃_t q_t)

with α_t = exp(g_t). Same arguments and returns as the public op (api.py) less impl.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype


def gated_slot_attention_reference(q, k, v, g, *, scale=1.0, initial_state=None, output_final_state=False):
    B, T, H, K = q.shape
    V, M = v.shape[-1], g.shape[-1]
    ct = compute_dtype(q, k, v, g, *(initial_state if initial_state is not None else ()))
    if initial_state is None:
        Ks = torch.zeros(B, H, M, K, dtype=ct, device=q.device)
        Vs = torch.zeros(B, H, M, V, dtype=ct, device=q.device)
    else:
        Ks, Vs = (s.to(ct) for s in initial_state)
    outs = []
    for qt, kt, vt, gt in zip(*(t.to(ct).unbind(1) for t in (q, k, v, g))):
        alpha, write = gt.exp()[..., None], -torch.expm1(gt)[..., None]      # α_t, 1 - α_t   [B, H, M, 1]
        Ks = alpha * Ks + write * kt[:, :, None, :]
        Vs = alpha * Vs + write * vt[:, :, None, :]
        p = torch.softmax(scale * torch.einsum("bhmk,bhk->bhm", Ks, qt), -1)
        outs.append(torch.einsum("bhmv,bhm->bhv", Vs, p))
    o = torch.stack(outs, 1).to(q.dtype) if outs else v.new_zeros(B, 0, H, V, dtype=q.dtype)
    return o, ((Ks, Vs) if output_final_state else None)
