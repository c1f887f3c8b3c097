"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with
Delta Rule", arXiv:2412.06464).

    S_t = alpha_t (I - beta_t k_t k_tᵀ) S_{t-1} + beta_t k_t v_tᵀ,    o_t = q_tᵀ S_t / sqrt(d_k)
    alpha_t = exp(g_t),  g_t = -exp(A_log) softplus(x_t W_a + dt_bias)      (the Mamba-2 gate)
    y = W_o ( RMSNorm_h(o) ⊙ SiLU(x W_g) )                                  (gated RMSNorm)

Everything else as DeltaNet (`deltanet.py`): short conv + SiLU on q, k, v, L2-normalised q/k,
beta = sigmoid(x W_beta). With alpha = 1 (g = 0) it is exactly DeltaNet's recurrence.
x [B, T, d_model]; q, k, v [B, T, H, head_dim]; state S [B, H, head_dim, head_dim] + conv cache.
Padded steps get g = 0, beta = 0, k = v = 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.deltanet import DeltaNet, deltanet_state_bytes
from attnzoo.mixers.layers import AlignedLinear, GatedRMSNorm
from attnzoo.registry import Card, Paper, register


@register(
    "gated_deltanet",
    card=Card(
        title="Gated DeltaNet (delta rule with Mamba-2 style decay, L2 q/k, short conv, gated RMSNorm)",
        paper=Paper("Gated Delta Networks: Improving Mamba2 with Delta Rule", "Yang, Kautz & Hatamizadeh",
                    2024, "2412.06464"),
        family="linear",
        complexity="O(T d^2)",
        state_bytes=deltanet_state_bytes,
        example_kwargs={"n_heads": 2},
    ),
)
class GatedDeltaNet(DeltaNet):
    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, conv_kernel: int = 4,
        dt_min: float = 1e-3, dt_max: float = 0.1, impl: str = "auto",
    ):
        super().__init__(d_model, n_heads=n_heads, head_dim=head_dim, conv_kernel=conv_kernel, impl=impl)
        H = self.n_heads
        self.a_proj = AlignedLinear(d_model, H, bias=False)
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        self.g_proj = nn.Linear(d_model, H * self.head_dim, bias=False)

    def build_output_norm(self):
        self.o_norm = GatedRMSNorm(self.head_dim, eps=1e-5, activation="silu")

    def output_norm(self, o, x):
        B, T, _ = x.shape
        return self.o_norm(o, self.g_proj(x).view(B, T, self.n_heads, self.head_dim))

    def log_gate(self, x):
        """g = -exp(A_log) softplus(x W_a + dt_bias) [B, T, H] (alpha = exp(g))."""
        a = self.a_proj(x)
        return -torch.exp(self.A_log.to(a.dtype)) * F.softplus(a + self.dt_bias.to(a.dtype))
