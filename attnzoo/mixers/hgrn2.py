"""HGRN2: gated linear RNN with outer-product state expansion (Qin et al. 2024, "HGRN2: Gated
Linear RNNs with State Expansion", arXiv:2404.07904).

    f_t = beta + (1 - beta) sigmoid(x_t W_f)          forget gate with lower bound beta in [0, 1)
    S_t = diag(f_t) S_{t-1} + (1 - f_t) i_tᵀ            the input gate is tied: key k_t = 1 - f_t
    o_t = q_tᵀ S_t,   q_t = SiLU(x_t W_q)                 (the output gate of HGRN, used as a query)
    y = W_o RMSNorm_h(o)

x [B, T, d_model]; q, f, k [B, T, H, head_dim] (the expanded, gated dim), i [B, T, H, head_dim]; the
gate is a vector over the key dim, so this is gated linear attention with g = log f. In HGRN the
lower bound grows with depth (a per-layer constructor argument here). State [B, H, head_dim,
head_dim]. Padded steps get f = 1 (g = 0), k = 0, i = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import HeadNorm, check_recurrent_state, mask_steps, recurrent_state_bytes
from attnzoo.mixers.base import Mixer, RecurrentState, check_heads
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register


@register(
    "hgrn2",
    card=Card(
        title="HGRN2 (gated linear RNN, outer-product state expansion, key = 1 - forget gate)",
        paper=Paper("HGRN2: Gated Linear RNNs with State Expansion", "Qin et al.", 2024, "2404.07904"),
        family="recurrent",
        complexity="O(T d^2)",
        state_bytes=lambda d_model, n_heads, seq_len, head_dim=None: recurrent_state_bytes(
            n_heads, head_dim or d_model // n_heads, head_dim or d_model // n_heads),
        example_kwargs={"n_heads": 2, "lower_bound": 0.1},
    ),
)
class HGRN2(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, lower_bound: float = 0.0,
        impl: str = "auto",
    ):
        super().__init__(d_model)
        if not 0.0 <= lower_bound < 1.0:
            raise ValueError(f"lower_bound must be in [0, 1), got {lower_bound}")
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.lower_bound = float(lower_bound)
        self.impl = impl
        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.f_proj = nn.Linear(d_model, width, bias=False)
        self.i_proj = nn.Linear(d_model, width, bias=False)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.norm = HeadNorm(n_heads, self.head_dim, kind="rms")

    def check_state(self, state):
        check_recurrent_state(state, (self.n_heads, self.head_dim, self.head_dim))

    def gates(self, x):
        """(log f, k = 1 - f), both [B, T, H, head_dim], computed without cancellation."""
        B, T, _ = x.shape
        z = self.f_proj(x).view(B, T, self.n_heads, self.head_dim)
        lb = self.lower_bound
        if lb == 0.0:
            log_f = F.logsigmoid(z)
        else:
            log_f = torch.log(lb + (1.0 - lb) * torch.sigmoid(z))
        k = (1.0 - lb) * torch.sigmoid(-z)  # = 1 - f
        return log_f, k

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q = F.silu(self.q_proj(x).view(B, T, H, D))
        log_f, k = self.gates(x)
        g, k = mask_steps(log_f, mask), mask_steps(k, mask)
        v = mask_steps(self.i_proj(x).view(B, T, H, D), mask)
        o, S = gated_linear_attention(
            q, k, v, g, scale=1.0, initial_state=None if state is None else state.S,
            output_final_state=return_state, impl=self.impl,
        )
        y = self.o_proj(self.norm(o).reshape(B, T, H * D))
        return y, (RecurrentState(S=S) if return_state else None)


    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"lower_bound={self.lower_bound}")
