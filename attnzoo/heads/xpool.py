"""X-Pool: text-conditioned attention pooling of video frames (Gorti et al. 2022, "X-Pool:
Cross-Modal Language-Video Attention for Text-Video Retrieval", arXiv:2203.15086).

    t [N_t, D] text embeddings, v [N_v, F, D] frame embeddings
    Q = LN(t) W_Q,  K = LN(v) W_K,  V = LN(v) W_V                 (heads of size D / n_heads)
    a = softmax_F(K Qᵀ / sqrt(d_h))                                 one distribution over frames per (text, video)
    r = LN(concat_h(aᵀ V) W_O);   ψ(v|t) = LN(r + Dropout(r W_lin))
    s(t, v) = cos(t, ψ(v|t))                                         [N_t, N_v]: each video re-pooled for each text

Every projection starts as the identity (biases 0). Loss: symmetric InfoNCE on s · exp(logit_scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _identity_linear(d: int) -> nn.Linear:
    lin = nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(d))
        lin.bias.zero_()
    return lin


class XPool(nn.Module):
    def __init__(self, d_model: int, *, n_heads: int = 1, dropout: float = 0.3):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads = d_model, n_heads
        self.ln_t, self.ln_v = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.k, self.v, self.o, self.lin = (_identity_linear(d_model) for _ in range(5))
        self.ln_r, self.ln_out = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def pool(self, t, v):
        """t [N_t, D], v [N_v, F, D] -> (ψ [N_v, N_t, D], attention [N_v, N_t, F])."""
        if t.dim() != 2 or v.dim() != 3 or t.shape[-1] != self.d_model or v.shape[-1] != self.d_model:
            raise ValueError(f"t must be [N_t, {self.d_model}] and v [N_v, F, {self.d_model}], "
                             f"got {tuple(t.shape)}, {tuple(v.shape)}")
        H, dh = self.n_heads, self.d_model // self.n_heads
        q = self.q(self.ln_t(t)).view(-1, H, dh)                      # [Nt, H, dh]
        vv = self.ln_v(v)
        k = self.k(vv).view(*v.shape[:2], H, dh)                     # [Nv, F, H, dh]
        val = self.v(vv).view(*v.shape[:2], H, dh)
        logits = torch.einsum("nfhd,thd->nthf", k, q) / math.sqrt(dh)  # [Nv, Nt, H, F]
        a = torch.softmax(logits, dim=-1)
        pooled = torch.einsum("nthf,nfhd->nthd", a, val).reshape(v.shape[0], t.shape[0], self.d_model)
        r = self.ln_r(self.o(pooled))
        return self.ln_out(r + self.dropout(self.lin(r))), a.mean(2)

    def forward(self, t, v):
        """Similarity matrix s [N_t, N_v] = cos(t_i, ψ(v_j | t_i))."""
        psi, _ = self.pool(t, v)                                      # [Nv, Nt, D]
        return torch.einsum("td,vtd->tv", F.normalize(t, dim=-1), F.normalize(psi, dim=-1))


def symmetric_infonce(sims: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP-style loss for paired (text i, video i): mean of the t->v and v->t cross-entropies."""
    if sims.dim() != 2 or sims.shape[0] != sims.shape[1]:
        raise ValueError(f"sims must be square [N, N] (text i pairs with video i), got {tuple(sims.shape)}")
    logits = sims * logit_scale.exp()
    target = torch.arange(sims.shape[0], device=sims.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
