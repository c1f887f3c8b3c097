"""Forgetting Transformer (FoX; Lin, Nikishin, He & Courville 2025, "Forgetting Transformer: Softmax
Attention with a Forget Gate", arXiv:2503.02130, ICLR 2025).

    f_t = sigmoid(x_t w_f + b_f)                        one scalar forget gate per head and token
    o_i = Σ_{j<=i} softmax_j( q_i·k_j / sqrt(d) + Σ_{l=j+1..i} log f_l ) v_j
    y = W_o concat_h o                                  (output_gate: y = W_o (o ⊙ sigmoid(x W_g)))

No position embedding (the forget gate is the only notion of order, as in the paper's FoX). Options
from the paper's "Pro" block: qk_norm (RMSNorm on q and k per head) and output_gate; the paper's
output norm and KV-shift are not here. x [B, T, d_model]; q, k, v [B, T, H, head_dim].
Decoding keeps a KV cache plus, per cached key, its decay relative to the newest token
(`ForgettingKVState.decay`, Σ log f over the tokens after it): the cumulative log gate never grows
without bound. Padded steps get log f = 0 (they forget nothing) and are never keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.mixers.layers import RMSNorm, extend_kv_cache, qkv_heads
from attnzoo.ops.softmax.forgetting import forgetting_attention
from attnzoo.registry import Card, Paper, register


@dataclass
class ForgettingKVState(MixerState):
    """k, v [B, L, H, D]; valid [B, L] bool (False: padding); decay [B, L, H] = Σ log f after each key
    up to the newest token (float32; float64 for a float64 mixer)."""

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor
    decay: torch.Tensor


def fox_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None) -> int:
    """Per cached token: fp32 K and V [H, head_dim], a bool `valid` and an fp32 decay per head."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return seq_len * (2 * n_heads * hd * 4 + 1 + 4 * n_heads)


FOX = Paper("Forgetting Transformer: Softmax Attention with a Forget Gate", "Lin, Nikishin, He & Courville",
            2025, "2503.02130")


@register(
    "fox",
    card=Card(
        title="Forgetting Transformer (softmax attention with a data-dependent forget gate on the logits)",
        paper=FOX,
        family="softmax",
        complexity="O(T^2 d)",
        state_bytes=fox_state_bytes,
        example_kwargs={"n_heads": 2},
        claim="A forget gate down-weights past logits data-dependently; FoX beats the RoPE Transformer on "
              "long-context language modelling and length extrapolation and needs no position embedding.",
    ),
)
class ForgettingTransformer(Mixer):
    state_class = ForgettingKVState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, qk_norm: bool = False,
        output_gate: bool = False, bias: bool = False, impl: str = "auto",
    ):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.impl = impl
        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=bias)
        self.k_proj = nn.Linear(d_model, width, bias=bias)
        self.v_proj = nn.Linear(d_model, width, bias=bias)
        self.f_proj = nn.Linear(d_model, n_heads, bias=True)   # w_f, b_f of each head
        self.g_proj = nn.Linear(d_model, width, bias=False) if output_gate else None
        self.o_proj = nn.Linear(width, d_model, bias=bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else None

    def check_state(self, state: ForgettingKVState):
        want = (self.n_heads, self.head_dim)
        if tuple(state.k.shape[2:]) != want or tuple(state.decay.shape[2:]) != (self.n_heads,):
            raise ValueError(f"KV cache must hold k [B, L, {want[0]}, {want[1]}] and decay [B, L, {want[0]}], "
                             f"got {tuple(state.k.shape)} and {tuple(state.decay.shape)}")

    def log_forget(self, x, mask):
        """log f [B, T, H] = logsigmoid(x w_f + b_f); 0 at padded steps."""
        log_f = F.logsigmoid(self.f_proj(x))
        return log_f if mask is None else torch.where(mask[..., None], log_f, log_f.new_zeros(()))

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, hd = self.n_heads, self.head_dim
        q, k, v = qkv_heads(self, x)
        log_f = self.log_forget(x, mask)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        k_all, v_all, valid, padded = extend_kv_cache(state, k, v, real, mask)
        cache_decay = None if state is None else state.decay
        o, decay = forgetting_attention(q, k_all, v_all, log_f, cache_decay=cache_decay,
                                        key_mask=valid if padded else None, output_decay=return_state,
                                        impl=self.impl)
        if self.g_proj is not None:
            o = o * torch.sigmoid(self.g_proj(x)).view(B, T, H, hd)
        y = self.o_proj(o.reshape(B, T, H * hd))
        new_state = ForgettingKVState(k=k_all, v=v_all, valid=valid, decay=decay) if return_state else None
        return y, new_state

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"qk_norm={self.q_norm is not None}, output_gate={self.g_proj is not None}")
