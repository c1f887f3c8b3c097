"""The (gated) delta rule: S_t = exp(g_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ."""

from attnzoo.ops.delta.api import delta_rule
from attnzoo.ops.delta import chunk_op  # noqa: F401  (registers the custom op torch.compile runs)

__all__ = ["delta_rule"]
