"""log_linear_attention: log-linear attention over Mamba-2 (beta None) or gated DeltaNet (beta given).

    o, state = log_linear_attention(q, k, v, g, level_weights, beta=None, *, mask=None, scale=None,
                                    initial_state=None, output_final_state=False, impl="auto")

Guo, Yang, Goel, Xing, Dao & Kim 2025, "Log-Linear Attention", arXiv:2506.04761: the base model's
attention matrix times a hierarchical mask, O = (A ⊙ M^S ⊙ M^H) V, M^H[t, s] = lambda_t^(level(t, s))
with the Fenwick levels of fenwick.py; recurrently one state per level,

    S_t^(l) = A_t S_{t-1}^(l) (after the Fenwick carry),   S_t^(0) = b_t v_tᵀ,
    o_t = scale sum_l lambda_t^(l) q_tᵀ S_t^(l)

A_t = exp(g_t) I, b = k (Mamba-2) or A_t = exp(g_t)(I - beta_t k_t k_tᵀ), b = beta k (gated DeltaNet).
q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H] log decay (<= 0); level_weights [B, T, H, L] (L >= 2 levels:
the last one also weighs every older level); beta [B, T, H] or None; mask bool [B, T] (True = real token:
padded steps are no-ops and do not count as positions). State: LevelState(S [B, H, levels, K, V] float32
(float64 for float64 inputs), count [B] int64), levels = min(L - 1, bit_length(count)): it grows with log2 T.
impl: "reference" (the token loop, reference.py), "torch" / "auto" (chunked, chunk.py).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.checks import check_chunk_size, check_qkv
from attnzoo.ops.common.precision import autocast_operands, without_autocast
from attnzoo.ops.loglinear.fenwick import LevelState

IMPLS = ("auto", "reference", "torch")


def _shape(t):
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def check_log_linear_inputs(q, k, v, g, level_weights, beta, mask, initial_state) -> None:
    check_qkv(q, k, v)
    B, T, H, K = q.shape
    if not isinstance(g, torch.Tensor) or tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be [B, T, H] = {(B, T, H)} (a scalar log decay per head), got {_shape(g)}")
    lw = level_weights
    if not isinstance(lw, torch.Tensor) or lw.dim() != 4 or tuple(lw.shape[:3]) != (B, T, H) or lw.shape[3] < 2:
        raise ValueError(f"level_weights must be [B, T, H, L] with B, T, H = {(B, T, H)} and L >= 2 levels, "
                         f"got {_shape(lw)}")
    if beta is not None and (not isinstance(beta, torch.Tensor) or tuple(beta.shape) != (B, T, H)):
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)} or None, got {_shape(beta)}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                             or tuple(mask.shape) != (B, T)):
        raise ValueError(f"mask must be a bool tensor [B, T] = {(B, T)} or None, got {_shape(mask)}")
    if initial_state is not None:
        if not isinstance(initial_state, LevelState):
            raise ValueError(f"initial_state must be a LevelState(S, count), got {type(initial_state).__name__}")
        S, n = initial_state
        want = f"[B, H, levels, K, V] = [{B}, {H}, <= {lw.shape[3] - 1}, {K}, {v.shape[-1]}]"
        if S.dim() != 5 or (S.shape[0], S.shape[1], S.shape[3], S.shape[4]) != (B, H, K, v.shape[-1]) \
                or S.shape[2] > lw.shape[3] - 1:
            raise ValueError(f"initial_state.S must be {want}, got {tuple(S.shape)}")
        if tuple(n.shape) != (B,) or n.is_floating_point() or n.dtype == torch.bool:
            raise ValueError(f"initial_state.count must be an integer tensor [B] = [{B}], got {_shape(n)} {n.dtype}")


def log_linear_attention(q, k, v, g, level_weights, beta=None, *, mask=None, scale=None, initial_state=None,
                         output_final_state=False, impl="auto", chunk_size=16):
    """Log-linear attention (arXiv:2506.04761) over Mamba-2 (beta None) or gated DeltaNet (the module
    docstring has the recurrence).

    Args:
        q, k: [B, T, H, K]. v: [B, T, H, V]. g: [B, T, H] log decay (<= 0).
        level_weights: [B, T, H, L] lambda_t^(l), L >= 2. beta: [B, T, H] in (0, 1) or None.
        mask: bool [B, T] or None. scale: None means K ** -0.5.
        initial_state: LevelState or None. output_final_state: return the state after the last token.
        impl: "auto" | "reference" | "torch". chunk_size: tokens per chunk of the torch path.
    Returns:
        (o [B, T, H, V] in q's dtype (0 at padded steps), LevelState or None).

    Example:
        >>> q, k, v = torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 4), torch.randn(1, 20, 2, 4)
        >>> g, lam = -torch.rand(1, 20, 2), torch.rand(1, 20, 2, 6)
        >>> o, s = log_linear_attention(q, k, v, g, lam, output_final_state=True)
        >>> s.S.shape, s.count.tolist()          # bit_length(20) = 5 levels
        (torch.Size([1, 2, 5, 4, 4]), [20])
        >>> o1, s1 = log_linear_attention(q[:, :7], k[:, :7], v[:, :7], g[:, :7], lam[:, :7], output_final_state=True)
        >>> o2, _ = log_linear_attention(q[:, 7:], k[:, 7:], v[:, 7:], g[:, 7:], lam[:, 7:], initial_state=s1)
        >>> torch.allclose(torch.cat([o1, o2], 1), o, atol=1e-5)
        True
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_chunk_size(chunk_size)
    check_log_linear_inputs(q, k, v, g, level_weights, beta, mask, initial_state)
    q, k, v = autocast_operands(q, k, v)
    return _run(q, k, v, g, level_weights, beta, mask=mask, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, impl=impl, chunk_size=chunk_size)


@without_autocast
def _run(q, k, v, g, level_weights, beta, *, mask, scale, initial_state, output_final_state, impl, chunk_size):
    if impl == "reference":
        from attnzoo.ops.loglinear.reference import log_linear_reference

        return log_linear_reference(q, k, v, g, level_weights, beta, mask=mask, scale=scale,
                                    initial_state=initial_state, output_final_state=output_final_state)
    from attnzoo.ops.loglinear.chunk import chunk_log_linear

    return chunk_log_linear(q, k, v, g, level_weights, beta, mask=mask, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, chunk_size=chunk_size)
