"""The truth for gated linear attention: a loop over time in float32 (float64 for float64 inputs).

    S_t = diag(exp(g_t + g_gamma)) S_{t-1} + k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

Same arguments as the public op (api.py) less impl; packed sequences (cu_seqlens) run one by one.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.common.varlen import run_per_sequence


def gated_linear_attention_reference(
    q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
):
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, g, initial_state)
    scale = K ** -0.5 if scale is None else scale
    if cu_seqlens is not None:
        return run_per_sequence(
            gated_linear_attention_reference, cu_seqlens, (q, k, v, g), initial_state=initial_state,
            output_final_state=output_final_state, g_gamma=g_gamma, scale=scale,
            empty=lambda: (v.new_zeros(1, 0, H, V, dtype=q.dtype), torch.zeros(1, H, K, V, dtype=ct, device=q.device)))
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
