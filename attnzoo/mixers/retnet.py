"""Multi-scale retention (RetNet: Sun et al. 2023, "Retentive Network: A Successor to Transformer
for Large Language Models", arXiv:2307.08621).

    S_t = gamma_h S_{t-1} + k_t v_tᵀ,   o_t = q_tᵀ S_t / sqrt(d_k),   gamma_h = 1 - 2^(-5-h), h = 0..H-1
    y = W_O ( swish(x W_G) ⊙ GroupNorm_h(o) )

x [B, T, d_model]; q, k [B, T, H, d_k] rotated by position (the xPos/RoPE rotation Θ_n = e^{inθ} of
the paper; `rope=False` turns it off), v [B, T, H, d_v] with d_v = expand_v · d_k (the paper uses 2).
GroupNorm with H groups normalises each head separately. State [B, H, d_k, d_v] plus the count of
real tokens seen (for the rotation phase). Padded steps neither decay nor write the state (their
log decay is set to 0, k and v to 0) and do not advance positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import HeadNorm, check_recurrent_state, mask_steps, recurrent_state_bytes
from attnzoo.mixers.base import Mixer, RecurrentState, check_heads
from attnzoo.mixers.layers import apply_rope, token_positions
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register


def retnet_decays(n_heads: int) -> torch.Tensor:
    """gamma_h = 1 - 2^(-5-h) for h = 0..H-1 (float64)."""
    return 1.0 - 2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float64))


@register(
    "retnet",
    card=Card(
        title="Multi-scale retention (fixed per-head decays, GroupNorm, swish gate, xPos/RoPE)",
        paper=Paper("Retentive Network: A Successor to Transformer for Large Language Models",
                    "Sun et al.", 2023, "2307.08621"),
        family="linear",
        complexity="O(T d^2)",
        state_bytes=lambda d_model, n_heads, seq_len, head_dim=None, expand_v=2: recurrent_state_bytes(
            n_heads, head_dim or d_model // n_heads, expand_v * (head_dim or d_model // n_heads)) + 8,  # + int64 step
        example_kwargs={"n_heads": 2, "expand_v": 2},
    ),
)
class RetNet(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, expand_v: int = 2,
        rope: bool = True, rope_theta: float = 10000.0, impl: str = "auto",
    ):
        super().__init__(d_model)
        if not isinstance(expand_v, int) or expand_v < 1:
            raise ValueError(f"expand_v must be a positive int, got {expand_v!r}")
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.v_dim = expand_v * self.head_dim
        self.rope = rope
        self.rope_theta = rope_theta
        self.impl = impl
        hk, hv = n_heads * self.head_dim, n_heads * self.v_dim
        self.q_proj = nn.Linear(d_model, hk, bias=False)
        self.k_proj = nn.Linear(d_model, hk, bias=False)
        self.v_proj = nn.Linear(d_model, hv, bias=False)
        self.g_proj = nn.Linear(d_model, hv, bias=False)
        self.o_proj = nn.Linear(hv, d_model, bias=False)
        self.group_norm = HeadNorm(n_heads, self.v_dim, kind="layer")

    def log_decays(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """log gamma_h [H], computed in float64 (a float32 buffer would cost float64 runs precision)."""
        return torch.log(retnet_decays(self.n_heads)).to(device=device, dtype=dtype)

    def decays(self) -> torch.Tensor:
        return retnet_decays(self.n_heads)

    def check_state(self, state):
        check_recurrent_state(state, (self.n_heads, self.head_dim, self.v_dim))
        if state.extra is None or tuple(state.extra.shape) != (state.S.shape[0],):
            raise ValueError("state.extra must hold the number of real tokens seen, shape [B]")

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, dk, dv = self.n_heads, self.head_dim, self.v_dim
        q = self.q_proj(x).view(B, T, H, dk)
        k = self.k_proj(x).view(B, T, H, dk)
        v = mask_steps(self.v_proj(x).view(B, T, H, dv), mask)
        seen = None if state is None else state.extra
        if self.rope:
            pos = token_positions(mask, B, T, seen, x.device)
            q, k = apply_rope(q, pos, self.rope_theta), apply_rope(k, pos, self.rope_theta)
        k = mask_steps(k, mask)
        log_gamma = self.log_decays(x.dtype, x.device)
        if mask is None:
            g, g_gamma = None, log_gamma
        else:
            g, g_gamma = mask_steps(log_gamma.expand(B, T, H), mask), None
        o, S = gated_linear_attention(
            q, k, v, g, g_gamma=g_gamma, scale=dk**-0.5, initial_state=None if state is None else state.S,
            output_final_state=return_state, impl=self.impl,
        )
        o = F.silu(self.g_proj(x)) * self.group_norm(o).reshape(B, T, H * dv)
        y = self.o_proj(o)
        new_state = None
        if return_state:
            n_real = torch.full((B,), T, device=x.device) if mask is None else mask.long().sum(1)
            new_state = RecurrentState(S=S, extra=n_real if seen is None else seen + n_real)
        return y, new_state


    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, v_dim={self.v_dim}, "
                f"rope={self.rope}")
