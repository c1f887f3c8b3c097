"""ReBased (Aksenov, Balagansky, Lo Cicero Vaina, Shaposhnikov, Gorbatovski & Gavrilov 2024, "Linear
Transformers with Learnable Kernel Functions are Better In-Context Models", arXiv:2402.10644): Based
(based.py) with its Taylor kernel 1 + qᵀk + (qᵀk)²/2, whose minimum 1/2 keeps every key's score away
from zero, replaced by a learnable quadratic kernel after a normalisation,

    q'_t = gamma_q ⊙ norm(q_t) + beta_q,   k'_s = gamma_k ⊙ norm(k_s) + beta_k      (norm: LayerNorm, no affine)
    sim(q_t, k_s) = (q'_tᵀ k'_s)² = phi(q'_t)ᵀ phi(k'_s),   phi(x) = vec(x ⊗ x)     (f² features, no 1 or x terms)
    o^lin_t = sum_{s<=t} sim(q_t, k_s) v_s / (sum_{s<=t} sim(q_t, k_s) + eps)

gamma, beta per head and feature (init 1 and 0). Everything else is Based's: per-head projections of
q and k to feature_dim, v to head_dim, the sliding-window softmax branch (window > 0) summed with the
linear branch, the normalised linear attention (ops/linear, normalize=True). State: S [B, H, f², head_dim
+ 1] (last column: the normaliser) and the window's KV cache, constant in T.
Left out of the paper: its Triton kernels and its Based-style layer stack (gated convolutions, the
placement of the sliding-window layers): as `based`, both branches live in one mixer.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.mixers._linear_common import mask_steps
from attnzoo.mixers.based import Based
from attnzoo.mixers.softmax import kv_cache_bytes
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register


def rebased_state_bytes(d_model: int, n_heads: int, seq_len: int, feature_dim: int = 16, window: int = 64,
                        window_heads: int | None = None) -> int:
    """S [H, f², head_dim + 1] fp32 plus the sliding-window branch's KV cache (none for window=0)."""
    hd = d_model // n_heads
    swa = kv_cache_bytes(d_model, window_heads or n_heads, seq_len, window=window) if window else 0
    return 4 * n_heads * feature_dim**2 * (hd + 1) + swa


def quadratic_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = vec(x ⊗ x): x [..., f] -> [..., f²], so that phi(x)ᵀ phi(y) = (xᵀ y)²."""
    return (x[..., :, None] * x[..., None, :]).flatten(-2)


class AffineNorm(nn.Module):
    """gamma ⊙ LayerNorm(x) + beta over the last dim of x [B, T, H, f], gamma and beta [H, f]."""

    def __init__(self, n_heads: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(n_heads, dim))
        self.beta = nn.Parameter(torch.zeros(n_heads, dim))

    def forward(self, x):
        xc = x - x.mean(-1, keepdim=True)
        xn = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.gamma.to(x.dtype) * xn + self.beta.to(x.dtype)


@register(
    "rebased",
    card=Card(
        title="ReBased (Based with a learnable quadratic kernel (gamma ⊙ norm(x) + beta)², + sliding-window "
              "softmax, summed)",
        paper=Paper("Linear Transformers with Learnable Kernel Functions are Better In-Context Models",
                    "Aksenov, Balagansky, Lo Cicero Vaina, Shaposhnikov, Gorbatovski & Gavrilov", 2024, "2402.10644"),
        family="linear",
        complexity="O(T (d f^2 + w d))",
        state_bytes=rebased_state_bytes,
        example_kwargs={"n_heads": 2, "feature_dim": 4, "window": 8},
        claim="A learnable affine map after a normalisation, feeding a pure quadratic kernel, lets Based's linear "
              "attention give irrelevant keys near-zero scores; ReBased beats Based on MQAR and on Pile perplexity.",
    ),
)
class ReBased(Based):
    def __init__(
        self, d_model: int, *, n_heads: int = 4, feature_dim: int = 16, window: int = 64,
        window_heads: int | None = None, impl: str = "auto",
    ):
        super().__init__(d_model, n_heads=n_heads, feature_dim=feature_dim, window=window,
                         window_heads=window_heads, impl=impl)
        self.n_features = feature_dim**2
        self.q_norm = AffineNorm(n_heads, feature_dim)
        self.k_norm = AffineNorm(n_heads, feature_dim)

    def features(self, x):
        """(phi(q') [B, T, H, f²], phi(k') [B, T, H, f²]) of x [B, T, d_model] (padding not masked)."""
        B, T, _ = x.shape
        H, f = self.n_heads, self.feature_dim
        q = quadratic_feature_map(self.q_norm(self.q_proj(x).view(B, T, H, f)))
        k = quadratic_feature_map(self.k_norm(self.k_proj(x).view(B, T, H, f)))
        return q, k

    def taylor_branch(self, x, mask, S0, return_state):
        """The linear branch with ReBased's kernel (Based's method name: the layer code is shared)."""
        B, T, _ = x.shape
        q, k = self.features(x)
        v = mask_steps(self.v_proj(x).view(B, T, self.n_heads, self.head_dim), mask)
        o, S = gated_linear_attention(q, mask_steps(k, mask), v, scale=1.0, initial_state=S0,
                                      output_final_state=return_state, normalize=True, impl=self.impl)
        return self.o_proj(o.reshape(B, T, -1)), S
