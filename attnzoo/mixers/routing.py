"""Routing Transformer attention (Roy, Saffar, Vaswani, Grangier 2021, TACL, arXiv:2003.05997).

Queries and keys are layer-normed without gain (q = k with `share_qk`, as for causal LMs) and
routed by online k-means: per routing head, centroids μ [n_clusters, head_dim] (buffers, EMA
updated in training only, decay 0.999, Laplace smoothing; see ops/sparse/routing.py). A token is
in cluster argmax_c x·μ_c. The first `n_local_heads` heads are local (window attention), the rest
route. Training adds `aux_loss = β · ||x - sg(μ_{a(x)})||²` (β = 1e-4, commitment).

- `routing` (causal=True): every query and key goes to its nearest centroid; query i attends to the
  keys j <= i of its own cluster, so no output depends on a later token. Local heads see
  i - window < j <= i. With share_qk (q = k) a query skips its own key unless it has no other
  (Reformer's rule for shared-QK attention; without it q_i·q_i dominates and nothing is learned).
  Decoding keeps a KV cache plus the keys' cluster ids.
      y_i = W_o concat_h softmax_j(q_i·k_j/√d | j <= i, a(k_j) = a(q_i)) v_j
- `routing_balanced` (causal=False): each centroid takes its top-`window` nearest tokens
  (balanced clusters), full attention inside each cluster, and a token in several clusters gets
  the exact mean of its cluster outputs (zero if in none). Local heads see |i - j| < window.
x [B, T, d_model] -> y [B, T, d_model]. The causal path builds a dense per-head mask (O(T²) prefill
through SDPA); the balanced path gathers clusters (O(C·w²)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.mixers.layers import apply_rope, token_positions
from attnzoo.ops.softmax.reference import softmax_attention_reference
from attnzoo.ops.sparse.routing import (
    balanced_cluster_attention,
    balanced_cluster_attention_reference,
    balanced_members,
    commitment_loss,
    kmeans_ema_update,
    nearest_centroid,
)
from attnzoo.registry import Card, Paper, register


@dataclass
class RoutingState(MixerState):
    """k, v [B, L, H, D] (RoPE applied), kc [B, L, H_routing] cluster ids, valid [B, L], kpos [B, L], seen [B]."""

    k: torch.Tensor
    v: torch.Tensor
    kc: torch.Tensor
    valid: torch.Tensor
    kpos: torch.Tensor
    seen: torch.Tensor


def masked_attention(q, k, v, allowed, *, impl):
    """q [B,Tq,H,D], k/v [B,L,H,D], allowed bool [B,H,Tq,L]; zero output for a query that sees nothing."""
    B, Tq, H, D = q.shape
    L = k.shape[1]
    if impl == "reference":
        fold = lambda t: t.permute(0, 2, 1, 3).reshape(B * H, t.shape[1], 1, t.shape[-1])
        o = softmax_attention_reference(fold(q), fold(k), fold(v), allowed=allowed.reshape(B * H, Tq, L),
                                        scale=D**-0.5)
        return o.view(B, H, Tq, -1).permute(0, 2, 1, 3)
    seen = allowed.any(-1, keepdim=True)
    bias = torch.where(allowed | ~seen, q.new_zeros(()), q.new_full((), float("-inf")))
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    return (o * seen.to(o.dtype)).transpose(1, 2)


def not_self_unless_alone(allowed, is_self):
    """Shared-QK attention (Kitaev et al. 2020, Reformer §2, which the Routing Transformer's shared
    queries/keys follow): q_i·k_i = |q_i|² is the largest logit a layer-normed query can have, so a query
    would attend mostly to itself; it may not, except where it has no other key to attend to (the first
    token, an empty cluster). allowed, is_self: bool [..., Tq, L]."""
    others = allowed & ~is_self
    return torch.where(others.any(-1, keepdim=True), others, allowed)


class RoutingAttention(Mixer):
    state_class = RoutingState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, n_clusters: int = 4,
        window: int = 64, n_local_heads: int = 1, causal: bool = True, share_qk: bool = True,
        kmeans_decay: float = 0.999, commitment: float = 1e-4, rope: bool = True, impl: str = "auto",
    ):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = hd = check_heads(d_model, n_heads, head_dim)
        if not 0 <= n_local_heads < n_heads:
            raise ValueError(f"n_local_heads must be in [0, n_heads-1] = [0, {n_heads - 1}], got {n_local_heads}")
        if n_clusters < 1 or window < 1:
            raise ValueError(f"n_clusters and window must be >= 1, got {n_clusters}, {window}")
        if not 0 < kmeans_decay < 1:
            raise ValueError(f"kmeans_decay must be in (0, 1), got {kmeans_decay}")
        if impl not in ("auto", "torch", "reference"):
            raise ValueError(f'impl must be "auto", "torch" or "reference", got {impl!r}')
        self.causal, self.share_qk, self.rope, self.impl = causal, share_qk, rope, impl
        self.n_local, self.n_routing = n_local_heads, n_heads - n_local_heads
        self.n_clusters, self.window, self.kmeans_decay, self.commitment = n_clusters, window, kmeans_decay, commitment
        self.q_proj = nn.Linear(d_model, n_heads * hd, bias=False)
        self.k_proj = None if share_qk else nn.Linear(d_model, n_heads * hd, bias=False)
        self.v_proj = nn.Linear(d_model, n_heads * hd, bias=False)
        self.o_proj = nn.Linear(n_heads * hd, d_model, bias=False)
        mu = F.layer_norm(torch.randn(self.n_routing, n_clusters, hd), (hd,))
        self.register_buffer("centroids", mu)
        self.register_buffer("ema_sums", mu.clone())
        self.register_buffer("ema_counts", torch.ones(self.n_routing, n_clusters))

    def qkv(self, x):
        """Layer-normed (no gain) q, k and v: [B, T, H, hd] each."""
        B, T, _ = x.shape
        q = F.layer_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim), (self.head_dim,))
        k = q if self.share_qk else F.layer_norm(self.k_proj(x).view(B, T, self.n_heads, self.head_dim),
                                                 (self.head_dim,))
        return q, k, self.v_proj(x).view(B, T, self.n_heads, self.head_dim)

    def check_state(self, state):
        if tuple(state.k.shape[2:]) != (self.n_heads, self.head_dim) or state.kc.shape[2] != self.n_routing:
            raise ValueError(f"routing state must hold k [B, L, {self.n_heads}, {self.head_dim}] and kc "
                             f"[B, L, {self.n_routing}], got {tuple(state.k.shape)}, {tuple(state.kc.shape)}")

    def _route(self, q, k, real):
        """Cluster ids of the routing heads' queries and keys; k-means step and aux loss in training."""
        R = slice(self.n_local, self.n_heads)
        qr, kr = q[:, :, R], k[:, :, R]
        qc = nearest_centroid(qr, self.centroids)
        kc = qc if self.share_qk else nearest_centroid(kr, self.centroids)
        self.aux_loss = None
        if self.training:
            w = real.to(q.dtype)
            loss = commitment_loss(qr, self.centroids, qc, w)
            if not self.share_qk:
                loss = loss + commitment_loss(kr, self.centroids, kc, w)
            self.aux_loss = self.commitment * loss
            upd = {"decay": self.kmeans_decay}
            kmeans_ema_update(self.ema_sums, self.ema_counts, self.centroids, qr.detach(), qc, w, **upd)
            if not self.share_qk:
                kmeans_ema_update(self.ema_sums, self.ema_counts, self.centroids, kr.detach(), kc, w, **upd)
        return qc, kc

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        pos = token_positions(mask, B, T, None if state is None else state.seen, x.device)
        impl = "reference" if self.impl == "reference" else "torch"
        if self.causal:
            qc, kc = self._route(q, k, real)
        elif self.training:
            self._route(q, k, real)
        if self.rope:
            q, k = apply_rope(q, pos, 10000.0), apply_rope(k, pos, 10000.0)
        if not self.causal:
            o = self._balanced(q, k, v, pos, real, impl)
            return self.o_proj(o.reshape(B, T, -1)), None
        if state is not None:
            k = torch.cat([state.k.to(k.dtype), k], 1)
            v = torch.cat([state.v.to(v.dtype), v], 1)
            kc = torch.cat([state.kc, kc], 1)
            valid, kpos = torch.cat([state.valid, real], 1), torch.cat([state.kpos, pos], 1)
        else:
            valid, kpos = real, pos
        base = (kpos[:, None, :] <= pos[:, :, None]) & valid[:, None, :]  # [B, Tq, L]
        local = base & (pos[:, :, None] - kpos[:, None, :] < self.window)
        routed = base[:, None] & (qc.permute(0, 2, 1)[..., None] == kc.permute(0, 2, 1)[:, :, None, :])
        allowed = torch.cat([local[:, None].expand(-1, self.n_local, -1, -1), routed], 1)
        if self.share_qk:
            allowed = not_self_unless_alone(allowed, (kpos[:, None, :] == pos[:, :, None])[:, None])
        o = masked_attention(q, k, v, allowed, impl=impl)
        y = self.o_proj(o.reshape(B, T, -1))
        new_state = None
        if return_state:
            seen = real.long().sum(1) + (0 if state is None else state.seen)
            new_state = RoutingState(k=k, v=v, kc=kc, valid=valid, kpos=kpos, seen=seen)
        return y, new_state

    def _balanced(self, q, k, v, pos, real, impl):
        L, R = slice(0, self.n_local), slice(self.n_local, self.n_heads)
        outs = []
        if self.n_local:
            near = ((pos[:, :, None] - pos[:, None, :]).abs() < self.window) & real[:, None, :]
            outs.append(masked_attention(q[:, :, L], k[:, :, L], v[:, :, L],
                                         near[:, None].expand(-1, self.n_local, -1, -1), impl=impl))
        qi, qok = balanced_members(q[:, :, R], self.centroids, real, self.window)
        ki, kok = (qi, qok) if self.share_qk else balanced_members(k[:, :, R], self.centroids, real, self.window)
        fn = balanced_cluster_attention_reference if impl == "reference" else balanced_cluster_attention
        outs.append(fn(q[:, :, R], k[:, :, R], v[:, :, R], qi, qok, ki, kok)[0])
        return torch.cat(outs, 2)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_local_heads={self.n_local}, "
                f"n_clusters={self.n_clusters}, window={self.window}, causal={self.causal}, share_qk={self.share_qk}")


