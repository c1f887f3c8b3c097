"""One layer of H-head attention that predicts at a query token from L context tokens (no MLP).

The model of in-context linear regression (He, Pan, Chen, Yang 2025, arXiv:2503.12734) and of
AR(p) forecasting with linear self-attention (Zhou, Wang, Goel, Zhang 2025, arXiv:2510.09776):
tokens z_l ∈ R^d (l = 1..L) and a query z_q; each head has a key-query matrix KQ_h and an
output-value matrix OV_h ∈ R^{d×d}, and the prediction is the last coordinate of

    softmax:  o = Σ_h OV_h Σ_l z_l softmax_l(z_lᵀ KQ_h z_q)
    linear:   o = Σ_h OV_h (1/L) Σ_l z_l (z_lᵀ KQ_h z_q)          (LSA: H += (1/n) P H M HᵀQ H)

The query attends to the L context tokens only (the LSA mask M = diag(I_n, 0) keeps the query
column out of the keys; here it is out of the softmax normaliser too). z [N, L+1, d] with the query
last -> ŷ [N]. Parameters kq, ov [H, d, d], initialised N(0, init_std²) as in the LSA code.
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTIONS = ("softmax", "linear")


class InContextAttention(nn.Module):
    def __init__(self, dim: int, *, n_heads: int = 1, attention: str = "softmax", init_std: float = 0.01):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if dim < 2 or n_heads < 1:
            raise ValueError(f"dim must be >= 2 and n_heads >= 1, got {dim}, {n_heads}")
        self.dim, self.n_heads, self.attention = dim, n_heads, attention
        self.kq = nn.Parameter(torch.randn(n_heads, dim, dim) * init_std)
        self.ov = nn.Parameter(torch.randn(n_heads, dim, dim) * init_std)

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        """Attention of the query on the context, [N, H, L] (softmax rows sum to 1; linear: scores / L)."""
        if z.dim() != 3 or z.shape[-1] != self.dim or z.shape[1] < 2:
            raise ValueError(f"z must be [N, L+1, {self.dim}] with L >= 1, got {tuple(z.shape)}")
        ctx, q = z[:, :-1], z[:, -1]
        s = torch.einsum("nld,nhd->nhl", ctx, torch.einsum("hde,ne->nhd", self.kq.to(z.dtype), q))
        return s.softmax(-1) if self.attention == "softmax" else s / ctx.shape[1]

    def output(self, z: torch.Tensor) -> torch.Tensor:
        """The attention output at the query, o [N, d]."""
        pooled = torch.einsum("nhl,nld->nhd", self.weights(z), z[:, :-1])
        return torch.einsum("hed,nhd->ne", self.ov.to(z.dtype), pooled)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.output(z)[:, -1]

    def extra_repr(self):
        return f"dim={self.dim}, n_heads={self.n_heads}, attention={self.attention!r}"
