"""Additive attention gates (Attention U-Net) and a small residual U-Net that uses them.

Oktay, Schlemper, Le Folgoc, Lee, Heinrich, Misawa, Mori, McDonagh, Hammerla, Kainz, Glocker,
Rueckert (2018), "Attention U-Net: Learning Where to Look for the Pancreas", arXiv:1804.03999.
Used in a residual U-Net for pressure-ulcer segmentation by Chae, Hong & Kim (2021), arXiv:2101.09433.

Skip features x [B, H, W, Cx], gating signal g [B, H/2, W/2, Cg] from the coarser decoder level.
Grid version (default): W_x is a 2×2 conv with stride 2, so the gate is computed at g's scale:

    q = ψᵀ ReLU(W_x x + W_g g + b_g) + b_ψ        (at H/2 × W/2; ψ optionally followed by BatchNorm)
    α = upsample_bilinear(σ(q)) ∈ [0, 1]^{H×W},   x̂ = α ⊙ x

With grid=False W_x is a 1×1 conv at full resolution and W_g g is upsampled bilinearly to H×W.
`AttentionGate.forward` returns (x̂, α) with α [B, H, W, 1].

ResidualAttentionUNet: residual conv blocks (3×3 conv-BN-ReLU ×2 + 1×1 projection), max-pool
down, bilinear up; at every decoder level the skip is gated by the coarser decoder feature, then
concatenated with the upsampled feature. x [B, H, W, Cin] -> logits [B, H, W, Cout];
H and W must be divisible by 2**depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.vision.common import check_divisible, check_image


def _nchw(x):
    return x.permute(0, 3, 1, 2)


def _nhwc(x):
    return x.permute(0, 2, 3, 1)


class AttentionGate(nn.Module):
    def __init__(
        self, x_channels: int, g_channels: int, *, inter_channels: int | None = None, grid: bool = True,
        batch_norm: bool = True,
    ):
        super().__init__()
        inter = inter_channels or max(1, x_channels // 2)
        self.x_channels, self.g_channels, self.grid = x_channels, g_channels, grid
        self.w_x = nn.Conv2d(x_channels, inter, 2 if grid else 1, stride=2 if grid else 1, bias=False)
        self.w_g = nn.Conv2d(g_channels, inter, 1, bias=True)  # carries b_g
        self.psi = nn.Conv2d(inter, 1, 1, bias=True)  # carries b_psi
        self.psi_norm = nn.BatchNorm2d(1) if batch_norm else nn.Identity()

    def check(self, x, g):
        check_image(x, self.x_channels, "x")
        check_image(g, self.g_channels, "g")
        B, H, W, _ = x.shape
        if g.shape[0] != B:
            raise ValueError(f"g must have the batch size of x ({B}), got {g.shape[0]}")
        if self.grid:
            check_divisible(H, W, 2, "gate stride")
            if tuple(g.shape[1:3]) != (H // 2, W // 2):
                raise ValueError(
                    f"g must be [B, H/2, W/2, {self.g_channels}] = [{B}, {H // 2}, {W // 2}, {self.g_channels}] "
                    f"for x of size {H}×{W}, got {tuple(g.shape)}"
                )

    def forward(self, x, g):
        self.check(x, g)
        H, W = x.shape[1:3]
        theta = self.w_x(_nchw(x))
        phi = self.w_g(_nchw(g))
        if phi.shape[-2:] != theta.shape[-2:]:
            phi = F.interpolate(phi, size=theta.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi_norm(self.psi(F.relu(theta + phi))))
        if alpha.shape[-2:] != (H, W):
            alpha = F.interpolate(alpha, size=(H, W), mode="bilinear", align_corners=False)
        alpha = _nhwc(alpha)  # [B, H, W, 1]
        return alpha * x, alpha


class ResidualBlock(nn.Module):
    """relu(BN(conv3(relu(BN(conv3 x)))) + proj x) on NCHW tensors."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class ResidualAttentionUNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, *, base: int = 16, depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_channels, self.depth = in_channels, depth
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([ResidualBlock(in_channels, widths[0])])
        self.down.extend(ResidualBlock(widths[i], widths[i + 1]) for i in range(depth))
        self.gates = nn.ModuleList(AttentionGate(widths[i], widths[i + 1]) for i in reversed(range(depth)))
        self.up = nn.ModuleList(ResidualBlock(widths[i] + widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.alphas: list[torch.Tensor] = []

    def forward(self, x):
        check_image(x, self.in_channels)
        check_divisible(x.shape[1], x.shape[2], 2**self.depth, "U-Net downsampling factor 2**depth")
        skips, h = [], _nchw(x)
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        h = skips.pop()
        self.alphas = []
        for gate, block in zip(self.gates, self.up):
            skip = skips.pop()
            gated, alpha = gate(_nhwc(skip), _nhwc(h))
            self.alphas.append(alpha)
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([_nchw(gated), h], 1))
        return _nhwc(self.head(h))
