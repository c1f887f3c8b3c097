"""Input checks of mesa_attention (below both api.py and its implementations)."""

from __future__ import annotations

from attnzoo.ops.common.checks import check_qkv, check_state


def check_mesa_inputs(q, k, v, beta, g, lam, initial_state) -> None:
    """q, k [B, T, H, K]; v [B, T, H, V]; beta, g [B, T, H]; lam [H, K]; state [B, H, K, V + K]."""
    check_qkv(q, k, v)
    B, T, H, K = q.shape
    if tuple(beta.shape) != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    if g is not None and tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be a scalar log gate per head [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    if tuple(lam.shape) != (H, K):
        raise ValueError(f"lam must be the diagonal regulariser [H, K] = {(H, K)}, got {tuple(lam.shape)}")
    check_state(initial_state, (B, H, K, v.shape[-1] + K), "[B, H, K, V + K] (G then H)")


def check_cg_steps(cg_steps) -> None:
    if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 1:
        raise ValueError(f"cg_steps must be a positive int, got {cg_steps!r}")
