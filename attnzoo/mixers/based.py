"""Based: Taylor linear attention plus sliding-window softmax attention (Arora et al. 2024,
"Simple linear attention language models balance the recall-throughput tradeoff",
arXiv:2402.18668).

    phi(x) = [1, x/d^{1/4}, vec(x ⊗ x)/(√2 √d)]            (2nd-order Taylor map, d = feature_dim)
    o^lin_t = phi(q_t)ᵀ Σ_{s<=t} phi(k_s) v_sᵀ / (phi(q_t)ᵀ Σ_{s<=t} phi(k_s) + eps)
    o^swa_t = Σ_{s=t-w+1..t} softmax_s(q'_t·k'_s/√d_h) v'_s             (window w, RoPE)
    y = W_o o^lin + W'_o o^swa                               (the two branches, summed)

In the paper the two are separate layers of one stack (linear-attention layers with a few
sliding-window layers and gated convolutions between them); this mixer puts both branches in one
layer, each with its own projections, and sums their outputs. The linear branch projects q and k
to feature_dim per head (paper: 16, so 273 features) and v to head_dim = d_model / n_heads.
x [B, T, d_model]. State: S [B, H, 1 + d + d^2, head_dim + 1] (last column z) and the window's
KV cache (at most w tokens), so memory is constant in T. Padded steps get phi(k) = 0, v = 0.
window=0 drops the sliding-window branch: Taylor linear attention alone (Zoology's Figure 2 "Based",
arXiv:2312.04927, which precedes the sliding window; its state then holds no KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.mixers._linear_common import check_recurrent_state, mask_steps, taylor_feature_map
from attnzoo.mixers.base import Mixer, MixerState, RecurrentState, check_heads
from attnzoo.mixers.softmax import KVCacheState, SoftmaxAttention, kv_cache_bytes
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register


@dataclass
class BasedState(MixerState):
    """S [B, H, F, head_dim + 1] for the Taylor branch; window: the sliding-window KV cache."""

    S: torch.Tensor
    window: KVCacheState | None     # None when window=0 (no sliding-window branch)


def based_state_bytes(d_model: int, n_heads: int, seq_len: int, feature_dim: int = 16, window: int = 64,
                      window_heads: int | None = None) -> int:
    """S [H, 1 + f + f², head_dim + 1] fp32 plus the sliding-window branch's KV cache (none for window=0)."""
    hd = d_model // n_heads
    n_feat = 1 + feature_dim + feature_dim**2
    swa = kv_cache_bytes(d_model, window_heads or n_heads, seq_len, window=window) if window else 0
    return 4 * n_heads * n_feat * (hd + 1) + swa


@register(
    "based",
    card=Card(
        title="Based (Taylor-2 linear attention + sliding-window softmax, summed)",
        paper=Paper("Simple linear attention language models balance the recall-throughput tradeoff",
                    "Arora et al.", 2024, "2402.18668"),
        family="linear",
        complexity="O(T (d f^2 + w d))",
        state_bytes=based_state_bytes,
        example_kwargs={"n_heads": 2, "feature_dim": 4, "window": 8},
    ),
)
class Based(Mixer):
    state_class = BasedState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, feature_dim: int = 16, window: int = 64,
        window_heads: int | None = None, impl: str = "auto",
    ):
        super().__init__(d_model)
        if feature_dim <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be an integer >= 0 (0: no sliding-window branch), got {window!r}")
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads)
        self.feature_dim = feature_dim
        self.n_features = 1 + feature_dim + feature_dim**2
        self.impl = impl
        self.q_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.swa = None if window == 0 else SoftmaxAttention(
            d_model, n_heads=n_heads if window_heads is None else window_heads, window=window, causal=True,
            impl=impl,
        )

    def check_state(self, state):
        check_recurrent_state(RecurrentState(S=state.S), (self.n_heads, self.n_features, self.head_dim + 1))
        if self.swa is None:
            if state.window is not None:
                raise ValueError("this Based has no sliding-window branch (window=0): state.window must be None")
            return
        if not isinstance(state.window, KVCacheState):
            raise ValueError(f"state.window must be a KVCacheState, got {type(state.window).__name__}")  # noqa: TRY004
        self.swa.check_state(state.window)

    def taylor_branch(self, x, mask, S0, return_state):
        B, T, _ = x.shape
        H, f = self.n_heads, self.feature_dim
        q = taylor_feature_map(self.q_proj(x).view(B, T, H, f))
        k = mask_steps(taylor_feature_map(self.k_proj(x).view(B, T, H, f)), mask)
        v = mask_steps(self.v_proj(x).view(B, T, H, self.head_dim), mask)
        o, S = gated_linear_attention(q, k, v, scale=1.0, initial_state=S0, output_final_state=return_state,
                                      normalize=True, impl=self.impl)
        return self.o_proj(o.reshape(B, T, -1)), S

    def _forward(self, x, mask, state, return_state):
        y_lin, S = self.taylor_branch(x, mask, None if state is None else state.S, return_state)
        if self.swa is None:
            return y_lin, (BasedState(S=S, window=None) if return_state else None)
        out = self.swa(x, mask=mask, state=None if state is None else state.window, return_state=return_state)
        if return_state:
            y_swa, window_state = out
            return y_lin + y_swa, BasedState(S=S, window=window_state)
        return y_lin + out, None

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, feature_dim={self.feature_dim}, "
                f"window={0 if self.swa is None else self.swa.window}")
