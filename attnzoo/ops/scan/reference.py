"""The truth for the selective scan: a loop over time in float32 (float64 for float64 inputs).

    h_t = exp(Δ_t ⊙ A) ⊙ h_{t-1} + (Δ_t ⊙ u_t) B_tᵀ        h [B, D, N]
    y_t = h_t C_t (+ D ⊙ u_t)                               y [B, T, D]

Same arguments as the public op (api.py) less impl; packed sequences (cu_seqlens) run one by one.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.common.varlen import run_per_sequence


def selective_scan_reference(u, delta, A, B, C, D=None, *, initial_state=None, output_final_state=False,
                             cu_seqlens=None):
    Bsz, T, Dm = u.shape
    N = A.shape[1]
    ct = compute_dtype(u, delta, A, B, C, initial_state)
    if cu_seqlens is not None:
        return run_per_sequence(
            lambda u, delta, B, C, **kw: selective_scan_reference(u, delta, A, B, C, D, **kw), cu_seqlens,
            (u, delta, B, C), initial_state=initial_state, output_final_state=output_final_state,
            empty=lambda: (u.new_zeros(1, 0, Dm), torch.zeros(1, Dm, N, dtype=ct, device=u.device)))
    uf, df, Af, Bf, Cf = u.to(ct), delta.to(ct), A.to(ct), B.to(ct), C.to(ct)
    h = torch.zeros(Bsz, Dm, N, dtype=ct, device=u.device) if initial_state is None else initial_state.to(ct)
    ys = []
    for t in range(T):
        dA = torch.exp(df[:, t, :, None] * Af)  # [B, D, N]
        h = dA * h + (df[:, t] * uf[:, t])[:, :, None] * Bf[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, t]))
    y = torch.stack(ys, 1)
    if D is not None:
        y = y + D.to(ct) * uf
    return y.to(u.dtype), (h if output_final_state else None)
