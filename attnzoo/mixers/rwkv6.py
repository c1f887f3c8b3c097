"""RWKV-6 (Finch) time mixing: Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States
and Dynamic Recurrence", arXiv:2404.05892.

x [B, T, d_model] -> y [B, T, d_model]; H heads of size K (= V = d_model / H).

Token shift with data-dependent interpolation (ddlerp), x_{-1} = 0 at a sequence start:

    Δx_t = x_{t-1} - x_t
    m_□ = λ_□ + tanh((x_t + Δx_t ⊙ μ_x) A) B_□             low rank (A shared, one B_□ each)
    x_□ = x_t + Δx_t ⊙ m_□                                  □ ∈ {w, k, v, r, g}
    r, k, v = W_r x_r, W_k x_k, W_v x_v;  g = SiLU(W_g x_g)
    d_t = d_0 + tanh(x_w A_d) B_d;  w_t = exp(-exp(d_t))    (per channel, in (0, 1))

WKV with the bonus u for the current token (per head, S [K, V]):

    o_t = r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ),   S_t = diag(w_t) S_{t-1} + k_t v_tᵀ
    y = W_o (GroupNorm_H(o) ⊙ g)

The exclusive readout r_tᵀ S_{t-1} is gated linear attention on keys/values/gates shifted one
step later (`gated_linear_attention` with q = r, k'_t = k_{t-1}, v'_t = v_{t-1}, log-gate
g'_t = log w_{t-1}, scale 1, one extra step so the final state includes the last token); the bonus
term is added directly. Decoding keeps `RWKV6State`: S [B, H, K, V] (fp32) and the last real
token (the shift cache). With a mask, real tokens are compacted to the front, so the shift always
sees the previous real token, and padded steps carry k = 0, log w = 0 (state unchanged).
Init follows the official scheme (decay speeds spread over [-6, -1]), except that the low-rank A
matrices start small and random rather than zero, so the data-dependent paths are live at init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads, drop_padding
from attnzoo.ops.conv.padding import real_tokens_first, restore_token_order
from attnzoo.ops.common.dispatch import op_override
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register

BRANCHES = ("w", "k", "v", "r", "g")


@dataclass
class RWKV6State(MixerState):
    """S [B, H, K, V] (fp32 WKV state), shift [B, d_model] (the last real input token)."""

    S: torch.Tensor
    shift: torch.Tensor


def rwkv6_state_bytes(d_model: int, n_heads: int, seq_len: int) -> int:
    head = d_model // max(n_heads, 1)
    return 4 * (n_heads * head * head + d_model)


FINCH = Paper("Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence", "Peng et al.", 2024,
              "2404.05892")


class RWKV6TimeMix(Mixer):
    state_class = RWKV6State

    def __init__(self, d_model: int, *, n_heads: int = 4, mix_rank: int = 32, decay_rank: int = 64,
                 impl: str = "auto"):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads)
        if mix_rank < 1 or decay_rank < 1:
            raise ValueError(f"mix_rank and decay_rank must be >= 1, got {mix_rank}, {decay_rank}")
        self.impl = impl
        d = d_model
        ratio = torch.arange(d, dtype=torch.float32) / max(d - 1, 1)
        self.mu_x = nn.Parameter(1.0 - ratio**0.5)
        self.mu = nn.Parameter(torch.stack([1.0 - ratio ** (0.5 + 0.5 * i / 4) for i in range(5)]))  # λ_□ [5, d]
        self.mix_A = nn.Parameter(torch.empty(d, 5 * mix_rank).uniform_(-1e-2, 1e-2))
        self.mix_B = nn.Parameter(torch.empty(5, mix_rank, d).uniform_(-1e-2, 1e-2))
        self.decay = nn.Parameter(-6.0 + 5.0 * ratio ** (0.7 + 1.3 * ratio))  # d_0
        self.decay_A = nn.Parameter(torch.empty(d, decay_rank).uniform_(-1e-2, 1e-2))
        self.decay_B = nn.Parameter(torch.empty(decay_rank, d).uniform_(-1e-2, 1e-2))
        zigzag = ((torch.arange(d) + 1) % 3 - 1).float() * 0.1
        self.bonus = nn.Parameter((0.5 * (1.0 - ratio) + zigzag).view(n_heads, self.head_dim))  # u [H, K]
        self.W_r = nn.Linear(d, d, bias=False)
        self.W_k = nn.Linear(d, d, bias=False)
        self.W_v = nn.Linear(d, d, bias=False)
        self.W_g = nn.Linear(d, d, bias=False)
        self.W_o = nn.Linear(d, d, bias=False)
        self.norm = nn.GroupNorm(n_heads, d, eps=64e-5)

    def check_state(self, state: RWKV6State):
        want = (self.n_heads, self.head_dim, self.head_dim)
        if tuple(state.S.shape[1:]) != want or tuple(state.shift.shape[1:]) != (self.d_model,):
            raise ValueError(
                f"RWKV6State must hold S [B, {want[0]}, {want[1]}, {want[2]}] and shift [B, {self.d_model}], "
                f"got {tuple(state.S.shape)} and {tuple(state.shift.shape)}"
            )

    def projections(self, x, x_prev):
        """(r, k, v, g, log w) from x and the previous tokens, each [B, T, d] (g after SiLU)."""
        dx = x_prev - x
        xxx = x + dx * self.mu_x
        B, T, _ = x.shape
        low = torch.tanh(xxx @ self.mix_A).view(B, T, 5, -1)
        m = torch.einsum("btir,ird->btid", low, self.mix_B) + self.mu  # [B, T, 5, d]
        xw, xk, xv, xr, xg = (x + dx * m[:, :, i] for i in range(5))
        logw = -torch.exp(self.decay + torch.tanh(xw @ self.decay_A) @ self.decay_B)
        return self.W_r(xr), self.W_k(xk), self.W_v(xv), F.silu(self.W_g(xg)), logw

    def _forward(self, x, mask, state, return_state):
        B, T, d = x.shape
        H, K = self.n_heads, self.head_dim
        perm = None
        if mask is not None:
            x, mask, perm = real_tokens_first(x, mask)
        shift = x.new_zeros(B, d) if state is None else state.shift.to(x.dtype)
        halo = op_override("conv_cache")  # sequence parallel: the previous ranks' last real token
        if halo is not None:
            shift = halo(x, mask, shift[:, None], 1)[:, 0]
        x_prev = torch.cat([shift[:, None], x[:, :-1]], 1)
        r, k, v, g, logw = self.projections(x, x_prev)
        k, logw = drop_padding(k, mask), drop_padding(logw, mask)
        r, k, v, logw = (t.view(B, T, H, K) for t in (r, k, v, logw))
        o, S = self.wkv(r, k, v, logw, None if state is None else state.S, return_state)
        y = self.norm(o.reshape(B * T, d)).view(B, T, d) * g
        y = self.W_o(y)
        new_state = None
        if return_state:
            n_real = torch.full((B,), T, device=x.device) if mask is None else mask.sum(1)
            last = torch.gather(x, 1, (n_real - 1).clamp_min(0)[:, None, None].expand(B, 1, d))[:, 0]
            shift = torch.where((n_real > 0)[:, None], last, shift)
            new_state = RWKV6State(S=S, shift=shift)
        if perm is not None:
            y = restore_token_order(y, perm)
        return y, new_state

    def wkv(self, r, k, v, logw, S0, return_state):
        """o_t = r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ) via GLA on inputs shifted one step; returns (o, S_T)."""
        B, T, H, K = r.shape
        z = r.new_zeros(B, 1, H, K)
        o, S = gated_linear_attention(
            torch.cat([r, z], 1), torch.cat([z, k], 1), torch.cat([z, v], 1), torch.cat([z, logw], 1),
            scale=1.0, initial_state=S0, output_final_state=return_state, impl=self.impl,
        )
        bonus = (r * self.bonus.to(r.dtype) * k).sum(-1, keepdim=True) * v
        return o[:, :T] + bonus, S

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}"


@register(
    "rwkv6",
    card=Card(
        title="RWKV-6 Finch time mixing (ddlerp token shift, data-dependent decay, bonus u)",
        paper=FINCH,
        family="recurrent",
        complexity="O(T d K)",
        state_bytes=rwkv6_state_bytes,
        causal=True,
        example_kwargs={"n_heads": 4, "mix_rank": 4, "decay_rank": 8},
    ),
)
class RWKV6(RWKV6TimeMix):
    """RWKV-6 time mixing as a causal token mixer."""
