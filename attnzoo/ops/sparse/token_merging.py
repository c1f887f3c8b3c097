"""Bipartite soft matching (token merging; Bolya et al. 2023, "Token Merging: Your ViT But Faster",
arXiv:2210.09461), padding-aware, on a compacted token array.

Tokens [B, N, C] with `active` [B, N] (active tokens first, in order) and `size` [B, N] (how many
original tokens each stands for). Per row with n active tokens: A = even slots, B = odd slots;
every A token finds its most similar B token (cosine of `metric`); the r = floor(ratio·n) A tokens
with the highest similarity are merged into their match by size-weighted averaging
    x_j ← (s_j x_j + Σ_{i→j} s_i x_i) / (s_j + Σ_{i→j} s_i),      s_j ← s_j + Σ_{i→j} s_i
Inactive (padded or already merged) tokens are never matched, so padding never merges into real tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compact(x, size, active, group):
    """Move active tokens first (order kept), truncate to the largest active count; remap group [B, T0]."""
    perm = torch.argsort((~active).to(torch.int8), dim=1, stable=True)
    n_max = max(int(active.sum(1).max()), 1)
    inv = torch.argsort(perm, dim=1)
    perm = perm[:, :n_max]
    x = torch.gather(x, 1, perm[..., None].expand(-1, -1, x.shape[-1]))
    inv = inv.clamp_max(n_max - 1)  # padded originals point at some slot; their outputs are never used
    return x, torch.gather(size, 1, perm), torch.gather(active, 1, perm), torch.gather(inv, 1, group)


def bipartite_merge(x, metric, size, active, group, *, ratio: float):
    """One merging step. x [B,N,C], metric [B,N,Cm], size [B,N], active [B,N] (compacted), group [B,T0]
    (index of each original token's current token). Returns the compacted (x, size, active, group)."""
    B, N, C = x.shape
    n = active.sum(1)  # [B]
    slot = torch.arange(N, device=x.device)
    is_a = active & (slot % 2 == 0)
    is_b = active & (slot % 2 == 1)
    m = F.normalize(metric.to(x.dtype), dim=-1)
    sim = m @ m.transpose(1, 2)  # [B, N, N]
    sim = sim.masked_fill(~(is_a[:, :, None] & is_b[:, None, :]), float("-inf"))
    score, dest = sim.max(-1)  # best B partner per A token
    r = torch.minimum((ratio * n).floor().long(), is_a.sum(1) * (is_b.sum(1) > 0))  # [B]
    order = torch.argsort(score, dim=1, descending=True, stable=True)
    rank = torch.argsort(order, dim=1)
    merged = is_a & (rank < r[:, None])
    target = torch.where(merged, dest, slot.expand(B, N))  # where each token's mass goes
    w = (size * active).to(x.dtype)
    new_size = torch.zeros_like(w).scatter_add(1, target, w)
    new_x = torch.zeros_like(x).scatter_add(1, target[..., None].expand(-1, -1, C), x * w[..., None])
    new_x = new_x / new_size.clamp_min(1e-12)[..., None]
    new_x = torch.where((active & ~merged)[..., None], new_x, x)
    group = torch.gather(target, 1, group)
    return compact(new_x, torch.where(merged, torch.zeros_like(size), new_size.to(size.dtype)),
                   active & ~merged, group)
