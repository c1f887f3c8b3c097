"""Kimi Delta Attention's recurrence: the gated delta rule with a decay per key channel.

    o, S = kimi_delta_rule(q, k, v, beta, g, *, scale=None, initial_state=None, output_final_state=False,
                           impl="auto")

q, k [B, T, H, K] (keys L2-normalised); v [B, T, H, V]; beta [B, T, H] in (0, 1); g [B, T, H, K] log decay
(<= 0) per key channel; state S [B, H, K, V] float32 (float64 for float64 inputs). Kimi Linear
(Kimi Team 2025, arXiv:2510.26692), eq. for KDA: the decay first, then the delta-rule update,

    S_t = (I - β_t k_t k_tᵀ) Diag(α_t) S_{t-1} + β_t k_t v_tᵀ,   α_t = exp(g_t),   o_t = scale · q_tᵀ S_t

impl "reference": that recurrence step by step (kda_reference); "torch" / "auto": the chunked DPLR op
(dplr_chunk.py) with a = -β k, b = α ⊙ k and keys β k, since (I - β k kᵀ) Diag(α) S = Diag(α) S
- β k ((α ⊙ k)ᵀ S).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.delta.dplr import check_dplr_inputs, dplr_delta_rule


def _check_beta_gate(q, k, beta, g):
    if not isinstance(beta, torch.Tensor) or tuple(beta.shape) != tuple(q.shape[:3]):
        got = tuple(beta.shape) if isinstance(beta, torch.Tensor) else type(beta).__name__
        raise ValueError(f"beta must be [B, T, H] = {tuple(q.shape[:3])}, got {got}")
    for name, t in (("k", k), ("g", g)):
        if not isinstance(t, torch.Tensor) or t.shape != q.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be [B, T, H, K] = {tuple(q.shape)} like q (g: a decay per key channel), "
                             f"got {got}")


def kimi_delta_rule(q, k, v, beta, g, *, scale=None, initial_state=None, output_final_state=False, impl="auto",
                    chunk_size=32):
    """Kimi Delta Attention's recurrence (Kimi Linear, arXiv:2510.26692; the module docstring has it).

    Args:
        q, k: [B, T, H, K] (keys L2-normalised). v: [B, T, H, V]. beta: [B, T, H] in (0, 1).
        g: [B, T, H, K] log decay (<= 0) per key channel. scale: None means K ** -0.5.
        initial_state: [B, H, K, V] or None (zeros). output_final_state: return the last state.
        impl: "auto" | "reference" | "torch". chunk_size: tokens per chunk of the torch path.
    Returns:
        (o [B, T, H, V] in q's dtype, final_state [B, H, K, V] float32 (float64) or None).

    Example:
        >>> q, v = torch.randn(1, 9, 2, 4), torch.randn(1, 9, 2, 4)
        >>> k = torch.nn.functional.normalize(torch.randn(1, 9, 2, 4), dim=-1)
        >>> beta, g = torch.rand(1, 9, 2), -torch.rand(1, 9, 2, 4)
        >>> o, _ = kimi_delta_rule(q, k, v, beta, g)
        >>> torch.allclose(o, kimi_delta_rule(q, k, v, beta, g, impl="reference")[0], atol=1e-5)
        True
    """
    _check_beta_gate(q, k, beta, g)
    if impl == "reference":
        check_dplr_inputs(q, k, v, k, k, g, initial_state)
        return kda_reference(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                             output_final_state=output_final_state)
    bk = beta[..., None].to(k.dtype) * k
    return dplr_delta_rule(q, bk, v, -bk, g.exp() * k, g, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, impl=impl, chunk_size=chunk_size)


def kda_reference(q, k, v, beta, g, *, scale=None, initial_state=None, output_final_state=False):
    """The paper's recurrence one step at a time in float32 (float64 for float64 inputs)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, beta, g, initial_state)
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    outs = []
    for qt, kt, vt, bt, gt in zip(*(t.to(ct).unbind(1) for t in (q, k, v, beta, g))):
        S = gt.exp()[..., None] * S                                         # Diag(α_t) S_{t-1}
        S = S - bt[..., None, None] * kt[..., None] * torch.einsum("bhk,bhkv->bhv", kt, S)[..., None, :]
        S = S + bt[..., None, None] * kt[..., None] * vt[..., None, :]     # (I - β k kᵀ)(.) + β k vᵀ
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", qt, S))
    o = torch.stack(outs, 1).to(q.dtype) if outs else v.new_zeros(B, 0, H, V, dtype=q.dtype)
    return o, (S if output_final_state else None)
