"""Multi-head softmax attention (Vaswani et al. 2017, arXiv:1706.03762) with GQA, RoPE and qk-norm.

    y = W_o concat_h softmax(q_h k_hᵀ / sqrt(d_h) + causal mask) v_h

x [B, T, d_model] -> y [B, T, d_model]. q has n_heads heads of head_dim, k/v have n_kv_heads
(grouped-query attention, Ainslie et al. 2023, arXiv:2305.13245). Optional per-head RMSNorm on q
and k before RoPE (as in Qwen3). Decoding keeps a KV cache (`KVCacheState`); positions count real
tokens only, so padding never shifts RoPE phases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.mixers.layers import RMSNorm, apply_rope, extend_kv_cache, token_positions
from attnzoo.ops.softmax import softmax_attention
from attnzoo.registry import Card, Paper, register


@dataclass
class KVCacheState(MixerState):
    """k, v [B, L, Hkv, D] (RoPE already applied to k), valid [B, L] bool, kpos [B, L] positions,
    seen [B] = number of real tokens seen so far."""

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor
    kpos: torch.Tensor
    seen: torch.Tensor


def keep_last_valid(state: KVCacheState, keep: int) -> KVCacheState:
    """Keep, per row, only the last `keep` real entries of a KV cache (padding moved to the front)."""
    order = torch.argsort(state.valid.to(torch.int8), dim=1, stable=True)[:, -keep:]
    idx = order[:, :, None, None]

    def take4(t):
        return torch.gather(t, 1, idx.expand(-1, -1, t.shape[2], t.shape[3]))

    return KVCacheState(
        k=take4(state.k), v=take4(state.v), valid=torch.gather(state.valid, 1, order),
        kpos=torch.gather(state.kpos, 1, order), seen=state.seen,
    )


def kv_cache_bytes(d_model: int, n_heads: int, seq_len: int, n_kv_heads: int | None = None,
                   head_dim: int | None = None, window: int | None = None) -> int:
    """Bytes of a KVCacheState after seq_len tokens: per cached token (all of them, or the last `window`)
    fp32 K and V [Hkv, head_dim], a bool `valid` and an int64 `kpos`; plus the int64 `seen`."""
    hd = d_model // n_heads if head_dim is None else head_dim
    hkv = n_heads if n_kv_heads is None else n_kv_heads
    cached = seq_len if window is None else min(seq_len, window)
    return cached * (2 * hkv * hd * 4 + 1 + 8) + 8


class SoftmaxAttention(Mixer):
    state_class = KVCacheState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None, head_dim: int | None = None,
        causal: bool = True, window: int | None = None, rope: bool = True, rope_theta: float = 10000.0,
        qk_norm: bool = False, bias: bool = False, impl: str = "auto",
    ):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if self.n_kv_heads <= 0 or n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.causal = causal
        self.window = window
        self.rope = rope
        self.rope_theta = rope_theta
        self.impl = impl
        hd = self.head_dim
        self.q_proj = nn.Linear(d_model, self.q_width(), bias=bias)
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(n_heads * hd, d_model, bias=bias)
        self.q_norm = RMSNorm(hd) if qk_norm else None
        self.k_norm = RMSNorm(hd) if qk_norm else None

    # Subclasses (gated attention) widen the query projection and split the extra part off.
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    def split_q(self, qx: torch.Tensor):
        B, T, _ = qx.shape
        return qx.view(B, T, self.n_heads, self.head_dim), None

    def gate_output(self, o: torch.Tensor, gate) -> torch.Tensor:
        return o

    def check_state(self, state: KVCacheState):
        want = (self.n_kv_heads, self.head_dim)
        if tuple(state.k.shape[2:]) != want:
            raise ValueError(f"KV cache must hold [B, L, {want[0]}, {want[1]}], got {tuple(state.k.shape)}")

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        hd = self.head_dim
        q, gate = self.split_q(self.q_proj(x))
        k = self.k_proj(x).view(B, T, self.n_kv_heads, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        pos = token_positions(mask, B, T, None if state is None else state.seen, x.device)
        if self.rope:
            q, k = apply_rope(q, pos, self.rope_theta), apply_rope(k, pos, self.rope_theta)
        k_all, v_all, valid, padded = extend_kv_cache(state, k, v, real, mask)  # all-real: the unmasked path
        kpos = pos if state is None else torch.cat([state.kpos, pos], 1)
        o = softmax_attention(
            q, k_all, v_all, causal=self.causal, window=self.window,
            q_pos=pos if padded else None, k_pos=kpos if padded else None,
            key_mask=valid if padded else None, impl=self.impl,
        )
        o = self.gate_output(o, gate)
        y = self.o_proj(o.reshape(B, T, self.n_heads * hd))
        new_state = None
        if return_state:
            seen = real.long().sum(1) + (0 if state is None else state.seen)
            new_state = KVCacheState(k=k_all, v=v_all, valid=valid, kpos=kpos, seen=seen)
            if self.window is not None and new_state.k.shape[1] > self.window:
                new_state = keep_last_valid(new_state, self.window)
        return y, new_state

    def extra_repr(self):
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, causal={self.causal}, window={self.window}"
        )


VASWANI = Paper("Attention Is All You Need", "Vaswani et al.", 2017, "1706.03762")


@register(
    "softmax",
    card=Card(
        title="Multi-head softmax attention (GQA, RoPE, qk-norm)",
        paper=VASWANI,
        family="softmax",
        complexity="O(T^2 d)",
        state_bytes=kv_cache_bytes,
        causal=True,
        bidirectional=True,
        example_kwargs={"n_heads": 4, "n_kv_heads": 2},
    ),
)
class Softmax(SoftmaxAttention):
    """Softmax attention; `causal=False` makes it bidirectional (then it refuses a state)."""
