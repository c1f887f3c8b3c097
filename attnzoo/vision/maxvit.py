"""MaxViT multi-axis attention: block (local window) and grid (dilated, global) attention.

Tu, Talebi, Zhang, Yang, Milanfar, Bovik, Li (2022), "MaxViT: Multi-Axis Vision Transformer",
arXiv:2204.01697.

x [B, H, W, C] -> y [B, H, W, C].
- Block attention, window P: reshape (H, W) -> (H/P, P, W/P, P); each P×P window is one group.
- Grid attention, grid G: reshape (H, W) -> (G, H/G, G, W/G) and group over the G×G axes, so each
  group is the G×G set of tokens at stride (H/G, W/G), spread over the whole image.
Inside a group of S×S tokens (S = P or G), per head, with a learned bias table
B_h ∈ R^{(2S-1)×(2S-1)} indexed by the 2-D offset between the tokens' group coordinates:

    attn_h(i, j) = softmax_j(q_i·k_j / sqrt(d) + B_h[r_j - r_i + S - 1, c_j - c_i + S - 1])

MaxViTBlock = MBConv (expand 4, depthwise 3×3, squeeze-excitation 0.25, pre-BN residual)
-> block attention + FFN -> grid attention + FFN, every sub-layer pre-LN with a residual (and
optional drop-path). The stage-level downsampling of the first block is not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.vision.common import check_divisible, check_image


def block_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * H/P * W/P, P*P, C]: one row per P×P window."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // size, size, W // size, size, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, C)


def block_unpartition(x: torch.Tensor, size: int, B: int, H: int, W: int) -> torch.Tensor:
    x = x.reshape(B, H // size, W // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


def grid_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * H/G * W/G, G*G, C]: one row per set of tokens at stride (H/G, W/G)."""
    B, H, W, C = x.shape
    x = x.reshape(B, size, H // size, size, W // size, C).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, size * size, C)


def grid_unpartition(x: torch.Tensor, size: int, B: int, H: int, W: int) -> torch.Tensor:
    x = x.reshape(B, H // size, W // size, size, size, -1).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, H, W, -1)


def relative_bias_index(size: int, device=None) -> torch.Tensor:
    """[S*S, S*S] index into the flattened (2S-1)×(2S-1) table for the offset between two tokens."""
    r, c = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    dr = r[None, :] - r[:, None] + size - 1
    dc = c[None, :] - c[:, None] + size - 1
    return dr * (2 * size - 1) + dc


class RelativeGroupAttention(nn.Module):
    """Multi-head softmax attention inside groups of S×S tokens with a 2-D relative bias per head.

    x [N, S*S, C] -> [N, S*S, C].
    """

    def __init__(self, dim: int, *, n_heads: int, size: int):
        super().__init__()
        if dim <= 0 or n_heads <= 0 or dim % n_heads:
            raise ValueError(f"dim={dim} must be a positive multiple of n_heads={n_heads}")
        if size < 1:
            raise ValueError(f"window/grid size must be >= 1, got {size}")
        self.dim, self.n_heads, self.head_dim, self.size = dim, n_heads, dim // n_heads, size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.randn(n_heads, 2 * size - 1, 2 * size - 1) * 0.02)
        self.register_buffer("bias_index", relative_bias_index(size), persistent=False)

    def relative_bias(self) -> torch.Tensor:
        """[heads, S*S, S*S]."""
        return self.bias_table.flatten(1)[:, self.bias_index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, C = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.relative_bias().to(x.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])  # scale 1/sqrt(d) by default
        return self.proj(o.transpose(1, 2).reshape(N, L, C))


class _AxisAttention(nn.Module):
    partition = staticmethod(block_partition)
    unpartition = staticmethod(block_unpartition)
    what = "window size"

    def __init__(self, dim: int, *, n_heads: int, size: int):
        super().__init__()
        self.dim, self.size = dim, size
        self.attn = RelativeGroupAttention(dim, n_heads=n_heads, size=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.dim)
        B, H, W, _ = x.shape
        check_divisible(H, W, self.size, self.what)
        return self.unpartition(self.attn(self.partition(x, self.size)), self.size, B, H, W)


class BlockAttention(_AxisAttention):
    """Attention inside each P×P window of x [B, H, W, C]."""


class GridAttention(_AxisAttention):
    """Attention inside each G×G grid of tokens at stride (H/G, W/G) of x [B, H, W, C]."""

    partition = staticmethod(grid_partition)
    unpartition = staticmethod(grid_unpartition)
    what = "grid size"


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability p."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


class MBConv(nn.Module):
    """Pre-BN inverted bottleneck with squeeze-excitation; returns the branch proj(SE(dw(expand(BN x))))."""

    def __init__(self, dim: int, *, expansion: int = 4, se_ratio: float = 0.25):
        super().__init__()
        hidden = dim * expansion
        se = max(1, int(dim * se_ratio))
        self.norm = nn.BatchNorm2d(dim)
        self.expand = nn.Sequential(nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.GELU())
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.GELU()
        )
        self.se = nn.Sequential(nn.Conv2d(hidden, se, 1), nn.SiLU(), nn.Conv2d(se, hidden, 1), nn.Sigmoid())
        self.project = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):  # x [B, H, W, C]
        h = self.dw(self.expand(self.norm(x.permute(0, 3, 1, 2))))
        h = h * self.se(h.mean((2, 3), keepdim=True))
        return self.project(h).permute(0, 2, 3, 1)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, ratio: int = 4):
        super().__init__(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class MaxViTBlock(nn.Module):
    """MBConv -> block attention + FFN -> grid attention + FFN on x [B, H, W, dim]."""

    def __init__(
        self, dim: int, *, n_heads: int, window_size: int = 7, grid_size: int = 7, mlp_ratio: int = 4,
        expansion: int = 4, se_ratio: float = 0.25, drop_path: float = 0.0, mbconv: bool = True,
    ):
        super().__init__()
        self.dim, self.drop_path = dim, drop_path
        self.mbconv = MBConv(dim, expansion=expansion, se_ratio=se_ratio) if mbconv else None
        self.norm1, self.block_attn = nn.LayerNorm(dim), BlockAttention(dim, n_heads=n_heads, size=window_size)
        self.norm2, self.ffn1 = nn.LayerNorm(dim), FeedForward(dim, mlp_ratio)
        self.norm3, self.grid_attn = nn.LayerNorm(dim), GridAttention(dim, n_heads=n_heads, size=grid_size)
        self.norm4, self.ffn2 = nn.LayerNorm(dim), FeedForward(dim, mlp_ratio)

    def forward(self, x):
        check_image(x, self.dim)
        H, W = x.shape[1:3]
        check_divisible(H, W, self.block_attn.size, "window size")
        check_divisible(H, W, self.grid_attn.size, "grid size")
        p, tr = self.drop_path, self.training
        if self.mbconv is not None:
            x = x + drop_path(self.mbconv(x), p, tr)
        x = x + drop_path(self.block_attn(self.norm1(x)), p, tr)
        x = x + drop_path(self.ffn1(self.norm2(x)), p, tr)
        x = x + drop_path(self.grid_attn(self.norm3(x)), p, tr)
        return x + drop_path(self.ffn2(self.norm4(x)), p, tr)