ROY = Paper("Efficient Content-Based Sparse Attention with Routing Transformers", "Roy et al.", 2021, "2003.05997")


def routing_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                        n_local_heads: int = 1) -> int:
    """Per cached token fp32 K and V of every head, one int64 cluster id per routing head, a bool `valid`
    and an int64 `kpos`; plus the int64 `seen`."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return seq_len * (2 * n_heads * hd * 4 + (n_heads - n_local_heads) * 8 + 1 + 8) + 8


def kv_read_fraction(seq_len: int, n_heads: int = 4, n_local_heads: int = 1, n_clusters: int = 4,
                     window: int = 64) -> float:
    """Expected share of the cache one decode step reads (cost model): the local window for local
    heads, one cluster (1/n_clusters of the keys if balanced) for routing heads."""
    return (n_local_heads * min(1.0, window / seq_len) + (n_heads - n_local_heads) / n_clusters) / n_heads


@register(
    "routing",
    card=Card(
        title="Routing attention, causal (online k-means clusters + local heads)",
        paper=ROY, family="routed", complexity="O(T^2/C d) (dense mask here)",
        state_bytes=routing_state_bytes, kv_read_fraction=kv_read_fraction, causal=True,
        example_kwargs={"n_heads": 4, "n_clusters": 3, "window": 4, "n_local_heads": 1},
    ),
)
class Routing(RoutingAttention):
    """Causal routing attention; see the module docstring."""


@register(
    "routing_balanced",
    card=Card(
        title="Routing attention, balanced clusters (top-w per centroid), bidirectional",
        paper=ROY, family="routed", complexity="O(C w^2 d)",
        state_bytes=lambda d_model, n_heads, seq_len: 0, causal=False, bidirectional=True, decode=False,
        example_kwargs={"n_heads": 4, "n_clusters": 3, "window": 8, "n_local_heads": 1},
    ),
)
class RoutingBalanced(RoutingAttention):
    """Balanced (non-causal) routing attention: cluster membership depends on the whole sequence."""

    def __init__(self, d_model: int, *, causal: bool = False, **kw):
        if causal:
            raise ValueError("routing_balanced is non-causal (top-w membership sees the whole sequence); "
                             "use routing for causal models")
        super().__init__(d_model, causal=False, **kw)
