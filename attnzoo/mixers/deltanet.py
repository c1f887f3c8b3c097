"""DeltaNet: linear attention with the delta rule (Schlag et al. 2021, "Linear Transformers Are
Secretly Fast Weight Programmers", arXiv:2102.11174; Yang et al. 2024, "Parallelizing Linear
Transformers with the Delta Rule over Sequence Length", arXiv:2406.06484).

    S_t = (I - beta_t k_t k_tᵀ) S_{t-1} + beta_t k_t v_tᵀ = S_{t-1} + beta_t k_t (v_t - S_{t-1}ᵀ k_t)ᵀ
    o_t = q_tᵀ S_t / sqrt(d_k),     y = W_o RMSNorm_h(o)

x [B, T, d_model]; q, k, v [B, T, H, head_dim] each pass a short causal depthwise conv (kernel 4)
and SiLU; q and k are then L2-normalised per head; beta_t = sigmoid(x_t W_beta) [B, T, H].
State: S [B, H, head_dim, head_dim] and the conv cache [B, 3, 3·H·head_dim]. Padded steps are
skipped by the conv and get beta = 0, k = v = 0 (the state is left untouched).
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.mixers._linear_common import (
    check_recurrent_state,
    l2_normalize,
    mask_steps,
    recurrent_state_bytes,
)
from attnzoo.mixers.base import Mixer, RecurrentState, check_heads
from attnzoo.mixers.layers import AlignedLinear, RMSNorm
from attnzoo.mixers.short_conv import ShortConv
from attnzoo.ops.delta import delta_rule
from attnzoo.registry import Card, Paper, register


def deltanet_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                         conv_kernel: int = 4) -> int:
    """S [H, head_dim, head_dim] plus the q/k/v short-conv cache (3·H·head_dim channels)."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return recurrent_state_bytes(n_heads, hd, hd, conv_channels=3 * n_heads * hd, conv_kernel=conv_kernel)


@register(
    "deltanet",
    card=Card(
        title="DeltaNet (delta rule of Schlag et al. 2021; L2-normalised q/k, sigmoid beta, short conv, RMSNorm)",
        paper=Paper("Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
                    "Yang et al.", 2024, "2406.06484"),
        family="linear",
        complexity="O(T d^2)",
        state_bytes=deltanet_state_bytes,
        example_kwargs={"n_heads": 2},
    ),
)
class DeltaNet(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, conv_kernel: int = 4,
        impl: str = "auto",
    ):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.impl = impl
        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.b_proj = AlignedLinear(d_model, n_heads, bias=True)
        self.conv = ShortConv(3 * width, kernel_size=conv_kernel, activation="silu")
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.build_output_norm()

    def build_output_norm(self):
        self.o_norm = RMSNorm(self.head_dim, eps=1e-5)

    def output_norm(self, o, x):
        return self.o_norm(o)

    def log_gate(self, x):
        """Scalar log decay per head [B, T, H]; None: DeltaNet does not forget."""
        return

    def check_state(self, state):
        check_recurrent_state(state, (self.n_heads, self.head_dim, self.head_dim), conv=self.conv)

    def projections(self, x, mask=None, conv_cache=None, output_cache=False):
        """(q, k, v, beta, g, conv_cache): the inputs of the delta rule, padded steps zeroed."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)
        qkv, conv_cache = self.conv(qkv, mask=mask, cache=conv_cache, output_cache=output_cache)
        q, k, v = qkv.view(B, T, H, 3 * D).split([D, D, D], -1)
        q, k = l2_normalize(q), mask_steps(l2_normalize(k), mask)
        v = mask_steps(v, mask)
        beta = mask_steps(torch.sigmoid(self.b_proj(x)), mask)
        g = mask_steps(self.log_gate(x), mask)
        return q, k, v, beta, g, conv_cache

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        q, k, v, beta, g, conv_cache = self.projections(
            x, mask, None if state is None else state.conv, return_state)
        o, S = delta_rule(
            q, k, v, beta, g, initial_state=None if state is None else state.S,
            output_final_state=return_state, impl=self.impl,
        )
        y = self.o_proj(self.output_norm(o, x).reshape(B, T, -1))
        return y, (RecurrentState(S=S, conv=conv_cache) if return_state else None)


    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}"
