"""gated_slot_attention: one signature for every implementation.

    o, (K̃, Ṽ) = gated_slot_attention(q, k, v, g, *, scale=1.0, initial_state=None,
                                       output_final_state=False, impl="auto", chunk_size=64)

Zhang et al. (2024), "Gated Slot Attention for Efficient Linear-Time Sequence Modeling", arXiv:2409.07146.
q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H, M] the log forget gate (<= 0) of each of the M slots,
α_t = exp(g_t), written with weight 1 - α_t (the paper ties the two); o [B, T, H, V] in q's dtype. The
state is the pair of slot memories, keys K̃ [B, H, M, K] and values Ṽ [B, H, M, V], float32 (float64 for
float64 inputs):

    K̃_t = Diag(α_t) K̃_{t-1} + (1 - α_t) k_tᵀ,   Ṽ_t = Diag(α_t) Ṽ_{t-1} + (1 - α_t) v_tᵀ
    o_t = Ṽ_tᵀ softmax(scale · K̃_t q_t)

A step with g = 0 leaves both memories as they are (how a mixer skips padding). scale: the paper's equation
has none (1.0). impl: "reference" (a loop over time, reference.py), "torch" (two chunked passes, chunk.py),
"auto" (torch; the second pass, plain gated linear attention, takes ops/linear's "auto": Triton on CUDA).
"""

from __future__ import annotations

import math

import torch

from attnzoo.ops.common.checks import check_chunk_size, check_qkv
from attnzoo.ops.common.precision import autocast_operands, without_autocast

IMPLS = ("auto", "reference", "torch")


def check_slot_inputs(q, k, v, g, scale, initial_state) -> None:
    """Shapes of gated slot attention's inputs (module docstring); ValueError naming what was expected."""
    check_qkv(q, k, v)
    B, T, H, K = q.shape
    if not isinstance(g, torch.Tensor) or g.dim() != 4 or tuple(g.shape[:3]) != (B, T, H) or g.shape[-1] < 1 \
            or not g.is_floating_point():
        got = (tuple(g.shape), g.dtype) if isinstance(g, torch.Tensor) else type(g).__name__
        raise ValueError(f"g must be a float log gate per slot [B, T, H, M] with [B, T, H] = {(B, T, H)}, got {got}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if initial_state is None:
        return
    M, V = g.shape[-1], v.shape[-1]
    want = ((B, H, M, K), (B, H, M, V))
    ok = isinstance(initial_state, (tuple, list)) and len(initial_state) == 2 and all(
        isinstance(s, torch.Tensor) and tuple(s.shape) == w for s, w in zip(initial_state, want))
    if not ok:
        got = [tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__ for s in initial_state] \
            if isinstance(initial_state, (tuple, list)) else type(initial_state).__name__
        raise ValueError(f"initial_state must be the pair (keys [B, H, M, K] = {want[0]}, values [B, H, M, V] = "
                         f"{want[1]}), got {got}")


def gated_slot_attention(q, k, v, g, *, scale=1.0, initial_state=None, output_final_state=False, impl="auto",
                         chunk_size=64):
    """Gated slot attention (GSA, arXiv:2409.07146; the module docstring has the recurrence).

    Args:
        q, k: [B, T, H, K]. v: [B, T, H, V]. g: [B, T, H, M] log forget gate (<= 0) per slot.
        scale: multiplies the slot scores K̃_t q_t before the softmax (the paper: 1).
        initial_state: (K̃ [B, H, M, K], Ṽ [B, H, M, V]) or None (zeros).
        output_final_state: return the memories after the last token.
        impl: "auto" | "reference" | "torch".
        chunk_size: tokens per chunk of the first pass (rounded down to a power of two).
    Returns:
        (o [B, T, H, V] in q's dtype, (K̃, Ṽ) float32 (float64) or None).

    Example:
        >>> q, k, v = torch.randn(2, 20, 2, 8), torch.randn(2, 20, 2, 8), torch.randn(2, 20, 2, 4)
        >>> g = torch.nn.functional.logsigmoid(torch.randn(2, 20, 2, 16)) / 8
        >>> o, (Ks, Vs) = gated_slot_attention(q, k, v, g, output_final_state=True)
        >>> o.shape, Ks.shape, Vs.shape
        (torch.Size([2, 20, 2, 4]), torch.Size([2, 2, 16, 8]), torch.Size([2, 2, 16, 4]))
        >>> torch.allclose(o, gated_slot_attention(q, k, v, g, impl="reference")[0], atol=1e-5)
        True
    """
    q, k, v = autocast_operands(q, k, v)
    return _gated_slot_attention(q, k, v, g, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state, impl=impl, chunk_size=chunk_size)


@without_autocast  # computes in float32 (the state) whatever the caller's autocast
def _gated_slot_attention(q, k, v, g, *, scale, initial_state, output_final_state, impl, chunk_size):
    check_slot_inputs(q, k, v, g, scale, initial_state)
    check_chunk_size(chunk_size)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} (no Triton kernel of its own), got {impl!r}")
    if impl == "reference":
        from attnzoo.ops.slot.reference import gated_slot_attention_reference

        return gated_slot_attention_reference(q, k, v, g, scale=float(scale), initial_state=initial_state,
                                              output_final_state=output_final_state)
    from attnzoo.ops.slot.chunk import chunk_gated_slot_attention

    return chunk_gated_slot_attention(q, k, v, g, scale=float(scale), initial_state=initial_state,
                                      output_final_state=output_final_state, chunk_size=chunk_size,
                                      gla_impl="torch" if impl == "torch" else "auto")
