"""The truth for the selective scan: a loop over time in float32 (float64 for float64 inputs).

    h_t = exp(Δ_t ⊙ A) ⊙ h_{t-1} + (Δ_t ⊙ u_t) B_tᵀ        h [B, D, N]
    y_t = h_t C_t (+ D ⊙ u_t)                               y [B, T, D]
"""

from __future__ import annotations

import torch


def compute_dtype(*ts) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def selective_scan_reference(u, delta, A, B, C, D=None, *, initial_state=None, output_final_state=False):
    Bsz, T, Dm = u.shape
    N = A.shape[1]
    ct = compute_dtype(u, delta, A, B, C, initial_state)
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
