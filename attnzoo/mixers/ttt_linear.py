"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States",
arXiv:2407.04620): the hidden state is a linear model trained on the sequence while it is read.

    k_t, v_t, q_t = θ_K x_t, θ_V x_t, θ_Q x_t          per head, [B, T, H, head_dim]
    f(x; W) = x + LN(W [x; 1])                          the inner model: linear (weights and bias), LN, residual
    ℓ(W; x_t) = ½ |f(k_t; W) − v_t|²                    self-supervised reconstruction loss
    W_t = W_{t-1} − η_t ∇ℓ(W'; x_t),   o_t = f(q_t; W_t),   y = θ_O o
    η_t = inner_lr · sigmoid(x_t θ_lr + b_lr) / head_dim          learned, per token and head

W' is the weights at the end of the previous mini-batch of `mini_batch` (b) real tokens: the paper's mini-batch
TTT (b = 16 there); b = 1 is the online rule (W' = W_{t-1}). The initial weights W_0 [H, head_dim,
head_dim + 1] and the inner LN's γ, β are learned in the outer loop (W_0 ~ N(0, 0.02²), bias 0, our
choice). Computed by ops/ttt: the dual form one mini-batch at a time (exact for mini-batch TTT); the
reference is the token loop with closed-form gradients. State: W' and W [B, H, head_dim, head_dim + 1]
(W' differs from W inside an open mini-batch) and the count of real tokens read [B]. Padded tokens are
skipped (they neither update W nor count towards a mini-batch).

Left out: TTT-MLP, the Mamba backbone's pieces around the layer (temporal convolution on q and k, output
gate), the paper's own initialisation and learning-rate base (ours: W_0 as above, inner_lr 1, the 1 / head_dim
scale), and its fused kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.ops.ttt import ttt_linear
from attnzoo.registry import Card, Paper, register


@dataclass
class TTTState(MixerState):
    """W' (weights the open mini-batch's gradients are taken at), W (current weights), both
    [B, H, head_dim, head_dim + 1] (last column the bias), fp32; seen [B] int64 (real tokens read)."""

    base: torch.Tensor
    W: torch.Tensor
    seen: torch.Tensor


def ttt_linear_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None) -> int:
    """W' and W, fp32 [H, hd, hd + 1] each, and the int64 token count."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return 2 * 4 * n_heads * hd * (hd + 1) + 8


@register(
    "ttt_linear",
    card=Card(
        title="TTT-Linear (hidden state = linear model with LN + residual, trained per token by mini-batch "
              "gradient descent on a reconstruction loss)",
        paper=Paper("Learning to (Learn at Test Time): RNNs with Expressive Hidden States", "Sun et al.",
                    2024, "2407.04620"),
        family="recurrent",
        complexity="O(T d (b + d))",
        state_bytes=ttt_linear_state_bytes,
        example_kwargs={"n_heads": 2, "mini_batch": 4},
        claim="A hidden state that is itself a model, trained by self-supervised gradient steps on the test "
              "sequence, keeps reducing perplexity as it conditions on more tokens, like a Transformer and "
              "unlike Mamba after 16k tokens of context, at linear cost in T.",
    ),
)
class TTTLinear(Mixer):
    state_class = TTTState

    def __init__(self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, mini_batch: int = 16,
                 inner_lr: float = 1.0, impl: str = "auto"):
        super().__init__(d_model)
        if isinstance(mini_batch, bool) or not isinstance(mini_batch, int) or mini_batch < 1:
            raise ValueError(f"mini_batch must be a positive int, got {mini_batch!r}")
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {inner_lr}")
        self.n_heads = n_heads
        self.head_dim = D = check_heads(d_model, n_heads, head_dim)
        self.mini_batch = mini_batch
        self.inner_lr = inner_lr
        self.impl = impl
        H = n_heads
        self.q_proj = nn.Linear(d_model, H * D, bias=False)
        self.k_proj = nn.Linear(d_model, H * D, bias=False)
        self.v_proj = nn.Linear(d_model, H * D, bias=False)
        self.lr_proj = nn.Linear(d_model, H, bias=True)
        W0 = torch.cat([torch.randn(H, D, D) * 0.02, torch.zeros(H, D, 1)], -1)
        self.W0 = nn.Parameter(W0)
        self.ln_weight = nn.Parameter(torch.ones(H, D))
        self.ln_bias = nn.Parameter(torch.zeros(H, D))
        self.o_proj = nn.Linear(H * D, d_model, bias=False)

    def check_state(self, state):
        shape = (self.n_heads, self.head_dim, self.head_dim + 1)
        for name in ("base", "W"):
            t = getattr(state, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape[1:]) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"state.{name} must be [B, {', '.join(map(str, shape))}], got {got}")
        if not isinstance(state.seen, torch.Tensor) or state.seen.dtype != torch.long or state.seen.dim() != 1:
            raise ValueError("state.seen must be an int64 [B] count of the real tokens read")

    def learning_rate(self, x):
        """η [B, T, H] = inner_lr · sigmoid(x θ_lr + b_lr) / head_dim."""
        return self.inner_lr * torch.sigmoid(self.lr_proj(x)) / self.head_dim

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v = (p(x).view(B, T, H, D) for p in (self.q_proj, self.k_proj, self.v_proj))
        if state is None:
            W0 = self.W0.to(x.dtype).expand(B, H, D, D + 1)
            init = (W0, W0, torch.zeros(B, dtype=torch.long, device=x.device))
        else:
            init = (state.base, state.W, state.seen)
        o, final = ttt_linear(q, k, v, self.learning_rate(x), self.ln_weight, self.ln_bias,
                              mini_batch=self.mini_batch, initial_state=init, mask=mask,
                              output_final_state=return_state, impl=self.impl)
        y = self.o_proj(o.reshape(B, T, H * D))
        return y, (TTTState(*final) if return_state else None)

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, mini_batch={self.mini_batch}"
