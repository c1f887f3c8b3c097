"""The truth for gated linear attention: a loop over time in float32 (float64 for float64 inputs).

    S_t = diag(exp(g_t + g_gamma)) S_{t-1} + k_t v_tᵀ,     o_t = scale · q_tᵀ S_t
"""

from __future__ import annotations

import torch


def compute_dtype(*ts) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def gated_linear_attention_reference(
    q, k, v, g=None, *, g_gamma=None, scale, initial_state=None, output_final_state=False,
):
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, g, initial_state)
    qf, kf, vf = q.to(ct), k.to(ct), v.to(ct)
    logd = torch.zeros(B, T, H, K, dtype=ct, device=q.device)
    if g is not None:
        logd = logd + (g.to(ct)[..., None] if g.dim() == 3 else g.to(ct))
    if g_gamma is not None:
        logd = logd + g_gamma.to(ct)[:, None]
    S = torch.zeros(B, H, K, V, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    outs = []
    # unbind: per-step views whose backward is one stack (indexing x[:, t] would cost O(T) per step)
    for qt, kt, vt, dt in zip(qf.unbind(1), kf.unbind(1), vf.unbind(1), torch.exp(logd).unbind(1)):
        S = dt[..., None] * S + kt[..., :, None] * vt[..., None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", qt, S))
    o = torch.stack(outs, 1).to(q.dtype)
    return o, (S if output_final_state else None)
