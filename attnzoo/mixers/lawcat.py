"""LAWCAT: linear attention with a causal Conv1D on q and k, built to be distilled from a softmax
teacher (Liu et al. 2025, "LAWCAT: Efficient Distillation from Quadratic to Linear Attention with
Convolution across Tokens for Long Context Modeling", arXiv:2509.18467).

    q, k, v = x W_q, x W_k, x W_v                                  (the teacher's projections)
    q~_t = sum_{j=0}^{3} w^q_j ⊙ q_{t-j},   k~_t = sum_j w^k_j ⊙ k_{t-j}      (depthwise, no activation)
    phi(u) = act(u W_phi)       one feature map per head, shared by q~ and k~ (so phi(q)·phi(k) is a kernel)
    S_t = a_t S_{t-1} + phi(k~_t) v_tᵀ,   z_t = a_t z_{t-1} + phi(k~_t)
    o_t = phi(q~_t)ᵀ S_t / (phi(q~_t)ᵀ z_t + eps),     y = W_o o

act = "softmax": [softmax(uW), softmax(-uW)] over the features (the Hedgehog map LoLCATs uses;
2F features), or "elu": elu(uW) + 1. The gate form is not confirmed from the official code
(MECHANISMS.md entry 2, [inferred]): here a scalar per head, log a_t = logsigmoid(x_t W_a + b_a) / tau,
applied to state and normaliser alike. The convs start as the identity (last tap 1; conv_init=
"random" for a random start), so an untrained student sees the teacher's q and k. No softmax sliding window.
x [B, T, d_model]; q, k, v [B, T, H, head_dim]; state S [B, H, F', head_dim + 1] (last column z)
and the conv cache [B, 3, 2·H·head_dim]. Padded steps are skipped by the conv and get a = 1,
phi(k) = 0, v = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import check_recurrent_state, mask_steps, recurrent_state_bytes
from attnzoo.mixers.base import Mixer, RecurrentState, check_heads
from attnzoo.mixers.short_conv import ShortConv
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register

LAWCAT_FEATURES = ("softmax", "elu")


def lawcat_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                       feature_dim: int | None = None, feature_activation: str = "softmax",
                       conv_kernel: int = 4) -> int:
    """S [H, F, head_dim + 1] (F = feature_dim, twice that for the softmax map) plus the q/k conv cache."""
    hd = d_model // n_heads if head_dim is None else head_dim
    n_features = (hd if feature_dim is None else feature_dim) * (2 if feature_activation == "softmax" else 1)
    return recurrent_state_bytes(n_heads, n_features, hd + 1, conv_channels=2 * n_heads * hd, conv_kernel=conv_kernel)


@register(
    "lawcat",
    card=Card(
        title="LAWCAT (causal Conv1D on q/k, shared learned feature map, gated normalised linear attention)",
        paper=Paper("LAWCAT: Efficient Distillation from Quadratic to Linear Attention with Convolution "
                    "across Tokens for Long Context Modeling", "Liu et al.", 2025, "2509.18467"),
        family="linear",
        complexity="O(T d^2)",
        state_bytes=lawcat_state_bytes,
        example_kwargs={"n_heads": 2, "feature_dim": 8, "conv_init": "random"},
    ),
)
class LAWCAT(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, feature_dim: int | None = None,
        feature_activation: str = "softmax", conv_kernel: int = 4, conv_init: str = "identity", gate_tau: float = 16.0,
        impl: str = "auto",
    ):
        super().__init__(d_model)
        if feature_activation not in LAWCAT_FEATURES:
            raise ValueError(f"feature_activation must be one of {LAWCAT_FEATURES}, got {feature_activation!r}")
        if conv_init not in ("identity", "random"):
            raise ValueError(f"conv_init must be 'identity' or 'random', got {conv_init!r}")
        if gate_tau <= 0:
            raise ValueError(f"gate_tau must be positive, got {gate_tau}")
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.feature_dim = self.head_dim if feature_dim is None else feature_dim
        if self.feature_dim <= 0:
            raise ValueError(f"feature_dim must be positive, got {self.feature_dim}")
        self.feature_activation = feature_activation
        self.n_features = self.feature_dim * (2 if feature_activation == "softmax" else 1)
        self.gate_tau = gate_tau
        self.impl = impl
        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.qk_conv = ShortConv(2 * width, kernel_size=conv_kernel)
        if conv_init == "identity":
            with torch.no_grad():
                self.qk_conv.weight.zero_()
                self.qk_conv.weight[:, -1] = 1.0
        self.feature_weight = nn.Parameter(torch.randn(n_heads, self.head_dim, self.feature_dim) * self.head_dim**-0.5)
        self.a_proj = nn.Linear(d_model, n_heads, bias=True)

    def check_state(self, state):
        check_recurrent_state(state, (self.n_heads, self.n_features, self.head_dim + 1), conv=self.qk_conv)

    def phi(self, u):
        """The shared feature map: u [B, T, H, head_dim] -> [B, T, H, F'] (positive)."""
        z = torch.einsum("bthd,hdf->bthf", u, self.feature_weight.to(u.dtype))
        if self.feature_activation == "softmax":
            return torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], -1)
        return F.elu(z) + 1.0

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        qk = torch.cat([self.q_proj(x), self.k_proj(x)], -1)
        qk, conv_cache = self.qk_conv(qk, mask=mask, cache=None if state is None else state.conv,
                                      output_cache=return_state)
        q, k = qk.view(B, T, 2, H, D).unbind(2)
        q, k = self.phi(q), mask_steps(self.phi(k), mask)
        v = mask_steps(self.v_proj(x).view(B, T, H, D), mask)
        g = mask_steps(F.logsigmoid(self.a_proj(x)) / self.gate_tau, mask)
        o, S = gated_linear_attention(
            q, k, v, g, scale=1.0, initial_state=None if state is None else state.S,
            output_final_state=return_state, normalize=True, impl=self.impl,
        )
        y = self.o_proj(o.reshape(B, T, H * D))
        return y, (RecurrentState(S=S, conv=conv_cache) if return_state else None)


    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"feature_dim={self.feature_dim}, feature_activation={self.feature_activation}")
