"""Gated linear attention (GLA: Yang et al. 2023, "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635).

    S_t = diag(alpha_t) S_{t-1} + k_t v_tᵀ,   o_t = q_tᵀ S_t / sqrt(d_k)
    log alpha_t = logsigmoid(x_t W_1 W_2 + b) / tau             (low rank 16, tau = 16)
    y = W_O ( swish(x W_r + b_r) ⊙ GroupNorm_h(o) )

x [B, T, d_model]; q, k [B, T, H, d_k] with H·d_k = expand_k · d_model (paper: 0.5), v [B, T, H, d_v]
with H·d_v = expand_v · d_model (paper: 1). The gate is a data-dependent vector over the key dim
[B, T, H, d_k]. State [B, H, d_k, d_v]. Padded steps get log alpha = 0 and k = v = 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import HeadNorm, check_recurrent_state, mask_steps, recurrent_state_bytes
from attnzoo.mixers.base import Mixer, RecurrentState
from attnzoo.mixers.layers import AlignedLinear
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register


def _split(width: float, n_heads: int, what: str) -> int:
    w = int(width)
    if w != width or w <= 0 or w % n_heads:
        raise ValueError(f"{what} width {width} must be a positive int divisible by n_heads={n_heads}")
    return w // n_heads


@register(
    "gla",
    card=Card(
        title="Gated linear attention (low-rank vector forget gate, swish output gate, GroupNorm)",
        paper=Paper("Gated Linear Attention Transformers with Hardware-Efficient Training",
                    "Yang et al.", 2023, "2312.06635"),
        family="linear",
        complexity="O(T d^2)",
        state_bytes=lambda d_model, n_heads, seq_len, expand_k=0.5, expand_v=1.0: recurrent_state_bytes(
            n_heads, int(d_model * expand_k) // n_heads, int(d_model * expand_v) // n_heads),
        example_kwargs={"n_heads": 2, "gate_rank": 4},
    ),
)
class GatedLinearAttention(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0,
        gate_rank: int = 16, gate_tau: float = 16.0, impl: str = "auto",
    ):
        super().__init__(d_model)
        if n_heads <= 0:
            raise ValueError(f"n_heads must be positive, got {n_heads}")
        if gate_tau <= 0 or gate_rank <= 0:
            raise ValueError(f"gate_tau and gate_rank must be positive, got {gate_tau}, {gate_rank}")
        self.n_heads = n_heads
        self.key_dim = _split(d_model * expand_k, n_heads, "key (d_model * expand_k)")
        self.value_dim = _split(d_model * expand_v, n_heads, "value (d_model * expand_v)")
        self.gate_tau = gate_tau
        self.impl = impl
        hk, hv = n_heads * self.key_dim, n_heads * self.value_dim
        self.q_proj = nn.Linear(d_model, hk, bias=False)
        self.k_proj = nn.Linear(d_model, hk, bias=False)
        self.v_proj = nn.Linear(d_model, hv, bias=False)
        self.gk_down = AlignedLinear(d_model, gate_rank, bias=False)
        self.gk_up = AlignedLinear(gate_rank, hk, bias=True)
        self.r_proj = nn.Linear(d_model, hv, bias=True)
        self.o_proj = nn.Linear(hv, d_model, bias=False)
        self.group_norm = HeadNorm(n_heads, self.value_dim, kind="layer")

    def check_state(self, state):
        check_recurrent_state(state, (self.n_heads, self.key_dim, self.value_dim))

    def log_gate(self, x):
        """log alpha [B, T, H, d_k] = logsigmoid(x W_1 W_2 + b) / tau."""
        B, T, _ = x.shape
        return (F.logsigmoid(self.gk_up(self.gk_down(x))) / self.gate_tau).view(B, T, self.n_heads, self.key_dim)

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, dk, dv = self.n_heads, self.key_dim, self.value_dim
        q = self.q_proj(x).view(B, T, H, dk)
        k = mask_steps(self.k_proj(x).view(B, T, H, dk), mask)
        v = mask_steps(self.v_proj(x).view(B, T, H, dv), mask)
        g = mask_steps(self.log_gate(x), mask)
        o, S = gated_linear_attention(
            q, k, v, g, scale=dk**-0.5, initial_state=None if state is None else state.S,
            output_final_state=return_state, impl=self.impl,
        )
        y = self.o_proj(F.silu(self.r_proj(x)) * self.group_norm(o).reshape(B, T, H * dv))
        return y, (RecurrentState(S=S) if return_state else None)


    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}"
