"""The truth for the mesa layer: a loop over time with an exact solve per token (float64 for float64
inputs, else float32).

    G_t = γ_t G_{t-1} + β_t k_t v_tᵀ,   H_t = γ_t H_{t-1} + β_t k_t k_tᵀ,   γ_t = exp(g_t)
    o_t = G_tᵀ (H_t + diag(λ))^{-1} q_t

G [K, V] is the paper's G_t = Σ v kᵀ stored transposed (the op contract's [K, V] state orientation).
Same arguments as the public op (api.py) less impl, cg_steps and chunk_size.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype


def mesa_attention_reference(q, k, v, beta, g=None, lam=None, *, initial_state=None, output_final_state=False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, beta, g, lam, initial_state)
    qf, kf, vf, bf = q.to(ct), k.to(ct), v.to(ct), beta.to(ct)
    gam = torch.ones(B, T, H, dtype=ct, device=q.device) if g is None else torch.exp(g.to(ct))
    if initial_state is None:
        G = torch.zeros(B, H, K, V, dtype=ct, device=q.device)
        Hm = torch.zeros(B, H, K, K, dtype=ct, device=q.device)
    else:
        G, Hm = initial_state.to(ct).split([V, K], -1)
        Hm = 0.5 * (Hm + Hm.transpose(-1, -2))  # only H's symmetric part has a meaning
    reg = torch.diag_embed(lam.to(ct))  # [H, K, K]
    outs = []
    for qt, kt, vt, bt, gt in zip(qf.unbind(1), kf.unbind(1), vf.unbind(1), bf.unbind(1), gam.unbind(1)):
        bk = (bt[..., None] * kt)[..., :, None]  # [B, H, K, 1]
        G = gt[..., None, None] * G + bk * vt[..., None, :]
        Hm = gt[..., None, None] * Hm + bk * kt[..., None, :]
        x = torch.linalg.solve(Hm + reg, qt[..., None])[..., 0]  # (H_t + Λ)^{-1} q_t, exactly
        outs.append(torch.einsum("bhk,bhkv->bhv", x, G))
    o = torch.stack(outs, 1).to(q.dtype)
    return o, (torch.cat([G, Hm], -1) if output_final_state else None)
