"""The generalised delta rule with a diagonal-plus-rank-one transition (DPLR), the op under KDA and RWKV-7.

    o, S = dplr_delta_rule(q, k, v, a, b, g, *, scale=None, initial_state=None, output_final_state=False,
                           impl="auto")

q, k, a, b, g [B, T, H, K] (g: log-space decay per key channel, <= 0); v [B, T, H, V]; state S [B, H, K, V]
float32 (float64 for float64 inputs).

    S_t = Diag(exp(g_t)) S_{t-1} + a_t (b_tᵀ S_{t-1}) + k_t v_tᵀ,      o_t = scale · q_tᵀ S_t

The transition Diag(w_t) + a_t b_tᵀ is diagonal plus rank one. Kimi Delta Attention (Kimi Linear,
arXiv:2510.26692) S_t = (I - β_t k_t k_tᵀ) Diag(α_t) S_{t-1} + β_t k_t v_tᵀ is the case a = -β k,
b = α ⊙ k, k -> β k; RWKV-7 (arXiv:2503.14456) S_t = (Diag(w_t) - (a_t ⊙ κ̂_t) κ̂_tᵀ) S_{t-1} + k̃_t v_tᵀ
is a -> -(a ⊙ κ̂), b -> κ̂, k -> k̃ (the mixers kda.py and rwkv7.py build those).

impl: "reference" (a loop over time, dplr_reference below), "torch" (the chunked form in dplr_chunk.py,
differentiated by autograd), or "auto" (torch; there is no Triton kernel for this op).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.checks import check_state
from attnzoo.ops.common.dispatch import IMPLS
from attnzoo.ops.common.precision import autocast_operands, compute_dtype, without_autocast


def check_dplr_inputs(q, k, v, a, b, g, initial_state) -> None:
    """q, k, a, b, g [B, T, H, K] of one shape, v [B, T, H, V], state [B, H, K, V]."""
    if q.dim() != 4 or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q must be [B, T, H, K] and v [B, T, H, V] with the same B, T, H; "
                         f"got {tuple(q.shape)}, {tuple(v.shape)}")
    for name, t in (("k", k), ("a", a), ("b", b), ("g", g)):
        if not isinstance(t, torch.Tensor) or t.shape != q.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be [B, T, H, K] = {tuple(q.shape)} like q, got {got}")
    B, T, H, K = q.shape
    check_state(initial_state, (B, H, K, v.shape[-1]), "[B, H, K, V]")


def dplr_delta_rule(q, k, v, a, b, g, *, scale=None, initial_state=None, output_final_state=False, impl="auto",
                    chunk_size=32):
    """The DPLR delta rule (the module docstring has the recurrence).

    Args:
        q, k, a, b: [B, T, H, K]. v: [B, T, H, V]. g: [B, T, H, K] log decay (<= 0) per key channel.
        scale: None means K ** -0.5. initial_state: [B, H, K, V] or None (zeros).
        output_final_state: return the last state. impl: "auto" | "reference" | "torch".
        chunk_size: tokens per chunk of the torch path.
    Returns:
        (o [B, T, H, V] in q's dtype, final_state [B, H, K, V] float32 (float64) or None).

    Example:
        >>> q, k, v = torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 4)
        >>> kh = torch.nn.functional.normalize(torch.randn(1, 20, 2, 4), dim=-1)
        >>> g = -torch.rand(1, 20, 2, 4)
        >>> o, S = dplr_delta_rule(q, k, v, -0.5 * kh, kh, g, output_final_state=True)
        >>> o_ref, S_ref = dplr_delta_rule(q, k, v, -0.5 * kh, kh, g, output_final_state=True, impl="reference")
        >>> torch.allclose(o, o_ref, atol=1e-4), S.shape
        (True, torch.Size([1, 2, 4, 4]))
    """
    q, k, v, a, b = autocast_operands(q, k, v, a, b)
    return _dplr(q, k, v, a, b, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                 impl=impl, chunk_size=chunk_size)


@without_autocast
def _dplr(q, k, v, a, b, g, *, scale, initial_state, output_final_state, impl, chunk_size):
    check_dplr_inputs(q, k, v, a, b, g, initial_state)
    if impl not in IMPLS or impl == "triton":
        raise ValueError(f"impl must be one of ('auto', 'reference', 'torch') for dplr_delta_rule, got {impl!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if impl == "reference":
        return dplr_reference(q, k, v, a, b, g, scale=scale, initial_state=initial_state,
                              output_final_state=output_final_state)
    from attnzoo.ops.delta.dplr_chunk import chunk_dplr_delta_rule

    return chunk_dplr_delta_rule(q, k, v, a, b, g, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state, chunk_size=chunk_size)


def dplr_reference(q, k, v, a, b, g, *, scale=None, initial_state=None, output_final_state=False):
    """The truth: one step at a time in float32 (float64 for float64 inputs), the recurrence as written."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, a, b, g, initial_state)
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    outs = []
    for qt, kt, vt, at, bt, gt in zip(*(t.to(ct).unbind(1) for t in (q, k, v, a, b, g))):
        recalled = torch.einsum("bhk,bhkv->bhv", bt, S)  # b_tᵀ S_{t-1}
        S = gt.exp()[..., None] * S + at[..., None] * recalled[..., None, :] + kt[..., None] * vt[..., None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", qt, S))
    o = torch.stack(outs, 1).to(q.dtype) if outs else v.new_zeros(B, 0, H, V, dtype=q.dtype)
    return o, (S if output_final_state else None)
