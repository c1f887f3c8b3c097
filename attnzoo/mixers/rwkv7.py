"""RWKV-7 "Goose" time mixing: Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution",
arXiv:2503.14456.

x [B, T, d_model] -> y [B, T, d_model]; H heads of size K (= V = d_model / H). Token shift (x_{-1} = 0 at a
sequence start), one learned interpolation per branch, and low-rank MLPs loramlp(f, x) = f(x A) B (+ λ):

    x^□_t = x_t + (x_{t-1} - x_t) ⊙ μ_□                       □ ∈ {r, d, k, v, a, g}
    r, k, v = x^r W_r, x^k W_k, x^v W_v
    a_t = sigmoid(λ_a + x^a A_a B_a)                           in-context learning rate, a vector
    w_t = exp(-e^{-0.5} sigmoid(λ_d + tanh(x^d A_d) B_d))      decay per channel, in (0.545, 1)
    g_t = sigmoid(x^g A_g) B_g                                 output gate
    κ̂_t = normalize_h(k_t ⊙ ξ),   k̃_t = k_t ⊙ (1 + (a_t - 1) ⊙ α)     removal key, replacement key

The generalised delta rule (the paper's wkv_t = wkv_{t-1} (diag(w_t) - κ̂_tᵀ (a_t ⊙ κ̂_t)) + v_tᵀ k̃_t, written
here for S = wkvᵀ [K, V]) and the read-out with the bonus ρ for the current token:

    S_t = (diag(w_t) - (a_t ⊙ κ̂_t) κ̂_tᵀ) S_{t-1} + k̃_t v_tᵀ
    p_t = GroupNorm_H(r_tᵀ S_t) + (Σ_head r_t ⊙ ρ ⊙ k̃_t) v_t,      y_t = (g_t ⊙ p_t) W_o

Computed by the chunked diagonal-plus-rank-one delta rule (ops/delta/dplr_chunk.py: a = -(a ⊙ κ̂), b = κ̂,
keys k̃, log decay log w, query r, scale 1). Decoding keeps `RWKV7State`: S [B, H, K, V] (fp32) and the last
real token (the shift cache). With a mask, real tokens are compacted to the front (the shift sees the previous
real token) and padded steps carry a zero transition update (w = 1, κ̂ = k̃ = v = 0).
Left out (cross-layer or outside the time mix): the value residual (v_t mixed with the first layer's value
through ν_t: a single mixer has no first layer; here ν = 0), the channel-mixing block (the model's MLP takes
that place) and the official initialisation, for which ours is a simple stand-in (decay biases spread over
[-6, 2], μ from a channel ramp, ξ = 1, α = 1, small random low-rank factors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads, drop_padding
from attnzoo.ops.conv.padding import real_tokens_first, restore_token_order
from attnzoo.ops.delta.dplr import dplr_delta_rule
from attnzoo.registry import Card, Paper, register

BRANCHES = ("r", "d", "k", "v", "a", "g")


@dataclass
class RWKV7State(MixerState):
    """S [B, H, K, V] (fp32 wkv state, transposed), shift [B, d_model] (the last real input token)."""

    S: torch.Tensor
    shift: torch.Tensor


def rwkv7_state_bytes(d_model: int, n_heads: int, seq_len: int) -> int:
    head = d_model // max(n_heads, 1)
    return 4 * (n_heads * head * head + d_model)


def _low_rank(d: int, rank: int, out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """The two factors of a low-rank map d -> rank -> out, small and random (the paths are live at init)."""
    A, B = torch.empty(d, rank).uniform_(-0.1, 0.1), torch.empty(rank, out).uniform_(-0.1, 0.1)
    return nn.Parameter(A), nn.Parameter(B)


@register(
    "rwkv7",
    card=Card(
        title="RWKV-7 Goose time mixing (generalised delta rule: vector decay and in-context learning rate, "
              "removal / replacement keys, bonus)",
        paper=Paper('RWKV-7 "Goose" with Expressive Dynamic State Evolution', "Peng et al.", 2025, "2503.14456"),
        family="recurrent",
        complexity="O(T d K)",
        state_bytes=rwkv7_state_bytes,
        example_kwargs={"n_heads": 2, "decay_rank": 8, "iclr_rank": 8, "gate_rank": 8},
        claim="A generalised delta rule with vector-valued decay and in-context learning rate and a relaxed value "
              "replacement lets a constant-memory RNN track state beyond TC0 (all regular languages) and match "
              "3B Transformers on multilingual benchmarks with fewer training tokens.",
    ),
)
class RWKV7(Mixer):
    state_class = RWKV7State

    def __init__(self, d_model: int, *, n_heads: int = 4, decay_rank: int = 64, iclr_rank: int = 64,
                 gate_rank: int = 128, impl: str = "auto"):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads)
        if min(decay_rank, iclr_rank, gate_rank) < 1:
            raise ValueError(f"decay_rank, iclr_rank and gate_rank must be >= 1, got {decay_rank}, {iclr_rank}, "
                             f"{gate_rank}")
        self.impl = impl
        d = d_model
        ratio = torch.arange(d, dtype=torch.float32) / max(d - 1, 1)
        self.mu = nn.Parameter(torch.stack([1.0 - ratio ** (0.3 + 0.7 * i / 5) for i in range(6)]))  # [6, d]
        self.W_r = nn.Linear(d, d, bias=False)
        self.W_k = nn.Linear(d, d, bias=False)
        self.W_v = nn.Linear(d, d, bias=False)
        self.W_o = nn.Linear(d, d, bias=False)
        self.decay_bias = nn.Parameter(-6.0 + 8.0 * ratio ** (0.85 + ratio**0.5))  # λ_d
        self.decay_A, self.decay_B = _low_rank(d, decay_rank, d)
        self.iclr_bias = nn.Parameter(torch.zeros(d))  # λ_a
        self.iclr_A, self.iclr_B = _low_rank(d, iclr_rank, d)
        self.gate_A, self.gate_B = _low_rank(d, gate_rank, d)
        self.removal_scale = nn.Parameter(torch.ones(d))  # ξ
        self.replacement_mix = nn.Parameter(torch.ones(d))  # α
        self.bonus = nn.Parameter(torch.empty(n_heads, self.head_dim).uniform_(-0.1, 0.1))  # ρ
        self.norm = nn.GroupNorm(n_heads, d, eps=64e-5)

    def check_state(self, state: RWKV7State):
        want = (self.n_heads, self.head_dim, self.head_dim)
        if tuple(state.S.shape[1:]) != want or tuple(state.shift.shape[1:]) != (self.d_model,):
            raise ValueError(
                f"RWKV7State must hold S [B, {want[0]}, {want[1]}, {want[2]}] and shift [B, {self.d_model}], "
                f"got {tuple(state.S.shape)} and {tuple(state.shift.shape)}")

    def branches(self, x, x_prev):
        """(r, log w, k, v, a, g, κ̂, k̃), each [B, T, H, K] (the module docstring's formulas)."""
        B, T, d = x.shape
        H, K = self.n_heads, self.head_dim
        xr, xd, xk, xv, xa, xg = (x + (x_prev - x) * self.mu[i] for i in range(6))
        r, k, v = self.W_r(xr), self.W_k(xk), self.W_v(xv)
        a = torch.sigmoid(self.iclr_bias + (xa @ self.iclr_A) @ self.iclr_B)
        logw = -0.6065306597126334 * torch.sigmoid(self.decay_bias + torch.tanh(xd @ self.decay_A) @ self.decay_B)
        g = torch.sigmoid(xg @ self.gate_A) @ self.gate_B
        kappa = F.normalize((k * self.removal_scale).view(B, T, H, K), dim=-1, eps=1e-12)
        k_rep = k * (1.0 + (a - 1.0) * self.replacement_mix)
        r, logw, k, v, a, g, k_rep = (t.view(B, T, H, K) for t in (r, logw, k, v, a, g, k_rep))
        return r, logw, k, v, a, g, kappa, k_rep

    def _forward(self, x, mask, state, return_state):
        B, T, d = x.shape
        perm = None
        if mask is not None:
            x, mask, perm = real_tokens_first(x, mask)
        shift = x.new_zeros(B, d) if state is None else state.shift.to(x.dtype)
        x_prev = torch.cat([shift[:, None], x[:, :-1]], 1)
        r, logw, k, v, a, g, kappa, k_rep = self.branches(x, x_prev)
        logw, kappa, k_rep, v = (drop_padding(t, mask) for t in (logw, kappa, k_rep, v))
        o, S = dplr_delta_rule(r, k_rep, v, -(a * kappa), kappa, logw, scale=1.0,
                               initial_state=None if state is None else state.S, output_final_state=return_state,
                               impl=self.impl)
        bonus = ((r * self.bonus * k_rep).sum(-1, keepdim=True) * v).reshape(B, T, d)
        p = self.norm(o.reshape(B * T, d)).view(B, T, d) + bonus
        y = self.W_o(g.reshape(B, T, d) * p)
        new_state = None
        if return_state:
            n_real = torch.full((B,), T, device=x.device) if mask is None else mask.sum(1)
            last = torch.gather(x, 1, (n_real - 1).clamp_min(0)[:, None, None].expand(B, 1, d))[:, 0]
            new_state = RWKV7State(S=S, shift=torch.where((n_real > 0)[:, None], last, shift))
        if perm is not None:
            y = restore_token_order(y, perm)
        return y, new_state

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}"
