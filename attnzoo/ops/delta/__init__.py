"""The delta-rule family: the (gated) delta rule S_t = exp(g_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,
its diagonal-plus-rank-one generalisation (dplr_delta_rule), Kimi Delta Attention (kimi_delta_rule) and
DeltaProduct's n_h Householder steps per token (delta_product)."""

from attnzoo.ops.delta.api import delta_rule
from attnzoo.ops.delta.dplr import dplr_delta_rule
from attnzoo.ops.delta.kda import kimi_delta_rule
from attnzoo.ops.delta.product import delta_product
from attnzoo.ops.delta import chunk_op  # noqa: F401  (registers the custom op torch.compile runs)

__all__ = ["delta_rule", "dplr_delta_rule", "kimi_delta_rule", "delta_product"]
