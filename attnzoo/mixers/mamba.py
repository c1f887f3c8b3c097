"""Mamba-1 selective state space mixer: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", arXiv:2312.00752.

x [B, T, d_model] -> y [B, T, d_model], with d_inner = expand · d_model channels and d_state N:

    (u, z) = in_proj(x)                              u, z [B, T, d_inner]
    u = SiLU(causal depthwise conv_{d_conv}(u))
    (δ, B, C) = x_proj(u)                            δ [dt_rank], B, C [N]   (input-dependent)
    Δ = softplus(dt_proj(δ))                         [d_inner]  (low-rank, bias = softplus⁻¹(dt₀))
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_tᵀ,       A = -exp(A_log) [d_inner, N] (S4D-real: A_n = -n)
    y_t = (h_t C_t + D ⊙ u_t) ⊙ SiLU(z_t);           out = out_proj(y)

dt₀ is log-uniform in [dt_min, dt_max] = [1e-3, 1e-1] at init. Decoding keeps `MambaState`:
the conv cache (last d_conv-1 real inputs of the conv) and the SSM state h [B, d_inner, N] (fp32).
Padded steps get Δ = 0 (h unchanged) and are skipped by the conv, so padding is invisible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, drop_padding
from attnzoo.ops.conv import causal_conv1d
from attnzoo.ops.scan import selective_scan
from attnzoo.registry import Card, Paper, register


@dataclass
class MambaState(MixerState):
    """conv [B, d_conv-1, d_inner] (last real conv inputs), ssm [B, d_inner, d_state] (fp32)."""

    conv: torch.Tensor
    ssm: torch.Tensor


def mamba_state_bytes(d_model: int, n_heads: int, seq_len: int, expand: int = 2, d_state: int = 16,
                      d_conv: int = 4) -> int:
    d_inner = expand * d_model
    return 4 * d_inner * (d_state + d_conv - 1)


MAMBA = Paper("Mamba: Linear-Time Sequence Modeling with Selective State Spaces", "Gu & Dao", 2023, "2312.00752")


@register(
    "mamba",
    card=Card(
        title="Mamba-1 selective SSM (input-dependent Δ, B, C; short conv; SiLU gate)",
        paper=MAMBA,
        family="ssm",
        complexity="O(T d N)",
        state_bytes=mamba_state_bytes,
        causal=True,
        example_kwargs={"d_state": 4, "expand": 2, "d_conv": 4, "chunk_size": 8},
    ),
)
class Mamba(Mixer):
    state_class = MambaState

    def __init__(
        self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None,
        dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4, bias: bool = False,
        conv_bias: bool = True, chunk_size: int | None = None, impl: str = "auto",
    ):
        super().__init__(d_model)
        sizes = (("d_state", d_state), ("d_conv", d_conv), ("expand", expand), ("chunk_size", chunk_size or 1))
        for name, v in sizes:
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_state, self.d_conv, self.expand = d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.chunk_size, self.impl = chunk_size, impl
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(di, d_conv).uniform_(-d_conv**-0.5, d_conv**-0.5))
        self.conv_bias = nn.Parameter(torch.zeros(di)) if conv_bias else None
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        self.dt_proj._keep_init = True        # its init sets dt (LanguageModel(init="gpt2") leaves it)
        with torch.no_grad():
            r = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-r, r)
            dt = torch.exp(torch.rand(di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp_min(dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d_model, bias=bias)

    def check_state(self, state: MambaState):
        want_c, want_s = (self.d_conv - 1, self.d_inner), (self.d_inner, self.d_state)
        if tuple(state.conv.shape[1:]) != want_c or tuple(state.ssm.shape[1:]) != want_s:
            raise ValueError(
                f"MambaState must hold conv [B, {want_c[0]}, {want_c[1]}] and ssm [B, {want_s[0]}, {want_s[1]}], "
                f"got {tuple(state.conv.shape)} and {tuple(state.ssm.shape)}"
            )

    def _forward(self, x, mask, state, return_state):
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, conv_cache = causal_conv1d(
            u, self.conv_weight, self.conv_bias, initial_state=None if state is None else state.conv, mask=mask,
            activation="silu", output_final_state=return_state,
        )
        dbc = self.x_proj(u)
        dt, Bm, Cm = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        delta = drop_padding(delta, mask)  # padded steps: h unchanged
        A = -torch.exp(self.A_log.to(delta.dtype))
        y, h = self.scan(u, delta, A, Bm, Cm, state)
        y = y * F.silu(z)
        new_state = MambaState(conv=conv_cache, ssm=h) if return_state else None
        return self.out_proj(y), new_state

    def scan(self, u, delta, A, Bm, Cm, state):
        return selective_scan(
            u, delta, A, Bm, Cm, self.D.to(u.dtype), initial_state=None if state is None else state.ssm,
            output_final_state=True, impl=self.impl, chunk_size=self.chunk_size,
        )

    def extra_repr(self):
        return f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}"
