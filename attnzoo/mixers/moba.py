"""MoBA: Mixture of Block Attention (Lu et al. 2025, "MoBA: Mixture of Block Attention for Long-Context
LLMs", arXiv:2502.13189): every query attends to its own block (causally masked) and to the top_k - 1
earlier blocks its parameter-free gate ranks highest.

    s_{t,j} = q_t · mean(k over block j)                          blocks of block_size positions, j < own
    I_t = {t // bs} ∪ topk_{j < t // bs}(s_{t,j}, top_k - 1)        (per query head; not differentiated)
    y_t = W_o softmax_j(q_t · k_j / sqrt(d) | block(j) in I_t, j <= t) v_j

x [B, T, d_model] -> y [B, T, d_model]; q [B, T, H, D], k, v [B, T, Hkv, D] (GQA: each query head has its
own gate over the shared keys), RoPE on q and k (the gate reads the rotated keys). Only complete blocks
before the query's own are scored, so a block mean never holds a later token. The paper's defaults:
block_size 512, top_k 3. The attention reads each query's blocks through ops/sparse/token_select.py
(the per-token selection NSA also uses: a masked SDPA call while the [T, L] scores are small, else a
gather of each query's blocks; torch only); its "reference" impl is the dense masked form.

Left out of the paper: its FlashAttention varlen kernel and online-softmax merge, and its hybrid recipe
(MoBA layers with full-attention layers, or full attention in the last layers: a LanguageModel pattern
gives it). State: the KV cache on the position timeline (slot j = real position j) plus the block
means of the blocks complete in the cache, recomputed only for newly completed blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnzoo.mixers.base import MixerState
from attnzoo.mixers.layers import apply_rope, qkv_heads, token_positions
from attnzoo.mixers.softmax import SoftmaxAttention
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.sparse.token_select import select_moba_blocks, token_sparse_attention
from attnzoo.registry import Card, Paper, register


@dataclass
class MoBAState(MixerState):
    """k, v [B, L, Hkv, D] (slot j = real position j, RoPE applied to k; valid = j < seen), seen [B], and
    kbar [B, L // bs, Hkv, D] the block means (a row's blocks past its own seen are placeholders)."""

    k: torch.Tensor
    v: torch.Tensor
    seen: torch.Tensor
    kbar: torch.Tensor


def _timeline(t, pos, real, L, old):
    """This call's t [B, T, H, D] placed at its real positions after the cached `old` [B, L0, H, D], on L slots."""
    B, T, H, D = t.shape
    buf = t.new_zeros(B, L + 1, H, D)
    if old is not None and old.shape[1] > 0:
        buf[:, : old.shape[1]] = old.to(t.dtype)
    idx = torch.where(real, pos, torch.full_like(pos, L))  # padded tokens go to a dropped slot
    return buf.scatter(1, idx[..., None, None].expand(B, T, H, D), t)[:, :L]


def moba_state_bytes(d_model: int, n_heads: int, seq_len: int, n_kv_heads: int | None = None,
                     head_dim: int | None = None, block_size: int = 512) -> int:
    """fp32 K and V [Hkv, head_dim] per token, an fp32 block mean per complete block, the int64 `seen`."""
    hd = d_model // n_heads if head_dim is None else head_dim
    hkv = n_heads if n_kv_heads is None else n_kv_heads
    return (2 * seq_len + seq_len // block_size) * hkv * hd * 4 + 8


def tokens_read_per_step(seq_len: int, block_size: int = 512, top_k: int = 3) -> int:
    """Vectors one decode step reads: the block means and the top_k blocks' keys (at most the cache)."""
    return seq_len // block_size + min(seq_len, block_size * top_k)


@register(
    "moba",
    card=Card(
        title="MoBA: mixture of block attention (own block + top-k blocks by q · mean key)",
        paper=Paper("MoBA: Mixture of Block Attention for Long-Context LLMs", "Lu et al.", 2025, "2502.13189"),
        family="sparse",
        complexity="O(T (T/bs + k·bs) d)",
        state_bytes=moba_state_bytes,
        tokens_read_per_step=tokens_read_per_step,
        causal=True,
        example_kwargs={"n_heads": 4, "n_kv_heads": 2, "block_size": 4, "top_k": 2},
        claim="Routing each query to its own block and the top-k blocks by a parameter-free gate (query times "
              "mean key) performs comparably to full attention on long-context tasks while reading a fraction "
              "of the keys, and can switch seamlessly between full and sparse attention.",
    ),
)
class MixtureOfBlockAttention(SoftmaxAttention):
    state_class = MoBAState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None, head_dim: int | None = None,
        block_size: int = 512, top_k: int = 3, rope: bool = True, rope_theta: float = 10000.0,
        qk_norm: bool = False, bias: bool = False, impl: str = "auto",
    ):
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=True,
                         rope=rope, rope_theta=rope_theta, qk_norm=qk_norm, bias=bias, impl=impl)
        for name, val in (("block_size", block_size), ("top_k", top_k)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}")
        if impl not in ("auto", "torch", "reference"):
            raise ValueError(f'impl must be "auto", "torch" or "reference", got {impl!r}')
        self.block_size, self.top_k = block_size, top_k

    def check_state(self, state: MoBAState):
        want = (self.n_kv_heads, self.head_dim)
        if tuple(state.k.shape[2:]) != want or tuple(state.kbar.shape[2:]) != want:
            raise ValueError(f"MoBA state must hold k [B, L, {want[0]}, {want[1]}] and block means "
                             f"[B, N, {want[0]}, {want[1]}], got {tuple(state.k.shape)}, {tuple(state.kbar.shape)}")

    def _block_means(self, K, state, plain):
        """kbar [B, L // bs, Hkv, D]: the mean key of every block complete in the timeline K; cached ones reused."""
        B, L, H, D = K.shape
        bs, n = self.block_size, L // self.block_size
        i0 = 0
        if not plain and state is not None and state.kbar.shape[1] > 0 and not compiling():  # compiled: recompute
            i0 = min(int(state.seen.min()) // bs, state.kbar.shape[1])
        kbar = K[:, i0 * bs: n * bs].reshape(B, n - i0, bs, H, D).mean(2)
        return kbar if i0 == 0 else torch.cat([state.kbar[:, :i0].to(kbar.dtype), kbar], 1)

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = qkv_heads(self, x, Hkv)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        pos = token_positions(mask, B, T, None if state is None else state.seen, x.device)
        if self.rope:
            q, k = apply_rope(q, pos, self.rope_theta), apply_rope(k, pos, self.rope_theta)
        total = real.long().sum(1) + (0 if state is None else state.seen)
        plain = state is None and mask is None  # positions 0..T-1: the inputs are the timeline
        if not plain:
            # L = max(seen) + T when every new token is real (static: no host read under torch.compile)
            L = state.k.shape[1] + T if mask is None else int(total.max())
            k = _timeline(k, pos, real, L, None if state is None else state.k)
            v = _timeline(v, pos, real, L, None if state is None else state.v)
        L = k.shape[1]
        kbar = self._block_means(k, state, plain)
        ids, cnt = select_moba_blocks(q.detach(), kbar.detach(), pos, -(-L // self.block_size),
                                      block_size=self.block_size, top_k=self.top_k)
        G = H // Hkv
        kx, vx = (t.repeat_interleave(G, dim=2) if G > 1 else t for t in (k, v))  # a selection per query head
        o = token_sparse_attention(q, kx, vx, ids, cnt, pos, block_size=self.block_size,
                                   impl="reference" if self.impl == "reference" else "torch")
        y = self.o_proj(o.reshape(B, T, H * hd))
        new_state = MoBAState(k=k, v=v, seen=total, kbar=kbar.detach()) if return_state else None
        return y, new_state

    def extra_repr(self):
        return f"{super().extra_repr()}, block_size={self.block_size}, top_k={self.top_k}"
