"""delta_rule: DeltaNet (g=None) and Gated DeltaNet, one signature for every implementation.

    o, S = delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None,
                      output_final_state=False, cu_seqlens=None, impl="auto")

q, k [B, T, H, K] (keys are expected L2-normalised); v [B, T, H, V]; beta [B, T, H] in (0, 1);
g [B, T, H] log-space scalar gate (<= 0) or None. State S [N, H, K, V] float32 (float64 for
float64 inputs); N = B, or the number of sequences packed by cu_seqlens [N + 1] into a batch of one.

    S_t = exp(g_t) (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

impl: "reference" (loop over time, reference.py), "torch" (chunked WY form, chunk.py), "triton"
(triton/: chunked kernels, a decode kernel for small T without gradients, a torch.library custom op
under torch.compile), or "auto": Triton on CUDA where it takes the shape (K <= 128, V <= 256, q, k, v
of one float dtype), else torch.
"""

from __future__ import annotations

from attnzoo.ops.common.checks import check_delta_inputs
from attnzoo.ops.common.dispatch import op_override, resolve_impl
from attnzoo.ops.common.precision import autocast_operands, without_autocast


def delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
               impl="auto"):
    """The (gated) delta rule (DeltaNet: Yang et al. 2024, arXiv:2406.06484; Gated DeltaNet: Yang,
    Kautz, Hatamizadeh 2024, arXiv:2412.06464; the module docstring has the recurrence).

    Args:
        q, k: [B, T, H, K] (keys L2-normalised). v: [B, T, H, V]. beta: [B, T, H] in (0, 1).
        g: [B, T, H] log gate (<= 0) or None (DeltaNet). scale: None means K ** -0.5.
        initial_state: [N, H, K, V] or None (zeros). output_final_state: return the last state.
        cu_seqlens: int [N + 1] packing N sequences into T (B == 1), or None.
        impl: "auto" | "reference" | "torch" | "triton".
    Returns:
        (o [B, T, H, V] in q's dtype, final_state [N, H, K, V] float32 (float64) or None).

    Example:
        >>> q, v = torch.randn(1, 40, 2, 8), torch.randn(1, 40, 2, 8)
        >>> k = torch.nn.functional.normalize(torch.randn(1, 40, 2, 8), dim=-1)
        >>> beta, g = torch.rand(1, 40, 2), -torch.rand(1, 40, 2)
        >>> o, S = delta_rule(q, k, v, beta, g, output_final_state=True)
        >>> o.shape, S.shape
        (torch.Size([1, 40, 2, 8]), torch.Size([1, 2, 8, 8]))
        >>> o1, S1 = delta_rule(q[:, :25], k[:, :25], v[:, :25], beta[:, :25], g[:, :25], output_final_state=True)
        >>> o2, _ = delta_rule(q[:, 25:], k[:, 25:], v[:, 25:], beta[:, 25:], g[:, 25:], initial_state=S1)
        >>> torch.allclose(torch.cat([o1, o2], 1), o, atol=1e-5)  # a state continues where a call stopped
        True
    """
    q, k, v = autocast_operands(q, k, v)  # under autocast: one dtype, the region's (the kernels take one)
    return _delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state, cu_seqlens=cu_seqlens, impl=impl)


@without_autocast  # computes in float32 (the state) whatever the caller's autocast
def _delta_rule(q, k, v, beta, g, *, scale, initial_state, output_final_state, cu_seqlens, impl):
    check_delta_inputs(q, k, v, beta, g, initial_state, cu_seqlens=cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    override = op_override("delta_rule")  # e.g. attnzoo.parallel.sequence_parallel
    if override is not None:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens is not supported under sequence parallelism (shard whole sequences)")
        return override(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, impl=impl)
    from attnzoo.ops.delta.triton.api import triton_supported

    impl = resolve_impl(impl, q, triton_supported=triton_supported(q, k, v))
    if impl == "reference":
        from attnzoo.ops.delta.reference import delta_rule_reference as fn
    elif impl == "torch":
        from attnzoo.ops.delta.chunk import chunk_delta_rule as fn
    else:
        from attnzoo.ops.delta.triton.api import triton_delta_rule as fn
    return fn(q, k, v, beta, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
              cu_seqlens=cu_seqlens)
