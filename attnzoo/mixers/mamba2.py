"""Mamba-2 (SSD: Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", arXiv:2405.21060), computed as gated linear attention with
a scalar gate per head.

    [z, xBC, dt] = x W_in;   [x, B, C] = SiLU(conv1d(xBC))            (short causal conv, kernel 4)
    Delta_t = softplus(dt_t + dt_bias),   a_t = -exp(A_log) Delta_t        (log decay, scalar per head)
    S_t = exp(a_t) S_{t-1} + B_t (Delta_t x_t)ᵀ,   y_t = C_tᵀ S_t + D ⊙ x_t
    out = W_out RMSNorm(y ⊙ SiLU(z))                              (gated RMSNorm, norm after the gate)

x [B, T, d_model]; d_inner = expand · d_model split into H = d_inner / head_dim heads of head_dim P;
B_t, C_t [d_state] shared by all heads (one group). So q = C, k = B, v = Delta·x, g = a in
`gated_linear_attention`. State: S [B, H, d_state, P] and the conv cache [B, 3, d_inner + 2 d_state].
Padded steps are skipped by the conv and get a = 0, k = v = 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import check_recurrent_state, mask_steps, recurrent_state_bytes
from attnzoo.mixers.base import Mixer, RecurrentState
from attnzoo.mixers.layers import RMSNorm
from attnzoo.mixers.short_conv import ShortConv
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register


def mamba2_state_bytes(d_model: int, n_heads: int, seq_len: int, expand: int = 2, d_state: int = 64,
                       conv_kernel: int = 4) -> int:
    """S [d_inner / head_dim heads, d_state, head_dim] (d_state · d_inner values) plus the x/B/C conv cache."""
    d_inner = expand * d_model
    return recurrent_state_bytes(1, d_state, d_inner, conv_channels=d_inner + 2 * d_state, conv_kernel=conv_kernel)


@register(
    "mamba2",
    card=Card(
        title="Mamba-2 (SSD: scalar data-dependent decay, short conv on x/B/C, D skip, gated RMSNorm)",
        paper=Paper("Transformers are SSMs: Generalized Models and Efficient Algorithms Through "
                    "Structured State Space Duality", "Dao & Gu", 2024, "2405.21060"),
        family="ssm",
        complexity="O(T d N)",
        state_bytes=mamba2_state_bytes,
        example_kwargs={"head_dim": 16, "d_state": 8},
    ),
)
class Mamba2(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, expand: int = 2, head_dim: int = 64, d_state: int = 64, conv_kernel: int = 4,
        dt_min: float = 1e-3, dt_max: float = 0.1, impl: str = "auto",
    ):
        super().__init__(d_model)
        self.d_inner = expand * d_model
        if head_dim <= 0 or self.d_inner % head_dim:
            raise ValueError(f"d_inner = expand * d_model = {self.d_inner} must be divisible by head_dim={head_dim}")
        if d_state <= 0:
            raise ValueError(f"d_state must be positive, got {d_state}")
        self.head_dim, self.d_state = head_dim, d_state
        self.n_heads = self.d_inner // head_dim
        self.impl = impl
        H, N = self.n_heads, d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * N + H, bias=False)
        self.conv = ShortConv(self.d_inner + 2 * N, kernel_size=conv_kernel, activation="silu", bias=True)
        # dt_bias: softplus(dt_bias) log-uniform in [dt_min, dt_max]; A = -exp(A_log) uniform in [1, 16]
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = RMSNorm(self.d_inner, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def check_state(self, state):
        check_recurrent_state(state, (self.n_heads, self.d_state, self.head_dim), conv=self.conv)

    def log_decay(self, dt_raw):
        """a = -exp(A_log) softplus(dt + dt_bias) and Delta = softplus(dt + dt_bias), both [B, T, H]."""
        delta = F.softplus(dt_raw + self.dt_bias.to(dt_raw.dtype))
        return -torch.exp(self.A_log.to(dt_raw.dtype)) * delta, delta

    def ssd_inputs(self, x, mask, conv_state, return_state):
        """The SSD's operands from x: (z [B, T, d_inner] the output gate's input, xs [B, T, H, P], q, k
        [B, T, H, N] (C and B shared by the heads), v = xs * Delta, g the log decay [B, T, H] (padded
        steps: k, v, g zero), the conv cache)."""
        Bsz, T, _ = x.shape
        H, P, N, di = self.n_heads, self.head_dim, self.d_state, self.d_inner
        z, xbc, dt_raw = self.in_proj(x).split([di, di + 2 * N, H], -1)
        xbc, conv_cache = self.conv(xbc, mask=mask, cache=conv_state, output_cache=return_state)
        xs, b, c = xbc.split([di, N, N], -1)
        xs = xs.reshape(Bsz, T, H, P)
        g, delta = self.log_decay(dt_raw)
        k = mask_steps(b, mask)[:, :, None, :].expand(Bsz, T, H, N)
        q = c[:, :, None, :].expand(Bsz, T, H, N)
        v = mask_steps(xs * delta[..., None], mask)
        return z, xs, q, k, v, mask_steps(g, mask), conv_cache

    def readout(self, o, xs, z, dtype):
        """y = out_proj(norm((o + D xs) * silu(z))), o [B, T, H, P] the SSD's output; D in `dtype` (the
        input's)."""
        y = (o + self.D.to(dtype)[:, None] * xs).reshape(*xs.shape[:2], self.d_inner)
        return self.out_proj(self.norm(y * F.silu(z)))

    def _forward(self, x, mask, state, return_state):
        z, xs, q, k, v, g, conv_cache = self.ssd_inputs(x, mask, None if state is None else state.conv,
                                                        return_state)
        o, S = gated_linear_attention(
            q, k, v, g, scale=1.0, initial_state=None if state is None else state.S,
            output_final_state=return_state, impl=self.impl,
        )
        y = self.readout(o, xs, z, x.dtype)
        return y, (RecurrentState(S=S, conv=conv_cache) if return_state else None)


    def extra_repr(self):
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, n_heads={self.n_heads}, "
                f"head_dim={self.head_dim}, d_state={self.d_state}")
