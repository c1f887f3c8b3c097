"""Linear attention with a kernel feature map (Katharopoulos et al. 2020, "Transformers are RNNs",
arXiv:2006.16236).

    S_t = S_{t-1} + phi(k_t) v_tᵀ,  z_t = z_{t-1} + phi(k_t)
    o_t = phi(q_t)ᵀ S_t / (phi(q_t)ᵀ z_t + eps)          (normalize=True)
    o_t = scale · phi(q_t)ᵀ S_t                          (normalize=False, scale = F^{-1/2})

x [B, T, d_model] -> q, k [B, T, H, head_dim], v [B, T, H, head_dim]; phi maps the head_dim of q and
k to F features: identity, elu+1 (the paper's choice), relu, or the 2nd-order Taylor map of Based
(F = 1 + d + d^2, phi(q)·phi(k) = 1 + q·k/√d + (q·k)²/2d). State [B, H, F, head_dim (+1 when
normalized: the last column is z)], constant in T. Padded steps get phi(k) = 0 and v = 0.
"""

from __future__ import annotations

from torch import nn

from attnzoo.mixers._linear_common import (
    FEATURE_MAPS,
    check_recurrent_state,
    feature_dim,
    feature_map,
    mask_steps,
    recurrent_state_bytes,
)
from attnzoo.mixers.base import Mixer, RecurrentState, check_heads
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register

KATHAROPOULOS = Paper("Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
                      "Katharopoulos et al.", 2020, "2006.16236")


def linear_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                       feature_map: str = "elu", normalize: bool = True) -> int:
    """S [H, F, head_dim (+1: the normaliser z)], F = feature_dim(feature_map, head_dim)."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return recurrent_state_bytes(n_heads, feature_dim(feature_map, hd), hd + (1 if normalize else 0))


@register(
    "linear",
    card=Card(
        title="Linear attention (feature maps: identity, elu+1, relu, Taylor-2; optional normalizer)",
        paper=KATHAROPOULOS,
        family="linear",
        complexity="O(T d^2)",
        state_bytes=linear_state_bytes,
        example_kwargs={"n_heads": 2, "feature_map": "elu", "normalize": True},
    ),
)
class LinearAttention(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, feature_map: str = "elu",
        normalize: bool = True, impl: str = "auto",
    ):
        super().__init__(d_model)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.feature_map = feature_map
        self.normalize = normalize
        self.impl = impl
        self.n_features = feature_dim(feature_map, self.head_dim)
        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.o_proj = nn.Linear(width, d_model, bias=False)

    def state_shape(self) -> tuple:
        return (self.n_heads, self.n_features, self.head_dim + (1 if self.normalize else 0))

    def check_state(self, state):
        check_recurrent_state(state, self.state_shape())

    def features(self, x, mask=None):
        """(phi(q), phi(k), v) as [B, T, H, F], [B, T, H, F], [B, T, H, head_dim]; padded steps zeroed."""
        B, T, _ = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        q = feature_map(self.q_proj(x).view(shape), self.feature_map)
        k = mask_steps(feature_map(self.k_proj(x).view(shape), self.feature_map), mask)
        v = mask_steps(self.v_proj(x).view(shape), mask)
        return q, k, v

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        q, k, v = self.features(x, mask)
        scale = 1.0 if self.normalize else self.n_features**-0.5
        o, S = gated_linear_attention(
            q, k, v, scale=scale, initial_state=None if state is None else state.S,
            output_final_state=return_state, normalize=self.normalize, impl=self.impl,
        )
        y = self.o_proj(o.reshape(B, T, -1))
        return y, (RecurrentState(S=S) if return_state else None)


    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"feature_map={self.feature_map}, normalize={self.normalize}")
