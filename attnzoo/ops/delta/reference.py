"""The truth for the (gated) delta rule: a loop over time in float32 (float64 for float64 inputs).

    S_t = exp(g_t) (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

Same arguments as the public op (api.py) less impl; packed sequences (cu_seqlens) run one by one.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.common.varlen import run_per_sequence


def delta_rule_reference(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False,
                         cu_seqlens=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, beta, g, initial_state)
    scale = K ** -0.5 if scale is None else scale
    if cu_seqlens is not None:
        return run_per_sequence(
            delta_rule_reference, cu_seqlens, (q, k, v, beta, g), initial_state=initial_state,
            output_final_state=output_final_state, scale=scale,
            empty=lambda: (v.new_zeros(1, 0, H, V, dtype=q.dtype), torch.zeros(1, H, K, V, dtype=ct, device=q.device)))
    qf, kf, vf, bf = q.to(ct), k.to(ct), v.to(ct), beta.to(ct)
    S = torch.zeros(B, H, K, V, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    outs = []
    decay = torch.ones_like(bf) if g is None else torch.exp(g.to(ct))
    # unbind: per-step views whose backward is one stack (indexing x[:, t] would cost O(T) per step)
    for qt, kt, vt, bt, at in zip(qf.unbind(1), kf.unbind(1), vf.unbind(1), bf.unbind(1), decay.unbind(1)):
        S = at[..., None, None] * S
        pred = torch.einsum("bhk,bhkv->bhv", kt, S)  # what the state recalls for k_t
        S = S + kt[..., None] * (bt[..., None] * (vt - pred))[..., None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", qt, S))
    o = torch.stack(outs, 1).to(q.dtype)
    return o, (S if output_final_state else None)
