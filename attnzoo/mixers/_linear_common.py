"""Pieces shared by the linear-attention and gated-recurrence mixers (linear, based, retnet,
lightning, gla, hgrn2, mamba2, deltanet, gated_deltanet, lawcat).

- `mask_steps`: zero tensors at padded steps (k, v, log gates, beta) so padding leaves the state alone;
- `l2_normalize`: unit-norm keys/queries (a zero vector stays zero);
- feature maps for linear attention, including the 2nd-order Taylor map of Based;
- `HeadNorm`: a norm per head over the value dim ([B, T, H, V]) with its own affine per head
  (GroupNorm with H groups = LayerNorm per head, or RMSNorm per head);
- `check_recurrent_state`: shape checks for a RecurrentState.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import RecurrentState, drop_padding
from attnzoo.ops.norm import l2_norm

FEATURE_MAPS = ("identity", "elu", "relu", "taylor")


def mask_steps(t: torch.Tensor | None, mask: torch.Tensor | None):
    """t [B, T, ...] with padded steps (mask False) set to zero (by `where`: an inf or NaN there
    cannot leak); mask None leaves t as is."""
    return drop_padding(t, mask)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) over the last dim (ops.norm.l2_norm: fused on CUDA when NORM_TRITON_AUTO is on)."""
    return l2_norm(x, eps)


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Second-order Taylor map of exp (Based, Arora et al. 2024, arXiv:2402.18668):

        phi(x) = [1, x / d^{1/4}, vec(x ⊗ x) / (sqrt(2) sqrt(d))]         x [..., d] -> [..., 1 + d + d^2]

    so that phi(q)·phi(k) = 1 + q·k/sqrt(d) + (q·k)^2 / (2d) ≈ exp(q·k/sqrt(d)).
    """
    d = x.shape[-1]
    x1 = x / d**0.25
    x2 = (x[..., :, None] * x[..., None, :]).flatten(-2) / (math.sqrt(2.0) * math.sqrt(d))
    return torch.cat([torch.ones_like(x[..., :1]), x1, x2], -1)


def feature_map(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "identity":
        return x
    if kind == "elu":
        return F.elu(x) + 1.0
    if kind == "relu":
        return F.relu(x)
    if kind == "taylor":
        return taylor_feature_map(x)
    raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {kind!r}")


def feature_dim(kind: str, d: int) -> int:
    return 1 + d + d * d if kind == "taylor" else d


class HeadNorm(nn.Module):
    """Norm over the last dim of x [B, T, H, V], separately per head, with an affine per head:
    kind="layer" (GroupNorm with H groups, as RetNet/GLA) or "rms" (RMSNorm per head)."""

    def __init__(self, n_heads: int, dim: int, *, kind: str = "layer", eps: float = 1e-5):
        super().__init__()
        if kind not in ("layer", "rms"):
            raise ValueError(f"kind must be 'layer' or 'rms', got {kind!r}")
        self.kind = kind
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_heads, dim))
        self.bias = nn.Parameter(torch.zeros(n_heads, dim)) if kind == "layer" else None

    def forward(self, x):
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.kind == "layer":
            xf = xf - xf.mean(-1, keepdim=True)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(xf.dtype)
        if self.bias is not None:
            y = y + self.bias.to(xf.dtype)
        return y.to(x.dtype)


def check_recurrent_state(state: RecurrentState, s_shape: tuple, conv=None):
    """Raise ValueError unless state.S is [B, *s_shape] and (when `conv` is a ShortConv) state.conv
    is its cache."""
    S = state.S
    if not isinstance(S, torch.Tensor) or tuple(S.shape[1:]) != tuple(s_shape):
        got = tuple(S.shape) if isinstance(S, torch.Tensor) else type(S).__name__
        raise ValueError(f"state.S must be [B, {', '.join(map(str, s_shape))}], got {got}")
    if conv is not None:
        if state.conv is None:
            raise ValueError("state.conv must hold the short-conv cache, got None")
        conv.check_cache(state.conv, S.shape[0])


def recurrent_state_bytes(n_heads: int, k: int, v: int, conv_channels: int = 0, conv_kernel: int = 4) -> int:
    """fp32 bytes of a [H, K, V] matrix state plus a short-conv cache of conv_channels x (kernel-1)."""
    return 4 * (n_heads * k * v + conv_channels * max(conv_kernel - 1, 0))
