"""Gated linear attention: S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · q_tᵀ S_t."""

from attnzoo.ops.linear.api import gated_linear_attention

__all__ = ["gated_linear_attention"]
