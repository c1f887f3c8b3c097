"""Multi-head latent attention (MLA; DeepSeek-AI 2024, "DeepSeek-V2: A Strong, Economical, and Efficient
Mixture-of-Experts Language Model", arXiv:2405.04434, Section 2.1).

    c^KV_t = W^DKV h_t  (d_c)              k^C_t = W^UK c^KV_t,   v^C_t = W^UV c^KV_t      (H heads of d_h)
    c^Q_t = W^DQ h_t  (d_c', optional)     q^C_t = W^UQ c^Q_t     (or W^Q h_t without query compression)
    q^R_t = RoPE(W^QR c^Q_t)  (H x d_R)    k^R_t = RoPE(W^KR h_t)  (d_R, one key shared by every head)
    q_{t,i} = [q^C_{t,i}; q^R_{t,i}],  k_{j,i} = [k^C_{j,i}; k^R_j]
    o_{t,i} = Σ_{j<=t} softmax_j( q_{t,i}ᵀ k_{j,i} / sqrt(d_h + d_R) ) v^C_{j,i},     u_t = W^O [o_{t,1}; ...; o_{t,H}]

The decoding state is the latent cache only: c^KV and k^R, (d_c + d_R) numbers per token instead of
MHA's 2 H d_h (`LatentKVState`). With a state (decoding, continuing) the mixer runs the absorbed form:
W^UK moves into the query (q~_{t,i} = W^UK_iᵀ q^C_{t,i}, so that q~·c_j = q^C·k^C_j) and W^UV into the output
(u_t = Σ_i (W^O_i W^UV_i) Σ_j p_{t,i,j} c_j), one attention over the latents shared by all heads (MQA with
key [c; k^R] and value c); without a state it materialises k^C and v^C (cheaper when d_c > d_h).
`absorb=True` / `False` forces one form. Defaults from the paper's ratios: d_c = 4 d_h (capped at d_model),
d_R = d_h / 2, no query compression (DeepSeek-V2-Lite; `q_rank` turns it on); `latent_norm` (on) applies
RMSNorm to the compressed latents, as DeepSeek-V2's model does. Padded tokens are never keys and do not
advance the RoPE positions.

Left out: the MoE and the rest of DeepSeek-V2's block, YaRN context extension (and its softmax scale
factor), and the scaling factors at the width bottlenecks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.mixers.layers import RMSNorm, apply_rope, token_positions
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.softmax import softmax_attention
from attnzoo.registry import Card, Paper, register

ABSORB = ("auto", True, False)


@dataclass
class LatentKVState(MixerState):
    """c [B, L, d_c]: the compressed latents c^KV; k_rope [B, L, d_R]: the shared RoPE keys (RoPE applied);
    valid [B, L] bool (False: padding); seen [B] = real tokens so far (the next RoPE position)."""

    c: torch.Tensor
    k_rope: torch.Tensor
    valid: torch.Tensor
    seen: torch.Tensor


def mla_sizes(d_model: int, head_dim: int, kv_rank: int | None, rope_dim: int | None) -> tuple[int, int]:
    """(d_c, d_R) for the constructor's arguments: d_c = min(4 head_dim, d_model), d_R = head_dim / 2 by default."""
    d_c = min(4 * head_dim, d_model) if kv_rank is None else kv_rank
    d_r = max(2, head_dim // 2 // 2 * 2) if rope_dim is None else rope_dim
    return d_c, d_r


def mla_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                    kv_rank: int | None = None, rope_dim: int | None = None) -> int:
    """Per cached token: the fp32 latent c^KV (d_c) and RoPE key k^R (d_R), and a bool `valid`; plus `seen`
    (int64). No per-head keys or values: that is the point of MLA."""
    hd = d_model // n_heads if head_dim is None else head_dim
    d_c, d_r = mla_sizes(d_model, hd, kv_rank, rope_dim)
    return seq_len * ((d_c + d_r) * 4 + 1) + 8


