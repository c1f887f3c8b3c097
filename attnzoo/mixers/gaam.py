"""Gaussian Adaptive Attention (GAAM; Ioannides, Chadha, Elkins 2024, "Gaussian Adaptive Attention is
All You Need", arXiv:2401.11143).

No q·kᵀ: features are re-weighted by a product of learned Gaussians around the data's own mean.
Channels are split into H heads; per head h and Gaussian g (G of them) two parameters, a mean
offset δ_{h,g} (init 0) and a scale c_{h,g} (init N(0, 1)), so 2·G·H parameters in all:

    z_g = (x − (μ + δ_g)) / σ,     N_g = exp(−z_g² / (2 c_g²)) / sqrt(2π c_g²),     M = Π_g N_g
    y = x ⊙ M / norm(M)

x [B, T, d_model] -> y [B, T, d_model], computed in log space (log M = Σ_g log N_g).
- axis="sequence" (the mixer, registered as `gaam`): μ_t, σ²_t (+ eps 1e-8) are per-channel running
  statistics over the real tokens up to t, and norm(M)_t = mean_{s<=t} M_s (the causal form of the
  paper's normalisation along the axis; the mean rather than the sum keeps the scale independent of
  t). Causal, with a fixed-size decode state (count, Σx, Σx², log Σ M per channel).
- axis="feature" (the feature re-weighting block): μ, σ² over each head's channel chunk of one
  token, norm(M) = Σ_chunk M as in the paper. Token-wise, so also causal; its state only counts.
Padded tokens pass through unchanged and never enter the statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.registry import Card, Paper, register

AXES = ("sequence", "feature")


@dataclass
class GaussianStatsState(MixerState):
    """Running per-channel statistics over real tokens: n [B, 1], s1, s2, log_msum [B, C] (fp32/fp64)."""

    n: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    log_msum: torch.Tensor


def log_gaussian_product(x, mu, var, delta, c):
    """log Π_g N_g for x, mu, var [..., H, Dh] and delta, c [H, G] -> [..., H, Dh]."""
    sigma = var.sqrt()[..., None]  # [..., H, Dh, 1]
    z = (x[..., None] - mu[..., None] - delta[:, None, :]) / sigma
    c2 = (c * c)[:, None, :]
    return (-z.pow(2) / (2 * c2) - 0.5 * torch.log(2 * math.pi * c2)).sum(-1)


class GaussianAdaptiveAttention(Mixer):
    state_class = GaussianStatsState

    def __init__(self, d_model: int, *, n_heads: int = 4, n_gaussians: int = 4, axis: str = "sequence",
                 eps: float = 1e-8):
        super().__init__(d_model)
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        if n_gaussians < 1:
            raise ValueError(f"n_gaussians must be >= 1, got {n_gaussians}")
        self.n_heads, self.head_dim = n_heads, check_heads(d_model, n_heads)
        self.n_gaussians, self.axis, self.eps = n_gaussians, axis, eps
        self.delta = nn.Parameter(torch.zeros(n_heads, n_gaussians))
        self.c = nn.Parameter(torch.randn(n_heads, n_gaussians))

    def check_state(self, state):
        if state.s1.shape[-1] != self.d_model:
            raise ValueError(f"GAAM state must hold [B, {self.d_model}] statistics, got {tuple(state.s1.shape)}")

    def _forward(self, x, mask, state, return_state):
        B, T, C = x.shape
        H, Dh = self.n_heads, self.head_dim
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(ct)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        w = real.to(ct)[..., None]
        delta, c = self.delta.to(ct), self.c.to(ct)
        if state is None:
            state = GaussianStatsState(
                n=xf.new_zeros(B, 1), s1=xf.new_zeros(B, C), s2=xf.new_zeros(B, C),
                log_msum=xf.new_full((B, C), float("-inf")),
            )
        if self.axis == "feature":
            xh = xf.view(B, T, H, Dh)
            mu = xh.mean(-1, keepdim=True).expand_as(xh)
            var = xh.var(-1, unbiased=False, keepdim=True).expand_as(xh) + self.eps
            logm = log_gaussian_product(xh, mu, var, delta, c)
            weight = torch.softmax(logm, -1).reshape(B, T, C)  # M / Σ_chunk M
            new_state = GaussianStatsState(n=state.n + w.sum(1), s1=state.s1, s2=state.s2, log_msum=state.log_msum)
        else:
            n = state.n[:, None] + torch.cumsum(w, 1)  # [B, T, 1]
            s1 = state.s1[:, None] + torch.cumsum(xf * w, 1)
            s2 = state.s2[:, None] + torch.cumsum(xf * xf * w, 1)
            nn_ = n.clamp_min(1)
            mu = s1 / nn_
            var = (s2 / nn_ - mu * mu).clamp_min(0) + self.eps
            logm = log_gaussian_product(xf.view(B, T, H, Dh), mu.view(B, T, H, Dh), var.view(B, T, H, Dh), delta, c)
            logm = logm.reshape(B, T, C)
            lm_real = torch.where(real[..., None], logm, torch.full_like(logm, float("-inf")))
            lse = torch.logcumsumexp(torch.cat([state.log_msum[:, None], lm_real], 1), 1)[:, 1:]
            weight = torch.exp(logm - (lse - torch.log(nn_)))  # M_t / mean_{s<=t} M_s
            new_state = GaussianStatsState(n=n[:, -1], s1=s1[:, -1], s2=s2[:, -1], log_msum=lse[:, -1])
        y = torch.where(real[..., None], xf * weight, xf).to(x.dtype)
        return y, (new_state if return_state else None)

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, n_gaussians={self.n_gaussians}, axis={self.axis!r}"


class GaussianBlock(nn.Module):
    """Stacked GAAM layers with residuals, x <- GAAM_l(x) + x; each layer (axis, n_heads, n_gaussians)."""

    def __init__(self, d_model: int, *, layers=(("feature", 4, 4),)):
        super().__init__()
        self.layers = nn.ModuleList(
            GaussianAdaptiveAttention(d_model, axis=a, n_heads=h, n_gaussians=g) for a, h, g in layers
        )

    def forward(self, x, *, mask=None):
        for layer in self.layers:
            x = layer(x, mask=mask) + x
        return x


@register(
    "gaam",
    card=Card(
        title="Gaussian adaptive attention (causal running statistics, density re-weighting)",
        paper=Paper("Gaussian Adaptive Attention is All You Need", "Ioannides et al.", 2024, "2401.11143"),
        family="pooling",
        complexity="O(T d G)",
        state_bytes=lambda d_model, n_heads, seq_len: 4 * (3 * d_model + 1),
        causal=True,
        example_kwargs={"n_heads": 4, "n_gaussians": 2},
    ),
)
class GAAM(GaussianAdaptiveAttention):
    """GAAM as a causal token mixer (axis="sequence" by default); see the module docstring."""
