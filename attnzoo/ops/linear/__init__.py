"""Gated linear attention: S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · q_tᵀ S_t."""

from attnzoo.ops.linear.api import gated_linear_attention
from attnzoo.ops.linear import chunk_op  # noqa: F401  (registers the custom op torch.compile runs)

__all__ = ["gated_linear_attention"]