@register(
    "mla",
    card=Card(
        title="Multi-head latent attention (DeepSeek-V2: low-rank joint KV compression, decoupled shared RoPE key; "
              "the latent is the cache, decoded with W^UK / W^UV absorbed)",
        paper=Paper("DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model",
                    "DeepSeek-AI", 2024, "2405.04434"),
        family="softmax",
        complexity="O(T^2 H (d_h + d_R)); decode O(L H (d_c + d_R)) per token",
        state_bytes=mla_state_bytes,
        example_kwargs={"n_heads": 2},
        claim="Caching one low-rank joint latent of keys and values plus a small RoPE key shared by all heads "
              "performs better than MHA in DeepSeek-V2, whose KV cache is 93.3% smaller than DeepSeek 67B's "
              "(5.76x the maximum generation throughput).",
    ),
)
class MultiHeadLatentAttention(Mixer):
    state_class = LatentKVState
    state_tag_ignore = ("impl", "absorb")   # both forms read and write the same latent cache

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, kv_rank: int | None = None,
        q_rank: int | None = None, rope_dim: int | None = None, rope_theta: float = 10000.0,
        latent_norm: bool = True, absorb: str | bool = "auto", bias: bool = False, impl: str = "auto",
    ):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = hd = check_heads(d_model, n_heads, head_dim)
        for name, val in (("kv_rank", kv_rank), ("q_rank", q_rank), ("rope_dim", rope_dim)):
            if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
                raise ValueError(f"{name} must be None or a positive int, got {val!r}")
        self.kv_rank, self.rope_dim = mla_sizes(d_model, hd, kv_rank, rope_dim)
        if self.rope_dim % 2:
            raise ValueError(f"rope_dim must be even (RoPE rotates pairs), got {self.rope_dim}")
        if absorb not in ABSORB or (absorb != "auto" and not isinstance(absorb, bool)):
            raise ValueError(f"absorb must be one of {ABSORB}, got {absorb!r}")
        self.q_rank, self.rope_theta, self.absorb, self.impl = q_rank, rope_theta, absorb, impl
        H, d_c, d_r = n_heads, self.kv_rank, self.rope_dim
        self.kv_down = nn.Linear(d_model, d_c, bias=False)                       # W^DKV
        self.kv_norm = RMSNorm(d_c) if latent_norm else None
        self.k_up = nn.Linear(d_c, H * hd, bias=False)                           # W^UK
        self.v_up = nn.Linear(d_c, H * hd, bias=False)                           # W^UV
        self.k_rope = nn.Linear(d_model, d_r, bias=False)                        # W^KR
        if q_rank is None:
            self.q_down, self.q_norm = None, None
            q_in = d_model
        else:
            self.q_down = nn.Linear(d_model, q_rank, bias=False)                 # W^DQ
            self.q_norm = RMSNorm(q_rank) if latent_norm else None
            q_in = q_rank
        self.q_up = nn.Linear(q_in, H * hd, bias=False)                          # W^UQ (or W^Q)
        self.q_rope = nn.Linear(q_in, H * d_r, bias=False)                       # W^QR
        self.o_proj = nn.Linear(H * hd, d_model, bias=bias)                      # W^O

    def check_state(self, state: LatentKVState):
        if state.c.dim() != 3 or state.c.shape[-1] != self.kv_rank or tuple(state.k_rope.shape[1:]) != (
                state.c.shape[1], self.rope_dim):
            raise ValueError(f"latent cache must hold c [B, L, {self.kv_rank}] and k_rope [B, L, {self.rope_dim}], "
                             f"got {tuple(state.c.shape)} and {tuple(state.k_rope.shape)}")

    def latents(self, x, pos):
        """(c^KV [B, T, d_c], k^R [B, T, d_R] with RoPE at pos, q^C [B, T, H, d_h], q^R [B, T, H, d_R])."""
        B, T, _ = x.shape
        H = self.n_heads
        c = self.kv_down(x)
        if self.kv_norm is not None:
            c = self.kv_norm(c)
        k_r = apply_rope(self.k_rope(x)[:, :, None], pos, self.rope_theta)[:, :, 0]
        cq = x
        if self.q_down is not None:
            cq = self.q_down(x)
            cq = cq if self.q_norm is None else self.q_norm(cq)
        q_c = self.q_up(cq).view(B, T, H, self.head_dim)
        q_r = apply_rope(self.q_rope(cq).view(B, T, H, self.rope_dim), pos, self.rope_theta)
        return c, k_r, q_c, q_r

    def attend_materialised(self, q_c, q_r, c_all, kr_all, **mask_kw):
        """k^C, v^C per head from the latents, then softmax attention over [k^C; k^R]; o [B, T, H*d_h]."""
        B, Tk, _ = c_all.shape
        H, hd = self.n_heads, self.head_dim
        k = torch.cat([self.k_up(c_all).view(B, Tk, H, hd), kr_all[:, :, None].expand(B, Tk, H, self.rope_dim)], -1)
        v = self.v_up(c_all).view(B, Tk, H, hd)
        o = softmax_attention(torch.cat([q_c, q_r], -1), k, v, causal=True, scale=(hd + self.rope_dim) ** -0.5,
                              impl=self.impl, **mask_kw)
        return self.o_proj(o.reshape(*o.shape[:2], H * hd))

    def attend_absorbed(self, q_c, q_r, c_all, kr_all, **mask_kw):
        """W^UK absorbed into the query and W^UV into the output: one attention over [c; k^R] (value c)."""
        H, hd, d_c = self.n_heads, self.head_dim, self.kv_rank
        w_uk = self.k_up.weight.view(H, hd, d_c)
        q = torch.cat([torch.einsum("bthd,hdc->bthc", q_c, w_uk), q_r], -1)               # [B, T, H, d_c + d_R]
        k = torch.cat([c_all, kr_all], -1)[:, :, None]                                     # [B, Tk, 1, d_c + d_R]
        o_lat = softmax_attention(q, k, c_all[:, :, None], causal=True, scale=(hd + self.rope_dim) ** -0.5,
                                  impl=self.impl, **mask_kw)                               # [B, T, H, d_c]
        w_out = torch.einsum("mhd,hdc->mhc", self.o_proj.weight.view(-1, H, hd), self.v_up.weight.view(H, hd, d_c))
        y = torch.einsum("bthc,mhc->btm", o_lat, w_out)                                    # W^O W^UV absorbed
        return y if self.o_proj.bias is None else y + self.o_proj.bias

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        pos = token_positions(mask, B, T, None if state is None else state.seen, x.device)
        c, k_r, q_c, q_r = self.latents(x, pos)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        if state is None:
            c_all, kr_all, valid = c, k_r, real
        else:
            c_all = torch.cat([state.c.to(c.dtype), c], 1)
            kr_all = torch.cat([state.k_rope.to(k_r.dtype), k_r], 1)
            valid = torch.cat([state.valid, real], 1)
        # the masked path when this call has padding or the cache may hold some (assumed under compile)
        padded = mask is not None or (state is not None and (compiling() or not bool(state.valid.all())))
        mask_kw = {"key_mask": valid} if padded else {}
        absorbed = self.absorb is True or (self.absorb == "auto" and state is not None)
        y = (self.attend_absorbed if absorbed else self.attend_materialised)(q_c, q_r, c_all, kr_all, **mask_kw)
        if not return_state:
            return y, None
        seen = real.long().sum(1) + (0 if state is None else state.seen)
        return y, LatentKVState(c=c_all, k_rope=kr_all, valid=valid, seen=seen)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, kv_rank={self.kv_rank}, "
                f"q_rank={self.q_rank}, rope_dim={self.rope_dim}, absorb={self.absorb!r}")
