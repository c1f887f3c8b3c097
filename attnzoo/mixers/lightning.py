"""TransNormerLLM's NormLinearAttention, computed by Lightning Attention (Qin et al. 2023,
"TransNormerLLM: A Faster and Better Large Language Model with Improved TransNormer",
arXiv:2307.14995; Lightning Attention-2, Qin et al. 2024, arXiv:2401.04658).

    [q, k, v, u] = x W_qkvu,   q, k <- SiLU(q), SiLU(k)
    o_t = sum_{s<=t} lambda_h^{t-s} (q_t·k_s) v_s          (no softmax, no denominator, no scale)
    y = W_o ( SRMSNorm(o) ⊙ u )
    lambda_h = exp(-s_h (1 - l/(L-1) + 1e-5)),   s_h = 2^(-8h/H), h = 1..H (ALiBi slopes)

l = layer_idx in 0..L-1 with L = n_layers (L = 1 counts as l/(L-1) = 0): the decay weakens in
deeper layers. SRMSNorm = x / sqrt(mean(x^2) + 1e-6) over the concatenated heads, no gain.
x [B, T, d_model]; q, k, v [B, T, H, head_dim]; state [B, H, head_dim, head_dim]. Padded steps
neither decay nor write the state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import check_recurrent_state, mask_steps, recurrent_state_bytes
from attnzoo.mixers.base import Mixer, RecurrentState, check_heads
from attnzoo.mixers.layers import RMSNorm
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register


def lightning_log_decays(n_heads: int, layer_idx: int, n_layers: int) -> torch.Tensor:
    """log lambda_h = -s_h (1 - l/(L-1) + 1e-5), s_h = 2^(-8h/H), h = 1..H (float64 [H])."""
    h = torch.arange(1, n_heads + 1, dtype=torch.float64)
    slopes = 2.0 ** (-8.0 * h / n_heads)
    depth = layer_idx / (n_layers - 1) if n_layers > 1 else 0.0
    return -slopes * (1.0 - depth + 1e-5)


@register(
    "lightning",
    card=Card(
        title="Lightning attention (TransNormerLLM NormLinearAttention: SiLU q/k, ALiBi-slope decay, SRMSNorm, gate u)",
        paper=Paper("TransNormerLLM: A Faster and Better Large Language Model with Improved TransNormer",
                    "Qin et al.", 2023, "2307.14995"),
        family="linear",
        complexity="O(T d^2)",
        state_bytes=lambda d_model, n_heads, seq_len, head_dim=None: recurrent_state_bytes(
            n_heads, head_dim or d_model // n_heads, head_dim or d_model // n_heads),
        example_kwargs={"n_heads": 2, "layer_idx": 1, "n_layers": 4},
    ),
)
class LightningAttention(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, layer_idx: int = 0,
        n_layers: int = 1, impl: str = "auto",
    ):
        super().__init__(d_model)
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        if not isinstance(layer_idx, int) or not 0 <= layer_idx < n_layers:
            raise ValueError(f"layer_idx must be an int in [0, n_layers={n_layers}), got {layer_idx!r}")
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        self.layer_idx, self.n_layers = layer_idx, n_layers
        self.impl = impl
        width = n_heads * self.head_dim
        self.qkvu_proj = nn.Linear(d_model, 4 * width, bias=False)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.norm = RMSNorm(width, eps=1e-6, elementwise_affine=False)

    @property
    def log_decay(self) -> torch.Tensor:
        """log lambda_h [H] in float64 (cast where used, so float64 runs keep full precision)."""
        return lightning_log_decays(self.n_heads, self.layer_idx, self.n_layers)

    def decays(self) -> torch.Tensor:
        return torch.exp(self.log_decay)

    def check_state(self, state):
        check_recurrent_state(state, (self.n_heads, self.head_dim, self.head_dim))

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v, u = self.qkvu_proj(x).view(B, T, H, 4 * D).chunk(4, -1)
        q, k = F.silu(q), mask_steps(F.silu(k), mask)
        v = mask_steps(v, mask)
        log_decay = self.log_decay.to(device=x.device, dtype=x.dtype)
        if mask is None:
            g, g_gamma = None, log_decay
        else:
            g, g_gamma = mask_steps(log_decay.expand(B, T, H), mask), None
        o, S = gated_linear_attention(
            q, k, v, g, g_gamma=g_gamma, scale=1.0, initial_state=None if state is None else state.S,
            output_final_state=return_state, impl=self.impl,
        )
        y = self.o_proj(self.norm(o.reshape(B, T, H * D)) * u.reshape(B, T, H * D))
        return y, (RecurrentState(S=S) if return_state else None)


    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"layer_idx={self.layer_idx}, n_layers={self.n_layers}")
