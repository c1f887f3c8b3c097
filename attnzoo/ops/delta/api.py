"""delta_rule: DeltaNet (g=None) and Gated DeltaNet, one signature for every implementation.

    o, S = delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None,
                      output_final_state=False, impl="auto")

q, k [B, T, H, K] (keys are expected L2-normalised); v [B, T, H, V]; beta [B, T, H] in (0, 1);
g [B, T, H] log-space scalar gate (<= 0) or None. State S [B, H, K, V] float32 (float64 for
float64 inputs).

    S_t = exp(g_t) (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = scale · q_tᵀ S_t
"""

from __future__ import annotations

from attnzoo.ops.dispatch import op_override, resolve_impl, without_autocast


def check_delta_inputs(q, k, v, beta, g, initial_state):
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k must be [B, T, H, K] and v [B, T, H, V] with the same B, T, H; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, K = q.shape
    if tuple(beta.shape) != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    if g is not None and tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be a scalar gate per head [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    V = v.shape[-1]
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, V):
        raise ValueError(f"initial_state must be [B, H, K, V] = {(B, H, K, V)}, got {tuple(initial_state.shape)}")


@without_autocast  # computes in float32 (the state) whatever the caller's autocast
def delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False, impl="auto"):
    check_delta_inputs(q, k, v, beta, g, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    override = op_override("delta_rule")  # e.g. attnzoo.parallel.sequence_parallel
    if override is not None:
        return override(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, impl=impl)
    impl = resolve_impl(impl, q, triton_supported=False)
    if impl == "reference":
        from attnzoo.ops.delta.reference import delta_rule_reference as fn
    elif impl == "torch":
        from attnzoo.ops.delta.chunk import chunk_delta_rule as fn
    else:
        raise ValueError('delta_rule has no Triton kernel yet; use impl="torch" or "reference"')
    return fn(q, k, v, beta, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
