"""Stick-breaking attention (Tan, Shen, Yang, Courville & Panda 2024, "Scaling Stick-Breaking Attention: An
Efficient Implementation and In-depth Study", arXiv:2410.17980, ICLR 2025).

    beta_ij = sigmoid(q_i·k_j / sqrt(d)),   A_ij = beta_ij Π_{j<k<i} (1 - beta_ik),   o_i = Σ_{j<i} A_ij v_j
    y = W_o concat_h o

A drop-in for softmax attention without position embedding: order comes from the stick, which the
most recent keys break first (a learned recency bias). attend_current=True lets a query also see its
own key (j <= i, product over j < k <= i); by default, as in the paper's formula, it sees the tokens
before it (so the first token's output is zero). The op is `attnzoo.ops.softmax.stickbreaking` (log
space). Decoding keeps a KV cache (`StickBreakingKVState`); padded keys are never seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.mixers.layers import RMSNorm, extend_kv_cache, qkv_heads
from attnzoo.ops.softmax.stickbreaking import stickbreaking_attention
from attnzoo.registry import Card, Paper, register


@dataclass
class StickBreakingKVState(MixerState):
    """k, v [B, L, H, D]; valid [B, L] bool (False: padding)."""

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor


def stickbreaking_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None) -> int:
    """Per cached token: fp32 K and V [H, head_dim] and a bool `valid`."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return seq_len * (2 * n_heads * hd * 4 + 1)


@register(
    "stickbreaking",
    card=Card(
        title="Stick-breaking attention (sigmoid break points from the most recent key back; no position embedding)",
        paper=Paper("Scaling Stick-Breaking Attention: An Efficient Implementation and In-depth Study",
                    "Tan, Shen, Yang, Courville & Panda", 2024, "2410.17980"),
        family="softmax",
        complexity="O(T^2 d)",
        state_bytes=stickbreaking_state_bytes,
        example_kwargs={"n_heads": 2},
        claim="Replacing softmax + RoPE by stick-breaking weights matches it on downstream tasks and "
              "generalises better to longer contexts (trained at 2^11, good at 2^14).",
    ),
)
class StickBreaking(Mixer):
    state_class = StickBreakingKVState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, attend_current: bool = False,
        qk_norm: bool = False, bias: bool = False, impl: str = "auto",
    ):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.attend_current = bool(attend_current)
        self.impl = impl
        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=bias)
        self.k_proj = nn.Linear(d_model, width, bias=bias)
        self.v_proj = nn.Linear(d_model, width, bias=bias)
        self.o_proj = nn.Linear(width, d_model, bias=bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else None

    def check_state(self, state: StickBreakingKVState):
        want = (self.n_heads, self.head_dim)
        if tuple(state.k.shape[2:]) != want:
            raise ValueError(f"KV cache must hold [B, L, {want[0]}, {want[1]}], got {tuple(state.k.shape)}")

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, hd = self.n_heads, self.head_dim
        q, k, v = qkv_heads(self, x)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        k_all, v_all, valid, padded = extend_kv_cache(state, k, v, real, mask)
        o = stickbreaking_attention(q, k_all, v_all, key_mask=valid if padded else None,
                                    attend_current=self.attend_current, impl=self.impl)
        y = self.o_proj(o.reshape(B, T, H * hd))
        return y, (StickBreakingKVState(k=k_all, v=v_all, valid=valid) if return_state else None)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"attend_current={self.attend_current}")
