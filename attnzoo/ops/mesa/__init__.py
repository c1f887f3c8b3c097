"""The mesa layer's op (MesaNet, von Oswald et al. 2025, arXiv:2506.05233): in-context regularised least
squares solved per token, o_t = G_t (H_t + Λ)^{-1} q_t with G and H two gated linear-attention states."""

from attnzoo.ops.mesa.api import mesa_attention

__all__ = ["mesa_attention"]
