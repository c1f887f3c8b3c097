"""Attention pooling over a set of instances, with optional per-instance type (view) embeddings,
and its stacked form over several context sets.

Ilse, Tomczak & Welling 2018, "Attention-based Deep Multiple Instance Learning", arXiv:1802.04712
(the plain and gated attention); used view-informed in EchoPrime (Vukadinovic et al. 2024,
arXiv:2410.09704) and stacked over context sets in RP-DNN (multi-layered attention over contexts).

    h [B, N, d] instances, types [B, N] long (optional), mask [B, N] bool (True = real)
    h̃_i = h_i + E_type[types_i]
    plain: s_i = wᵀ tanh(V h̃_i)          gated: s_i = wᵀ (tanh(V h̃_i) ⊙ σ(U h̃_i))
    a = softmax_i(s) over real instances;  pooled = Σ_i a_i h̃_i            [B, d]
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionPool(nn.Module):
    def __init__(self, d_model: int, *, hidden: int = 64, gated: bool = True, n_types: int = 0):
        super().__init__()
        self.d_model = d_model
        self.V = nn.Linear(d_model, hidden)
        self.U = nn.Linear(d_model, hidden) if gated else None
        self.w = nn.Linear(hidden, 1, bias=False)
        self.type_embed = nn.Embedding(n_types, d_model) if n_types else None

    def forward(self, h, *, mask=None, types=None):
        """Returns (pooled [B, d], weights [B, N])."""
        if h.dim() != 3 or h.shape[-1] != self.d_model:
            raise ValueError(f"h must be [B, N, {self.d_model}], got {tuple(h.shape)}")
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(h.shape[:2])):
            raise ValueError(f"mask must be bool [B, N] = {tuple(h.shape[:2])}")
        if types is not None:
            if self.type_embed is None:
                raise ValueError("types given, but the pool was built with n_types=0")
            if tuple(types.shape) != tuple(h.shape[:2]):
                raise ValueError(f"types must be [B, N] = {tuple(h.shape[:2])}, got {tuple(types.shape)}")
            h = h + self.type_embed(types)
        z = torch.tanh(self.V(h))
        if self.U is not None:
            z = z * torch.sigmoid(self.U(h))
        s = self.w(z).squeeze(-1)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        a = torch.softmax(s, dim=-1)
        return (a[..., None] * h).sum(1), a


class StackedAttentionPool(nn.Module):
    """Pool each context set with its own AttentionPool, then attention-pool across the pooled contexts."""

    def __init__(self, d_model: int, n_contexts: int, *, hidden: int = 64, gated: bool = True, n_types: int = 0):
        super().__init__()
        self.pools = nn.ModuleList(AttentionPool(d_model, hidden=hidden, gated=gated, n_types=n_types)
                                   for _ in range(n_contexts))
        self.top = AttentionPool(d_model, hidden=hidden, gated=gated)

    def forward(self, contexts, *, masks=None, types=None):
        """contexts: list of [B, N_c, d] -> (pooled [B, d], top weights [B, n_contexts], per-context weights)."""
        if len(contexts) != len(self.pools):
            raise ValueError(f"expected {len(self.pools)} context sets, got {len(contexts)}")
        pooled, weights = [], []
        for i, (pool, h) in enumerate(zip(self.pools, contexts)):
            p, a = pool(h, mask=None if masks is None else masks[i], types=None if types is None else types[i])
            pooled.append(p)
            weights.append(a)
        out, top = self.top(torch.stack(pooled, 1))
        return out, top, weights
