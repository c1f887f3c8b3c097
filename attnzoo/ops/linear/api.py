"""gated_linear_attention: one signature for every implementation.

    o, S = gated_linear_attention(q, k, v, g=None, *, g_gamma=None, scale=None,
                                  initial_state=None, output_final_state=False,
                                  normalize=False, impl="auto")

q, k [B, T, H, K]; v [B, T, H, V]; o [B, T, H, V] in q's dtype.
g: log-space gate (<= 0), scalar per head [B, T, H] or per key channel [B, T, H, K]; None: no gate.
g_gamma [H]: constant per-head log decay (RetNet, Lightning), combined with g if both are given.
State S [B, H, K, V], float32 (float64 for float64 inputs); final_state is None unless asked for.

    S_t = diag(exp(g_t + g_gamma)) S_{t-1} + k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

normalize=True also carries z_t = exp(g_t) ⊙ z_{t-1} + k_t and returns
o_t = scale · q_tᵀ S_t / (scale · q_tᵀ z_t + eps); z is the state of a value column of ones, so the
state is then [B, H, K, V + 1] (the last column is z) and initial_state must have that shape too.
"""

from __future__ import annotations

import torch

from attnzoo.ops.dispatch import autocast_operands, op_override, resolve_impl, without_autocast

NORMALIZE_EPS = 1e-6


def check_gla_inputs(q, k, v, g, g_gamma, initial_state, normalize):
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k must be [B, T, H, K] and v [B, T, H, V] with the same B, T, H; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, K = q.shape
    V = v.shape[-1] + (1 if normalize else 0)
    if g is not None and tuple(g.shape) not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"g must be [B, T, H] = {(B, T, H)} or [B, T, H, K] = {(B, T, H, K)}, got {tuple(g.shape)}")
    if g_gamma is not None and tuple(g_gamma.shape) != (H,):
        raise ValueError(f"g_gamma must be [H] = [{H}], got {tuple(g_gamma.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, V):
        raise ValueError(f"initial_state must be [B, H, K, V] = {(B, H, K, V)}, got {tuple(initial_state.shape)}")


def gated_linear_attention(
    q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
    normalize=False, impl="auto",
):
    """Under torch.autocast, q, k, v of mixed dtypes go in as autocast gives a matmul its operands
    (the region's dtype: dispatch.autocast_operands); g, g_gamma and the state stay float32."""
    q, k, v = autocast_operands(q, k, v)
    return _gated_linear_attention(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state, normalize=normalize, impl=impl)


@without_autocast  # computes in float32 (the state) whatever the caller's autocast
def _gated_linear_attention(
    q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
    normalize=False, impl="auto",
):
    check_gla_inputs(q, k, v, g, g_gamma, initial_state, normalize)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if normalize:  # the normaliser is the state of a value column of ones; dispatch sees V + 1
        # numerator and normaliser grow with T (a sum over the prefix): in float16 they overflow (65504)
        # long before their ratio does, so float16 inputs are computed in float32 and only o is float16
        out_dtype = q.dtype
        if q.dtype == torch.float16:
            q, k, v = q.float(), k.float(), v.float()
        ones = torch.ones_like(v[..., :1])
        o, S = gated_linear_attention(
            q, k, torch.cat([v, ones], -1), g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, impl=impl,
        )
        of = o.float() if o.dtype in (torch.float16, torch.bfloat16) else o
        return (of[..., :-1] / (of[..., -1:] + NORMALIZE_EPS)).to(out_dtype), S
    override = op_override("gated_linear_attention")  # e.g. attnzoo.parallel.sequence_parallel
    if override is not None:
        return override(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, impl=impl)
    from attnzoo.ops.linear.triton import triton_supported

    # the Triton g_gamma gradient is inaccurate in bf16 (notes/triton_gla.md): a trained g_gamma stays on torch
    trained_gamma = g_gamma is not None and g_gamma.requires_grad and torch.is_grad_enabled()
    impl = resolve_impl(
        impl, q, triton_supported=triton_supported(q, k, v, g, initial_state=initial_state) and not trained_gamma
    )
    if impl == "reference":
        from attnzoo.ops.linear.reference import gated_linear_attention_reference as fn
    elif impl == "torch":
        from attnzoo.ops.linear.chunk import chunk_gated_linear_attention as fn
    else:
        from attnzoo.ops.linear.triton import triton_gated_linear_attention as fn
    return fn(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
              output_final_state=output_final_state)
