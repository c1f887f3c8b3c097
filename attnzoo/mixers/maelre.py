"""MAELRE-style token-merging encoder: cheap attention while the sequence is long, exact softmax once
it is short ("modality-agnostic efficient long-range encoder"; merging by bipartite soft matching,
Bolya et al. 2023, arXiv:2210.09461; linear attention, Katharopoulos et al. 2020, arXiv:2006.16236).

x [B, T, d_model] -> y [B, T, d_model], bidirectional (no state). `n_stages` internal attention
stages with residuals, h ← h + W_o^s Attn_s(RMSNorm_s(h)); between stages the most similar tokens
(cosine of the stage's keys) are merged, floor(merge_ratio · n) per stage (ops/sparse/token_merging).
A stage whose row still has more than `switch_threshold` tokens uses linear attention
(φ = elu + 1), else exact softmax; both weight each key by its size s_j (proportional attention:
softmax logits + log s_j, linear sums s_j φ(k_j)). The output is unmerged: every original token
takes its final group's vector, y = W_out h_final[group]. Padded tokens are compacted away before
the first stage and never merged with real ones; the attention kind is chosen per row from its
own real token count, so padding changes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import Mixer, check_heads
from attnzoo.mixers.layers import RMSNorm
from attnzoo.ops.conv.padding import real_tokens_first, restore_token_order
from attnzoo.ops.sparse.token_merging import bipartite_merge
from attnzoo.registry import Card, Paper, register


def size_weighted_softmax(q, k, v, size, active):
    """q/k/v [B, N, H, D], size/active [B, N] -> [B, N, H, D] (keys weighted by size)."""
    bias = torch.where(active, torch.log(size.clamp_min(1e-12)), torch.full_like(size, float("-inf")))
    bias = bias.to(q.dtype)[:, None, None, :]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    return o.transpose(1, 2)


def size_weighted_linear(q, k, v, size, active, eps=1e-6):
    """Non-causal linear attention: φ(q_i)ᵀ Σ_j s_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j s_j φ(k_j), φ = elu + 1."""
    w = (size * active).to(q.dtype)[:, :, None, None]
    fq, fk = F.elu(q) + 1, (F.elu(k) + 1) * w
    kv = torch.einsum("bnhd,bnhe->bhde", fk, v)
    z = fk.sum(1)  # [B, H, D]
    num = torch.einsum("bnhd,bhde->bnhe", fq, kv)
    den = torch.einsum("bnhd,bhd->bnh", fq, z)[..., None]
    return num / (den + eps)


class TokenMergingEncoder(Mixer):
    def __init__(self, d_model: int, *, n_heads: int = 4, n_stages: int = 3, merge_ratio: float = 0.25,
                 switch_threshold: int = 256):
        super().__init__(d_model)
        self.n_heads, self.head_dim = n_heads, check_heads(d_model, n_heads)
        if n_stages < 1:
            raise ValueError(f"n_stages must be >= 1, got {n_stages}")
        if not 0 <= merge_ratio <= 0.5:
            raise ValueError(f"merge_ratio must be in [0, 0.5] (at most every A token merges), got {merge_ratio}")
        if switch_threshold < 1:
            raise ValueError(f"switch_threshold must be >= 1, got {switch_threshold}")
        self.n_stages, self.merge_ratio, self.switch_threshold = n_stages, merge_ratio, switch_threshold
        self.norms = nn.ModuleList(RMSNorm(d_model) for _ in range(n_stages))
        self.qkv = nn.ModuleList(nn.Linear(d_model, 3 * d_model, bias=False) for _ in range(n_stages))
        self.o = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(n_stages))
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.last_token_counts: list[list[int]] = []  # per stage, tokens per row (for inspection/tests)

    def _stage(self, s, h, size, active):
        B, N, C = h.shape
        q, k, v = self.qkv[s](self.norms[s](h)).view(B, N, 3, self.n_heads, self.head_dim).unbind(2)
        n = active.sum(1)
        long_rows = n > self.switch_threshold
        outs = []
        if bool((~long_rows).any()):
            outs.append(size_weighted_softmax(q, k, v, size, active))
        if bool(long_rows.any()):
            outs.append(size_weighted_linear(q, k, v, size, active))
        o = outs[0] if len(outs) == 1 else torch.where(long_rows[:, None, None, None], outs[1], outs[0])
        return h + self.o[s](o.reshape(B, N, C)), k.reshape(B, N, C)

    def _forward(self, x, mask, state, return_state):
        B, T, C = x.shape
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        h, active, perm = real_tokens_first(x, real)  # real tokens first, in order
        size = active.to(x.dtype)
        group = torch.arange(T, device=x.device).expand(B, T)
        self.last_token_counts = []
        for s in range(self.n_stages):
            self.last_token_counts.append(active.sum(1).tolist())
            h, k = self._stage(s, h, size, active)
            if s + 1 < self.n_stages and self.merge_ratio > 0:
                h, size, active, group = bipartite_merge(h, k.detach(), size, active, group, ratio=self.merge_ratio)
        y = self.out_proj(torch.gather(h, 1, group[..., None].expand(B, T, C)))  # unmerge
        y = restore_token_order(y, perm)  # back to input order
        return y, None

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_stages={self.n_stages}, "
                f"merge_ratio={self.merge_ratio}, switch_threshold={self.switch_threshold}")


@register(
    "maelre",
    card=Card(
        title="Token-merging encoder: linear attention while long, softmax once short (MAELRE)",
        paper=Paper("Token Merging: Your ViT But Faster", "Bolya et al.", 2023, "2210.09461"),
        family="hybrid",
        complexity="O(T d^2) while T > threshold, O(n^2 d) after merging",
        state_bytes=lambda d_model, n_heads, seq_len: 0,
        causal=False,
        bidirectional=True,
        decode=False,
        example_kwargs={"n_heads": 4, "n_stages": 3, "merge_ratio": 0.3, "switch_threshold": 12},
    ),
)
class MAELRE(TokenMergingEncoder):
    """Token-merging encoder; see the module docstring."""
