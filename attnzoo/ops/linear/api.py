"""gated_linear_attention: one signature for every implementation.

    o, S = gated_linear_attention(q, k, v, g=None, *, g_gamma=None, scale=None,
                                  initial_state=None, output_final_state=False,
                                  cu_seqlens=None, normalize=False, impl="auto")

q, k [B, T, H, K]; v [B, T, H, V]; o [B, T, H, V] in q's dtype.
g: log-space gate (<= 0), scalar per head [B, T, H] or per key channel [B, T, H, K]; None: no gate.
g_gamma [H]: constant per-head log decay (RetNet, Lightning), combined with g if both are given.
State S [N, H, K, V], float32 (float64 for float64 inputs); final_state is None unless asked for.
cu_seqlens [N + 1] (int) packs N sequences into the T tokens of a batch of one (B == 1): each
starts from initial_state[n] and returns its own final state; without it N = B.

    S_t = diag(exp(g_t + g_gamma)) S_{t-1} + k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

normalize=True also carries z_t = exp(g_t) ⊙ z_{t-1} + k_t and returns
o_t = scale · q_tᵀ S_t / (scale · q_tᵀ z_t + eps); z is the state of a value column of ones, so the
state is then [N, H, K, V + 1] (the last column is z) and initial_state must have that shape too.

impl: "reference" (loop over time, reference.py), "torch" (chunked, chunk.py), "triton"
(triton/), "auto" (Triton on CUDA for the shapes it takes, else torch).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.checks import check_gla_inputs
from attnzoo.ops.common.dispatch import op_override, resolve_impl
from attnzoo.ops.common.precision import autocast_operands, without_autocast

NORMALIZE_EPS = 1e-6


def gated_linear_attention(
    q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
    cu_seqlens=None, normalize=False, impl="auto",
):
    """Gated linear attention (GLA, Yang et al. 2023, arXiv:2312.06635; RetNet / Lightning through
    g_gamma, Mamba-2 through a scalar g; the module docstring has the recurrence).

    Args:
        q, k: [B, T, H, K]. v: [B, T, H, V].
        g: log gate (<= 0), [B, T, H] (scalar per head) or [B, T, H, K] (per key channel), or None.
        g_gamma: [H] constant log decay per head, or None. scale: None means K ** -0.5.
        initial_state: [N, H, K, V] (N = B, or the number of packed sequences), or None (zeros).
        output_final_state: return the state after the last token. cu_seqlens: int [N + 1] or None.
        normalize: divide by the normaliser q_tᵀ z_t (state [N, H, K, V + 1]).
        impl: "auto" | "reference" | "torch" | "triton".
    Returns:
        (o [B, T, H, V] in q's dtype, final_state [N, H, K, V] float32 (float64) or None).

    Under torch.autocast, q, k, v of mixed dtypes go in as autocast gives a matmul its operands
    (the region's dtype: common.precision.autocast_operands); g, g_gamma and the state stay float32.

    Example:
        >>> q, k, v = torch.randn(2, 50, 4, 16), torch.randn(2, 50, 4, 16), torch.randn(2, 50, 4, 8)
        >>> g = torch.nn.functional.logsigmoid(torch.randn(2, 50, 4))
        >>> o, S = gated_linear_attention(q, k, v, g, output_final_state=True)
        >>> o.shape, S.shape, S.dtype
        (torch.Size([2, 50, 4, 8]), torch.Size([2, 4, 16, 8]), torch.float32)
        >>> o_ref, _ = gated_linear_attention(q, k, v, g, impl="reference")
        >>> torch.allclose(o, o_ref, atol=1e-4)
        True
        >>> cu = torch.tensor([0, 20, 50])  # two packed sequences = two separate calls
        >>> o_p, S_p = gated_linear_attention(q[:1], k[:1], v[:1], g[:1], cu_seqlens=cu, output_final_state=True)
        >>> o_2, S_2 = gated_linear_attention(q[:1, 20:], k[:1, 20:], v[:1, 20:], g[:1, 20:], output_final_state=True)
        >>> torch.allclose(o_p[:, 20:], o_2, atol=1e-5), torch.allclose(S_p[1:], S_2, atol=1e-5)
        (True, True)
    """
    q, k, v = autocast_operands(q, k, v)
    return _gated_linear_attention(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                   normalize=normalize, impl=impl)


@without_autocast  # computes in float32 (the state) whatever the caller's autocast
def _gated_linear_attention(
    q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
    cu_seqlens=None, normalize=False, impl="auto",
):
    check_gla_inputs(q, k, v, g, g_gamma, initial_state, normalize, cu_seqlens=cu_seqlens)
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
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, impl=impl,
        )
        of = o.float() if o.dtype in (torch.float16, torch.bfloat16) else o
        return (of[..., :-1] / (of[..., -1:] + NORMALIZE_EPS)).to(out_dtype), S
    override = op_override("gated_linear_attention")  # e.g. attnzoo.parallel.sequence_parallel
    if override is not None:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens is not supported under sequence parallelism (shard whole sequences)")
        return override(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, impl=impl)
    from attnzoo.ops.linear.triton.api import triton_supported

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
        from attnzoo.ops.linear.triton.api import triton_gated_linear_attention as fn
    return fn(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
              output_final_state=output_final_state, cu_seqlens=cu_seqlens)
