"""Gated DeltaProduct (Siems, Carstensen, Zela, Hutter, Pontil & Grazzi 2025, "DeltaProduct: Improving
State-Tracking in Linear RNNs via Householder Products", arXiv:2502.10297).

    S_t = α_t A_t S_{t-1} + B_t,   A_t = Π_{j=n_h..1} (I - β_{t,j} k_{t,j} k_{t,j}ᵀ)     (n_h Householder steps)
    i.e. n_h delta-rule steps per token, each with its own key k_{t,j}, value v_{t,j} and β_{t,j}
    o_t = q_tᵀ S_t / sqrt(d_k),   α_t = exp(g_t), g_t = -exp(A_log) softplus(x_t W_a + dt_bias)
    y = W_o ( RMSNorm_h(o) ⊙ SiLU(x W_g) )

Everything else as Gated DeltaNet (`gated_deltanet.py`; n_h = 1 is exactly it): q, k, v pass a short
causal conv (kernel 4, over the token sequence, all n_h keys and values of a token as channels) and
SiLU; q and each key are L2-normalised per head; β_{t,j} = sigmoid(x_t W_β)_j, times 2 with
`allow_neg_eigval=True` (β in (0, 2): the Householder factors may have eigenvalue -1 < 1 - β < 0, what
the paper uses for state tracking). x [B, T, d_model]; q [B, T, H, head_dim], k, v [B, T, H, n_h, head_dim].
State: S [B, H, head_dim, head_dim] and the conv cache ((1 + 2 n_h)·H·head_dim channels).
Padded steps get g = 0, β = 0, k = v = 0. Computed by ops/delta/product.py (the delta rule over n_h·T
micro-steps: chunked on CPU, Triton on CUDA).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.mixers._linear_common import l2_normalize, mask_steps, recurrent_state_bytes
from attnzoo.mixers.base import RecurrentState
from attnzoo.mixers.gated_deltanet import GatedDeltaNet
from attnzoo.mixers.short_conv import ShortConv
from attnzoo.ops.delta.product import delta_product
from attnzoo.registry import Card, Paper, register


def deltaproduct_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                             n_householder: int = 2, conv_kernel: int = 4) -> int:
    """S [H, head_dim, head_dim] plus the short-conv cache of q and the n_h keys and values."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return recurrent_state_bytes(n_heads, hd, hd, conv_channels=(1 + 2 * n_householder) * n_heads * hd,
                                 conv_kernel=conv_kernel)


@register(
    "gated_deltaproduct",
    card=Card(
        title="Gated DeltaProduct (n_h delta-rule / Householder steps per token, Mamba-2 style gate, L2 q/k, "
              "short conv, gated RMSNorm)",
        paper=Paper("DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products",
                    "Siems et al.", 2025, "2502.10297"),
        family="linear",
        complexity="O(T n_h d^2)",
        state_bytes=deltaproduct_state_bytes,
        example_kwargs={"n_heads": 2, "n_householder": 2},
        claim="A product of n_h generalised Householder transitions per token (n_h delta-rule steps) makes the "
              "state transition more expressive than DeltaNet's rank-one update: better state tracking and "
              "length extrapolation as n_h grows, at n_h times the recurrence cost.",
    ),
)
class GatedDeltaProduct(GatedDeltaNet):
    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, n_householder: int = 2,
        allow_neg_eigval: bool = False, conv_kernel: int = 4, dt_min: float = 1e-3, dt_max: float = 0.1,
        impl: str = "auto",
    ):
        if isinstance(n_householder, bool) or not isinstance(n_householder, int) or n_householder < 1:
            raise ValueError(f"n_householder must be a positive int, got {n_householder!r}")
        super().__init__(d_model, n_heads=n_heads, head_dim=head_dim, conv_kernel=conv_kernel, dt_min=dt_min,
                         dt_max=dt_max, impl=impl)
        self.n_householder = n_householder
        self.allow_neg_eigval = bool(allow_neg_eigval)
        width, n = self.n_heads * self.head_dim, n_householder
        self.k_proj = nn.Linear(d_model, n * width, bias=False)
        self.v_proj = nn.Linear(d_model, n * width, bias=False)
        self.b_proj = nn.Linear(d_model, n * self.n_heads, bias=True)
        self.conv = ShortConv((1 + 2 * n) * width, kernel_size=conv_kernel, activation="silu")

    def projections(self, x, mask=None, conv_cache=None, output_cache=False):
        """(q [B, T, H, D], k, v [B, T, H, n_h, D], beta [B, T, H, n_h], g [B, T, H], conv_cache), padding zeroed."""
        B, T, _ = x.shape
        H, D, n = self.n_heads, self.head_dim, self.n_householder
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)
        qkv, conv_cache = self.conv(qkv, mask=mask, cache=conv_cache, output_cache=output_cache)
        q, k, v = qkv.split([H * D, n * H * D, n * H * D], -1)
        q = l2_normalize(q.reshape(B, T, H, D))
        k = mask_steps(l2_normalize(k.reshape(B, T, n, H, D).transpose(2, 3)), mask)
        v = mask_steps(v.reshape(B, T, n, H, D).transpose(2, 3), mask)
        beta = torch.sigmoid(self.b_proj(x)).view(B, T, n, H).transpose(2, 3)
        beta = mask_steps(2.0 * beta if self.allow_neg_eigval else beta, mask)
        g = mask_steps(self.log_gate(x), mask)
        return q, k, v, beta, g, conv_cache

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        q, k, v, beta, g, conv_cache = self.projections(x, mask, None if state is None else state.conv, return_state)
        o, S = delta_product(q, k, v, beta, g, initial_state=None if state is None else state.S,
                             output_final_state=return_state, impl=self.impl)
        y = self.o_proj(self.output_norm(o, x).reshape(B, T, -1))
        return y, (RecurrentState(S=S, conv=conv_cache) if return_state else None)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"n_householder={self.n_householder}, allow_neg_eigval={self.allow_neg_eigval}")
