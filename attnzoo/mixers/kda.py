"""Kimi Delta Attention (KDA): Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention
Architecture", arXiv:2510.26692.

    S_t = (I - β_t k_t k_tᵀ) Diag(α_t) S_{t-1} + β_t k_t v_tᵀ,     o_t = q_tᵀ S_t / sqrt(d_k)
    log α_t = -exp(A_log) softplus(W_α↑ W_α↓ x_t + dt_bias)          a decay per key channel (low rank)
    β_t = sigmoid(x_t W_β),   y = W_o ( RMSNorm_h(o) ⊙ sigmoid(W_g↑ W_g↓ x_t) )

The gated delta rule of Gated DeltaNet with the scalar decay α_t replaced by a vector over the key
channels (fine-grained gating), applied to the state before the delta-rule correction. Everything else
as Gated DeltaNet: q, k, v pass a short causal conv (kernel 4) and SiLU, q and k are L2-normalised per
head. The decay's low-rank projection (rank head_dim), the Mamba-2 style softplus/A_log map and the
low-rank sigmoid output gate follow Kimi Linear's KDA layer; A_log is one per head.
x [B, T, d_model]; q, k, v [B, T, H, head_dim]. State: S [B, H, head_dim, head_dim] and the conv cache.
Padded steps get log α = 0, β = 0, k = v = 0 (the state is left untouched).
Computed by ops/delta/kda.py: the chunked diagonal-plus-rank-one delta rule on torch (dplr_chunk.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.deltanet import DeltaNet, deltanet_state_bytes
from attnzoo.mixers.layers import GatedRMSNorm
from attnzoo.ops.delta.kda import kimi_delta_rule
from attnzoo.mixers.base import RecurrentState
from attnzoo.registry import Card, Paper, register


@register(
    "kda",
    card=Card(
        title="Kimi Delta Attention (gated delta rule with a decay per key channel, L2 q/k, short conv, "
              "sigmoid-gated RMSNorm)",
        paper=Paper("Kimi Linear: An Expressive, Efficient Attention Architecture", "Kimi Team (Zhang et al.)",
                    2025, "2510.26692"),
        family="linear",
        complexity="O(T d^2)",
        state_bytes=deltanet_state_bytes,
        example_kwargs={"n_heads": 2},
        claim="Channel-wise (fine-grained) forget gates on the gated delta rule let each key dimension keep its "
              "own memory horizon; a 3:1 KDA:MLA hybrid beats full attention at equal training tokens.",
    ),
)
class KimiDeltaAttention(DeltaNet):
    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, conv_kernel: int = 4,
        dt_min: float = 1e-3, dt_max: float = 0.1, impl: str = "auto",
    ):
        super().__init__(d_model, n_heads=n_heads, head_dim=head_dim, conv_kernel=conv_kernel, impl=impl)
        H, D = self.n_heads, self.head_dim
        self.f_down = nn.Linear(d_model, D, bias=False)
        self.f_up = nn.Linear(D, H * D, bias=False)
        dt = torch.exp(torch.rand(H * D) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        self.g_down = nn.Linear(d_model, D, bias=False)
        self.g_up = nn.Linear(D, H * D, bias=True)

    def build_output_norm(self):
        self.o_norm = GatedRMSNorm(self.head_dim, eps=1e-5, activation="sigmoid")

    def output_norm(self, o, x):
        B, T, _ = x.shape
        return self.o_norm(o, self.g_up(self.g_down(x)).view(B, T, self.n_heads, self.head_dim))

    def log_gate(self, x):
        """log α = -exp(A_log) softplus(x W_α↓ W_α↑ + dt_bias) [B, T, H, head_dim]."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        z = self.f_up(self.f_down(x)) + self.dt_bias.to(x.dtype)
        return -torch.exp(self.A_log.to(x.dtype))[:, None] * F.softplus(z).reshape(B, T, H, D)

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        q, k, v, beta, g, conv_cache = self.projections(x, mask, None if state is None else state.conv, return_state)
        o, S = kimi_delta_rule(q, k, v, beta, g, initial_state=None if state is None else state.S,
                               output_final_state=return_state, impl=self.impl)
        y = self.o_proj(self.output_norm(o, x).reshape(B, T, -1))
        return y, (RecurrentState(S=S, conv=conv_cache) if return_state else None)
