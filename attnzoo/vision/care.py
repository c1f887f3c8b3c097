"""CARE block: decoupled dual-interactive linear attention with a dynamic memory unit.

Zhou, Xu, Cui, Zhou, Zhang, Hong, Zhang (2025), "CARE Transformer: Mobile-Friendly Linear Visual
Transformer via Decoupled Dual Interaction", CVPR 2025, arXiv:2411.16170.

x [B, H, W, C], memory Z [B, H, W, M] (or None in the first block) -> (y [B, H, W, C], Z' [B, H, W, M]).

1. Asymmetric decoupling: channels are split into a local part x_l (C_l = C - C_g channels) and a
   global part x_g (C_g = round(global_ratio · C)); neither part goes through the other's operator.
2. Local inductive bias: l = DWConv_k(x_l) (depthwise k×k).
   Long-range dependencies: g = W_o LinAttn(x_g), per head, over all N = H·W tokens:

       LinAttn(Q, K, V)_i = φ(q_i) Σ_j φ(k_j) v_jᵀ / (φ(q_i) · Σ_j φ(k_j)),   φ = elu + 1

   computed as φ(Q)(φ(K)ᵀV) in O(N d²); `linear_attention_quadratic` is the O(N²) form
   (φ(Q)φ(K)ᵀ row-normalised, times V) that the tests compare against.
3. Dual interaction:
   - inter-feature: u = [l ; g] + DWConv3(GELU(W_1 [l ; g]))     (local and global channels meet)
   - inter-layer (dynamic memory unit): from [u ; Z], a 1×1 projection gives the block's output
     features y, a memory candidate Z̃ and a gate a; Z' = σ(a) ⊙ Z + (1 - σ(a)) ⊙ tanh(Z̃).
   The block is pre-norm residual: x + W(y), then x + FFN(LN x); Z' is handed to the next block.

The paper describes these pieces in words and figures; its code was not available here, so the
exact layer choices above (φ, kernel sizes, the gated memory update, the channel ratio) are our
reading of it [inferred], not a verified reproduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.vision.common import check_image


def feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def linear_attention(q, k, v, eps: float = 1e-6):
    """Non-causal normalised linear attention. q, k [B, N, h, d], v [B, N, h, e] -> [B, N, h, e]."""
    fq, fk = feature_map(q), feature_map(k)
    kv = torch.einsum("bnhd,bnhe->bhde", fk, v)
    z = fk.sum(1)  # [B, h, d]
    num = torch.einsum("bnhd,bhde->bnhe", fq, kv)
    den = torch.einsum("bnhd,bhd->bnh", fq, z)[..., None]
    return num / (den + eps)


def linear_attention_quadratic(q, k, v, eps: float = 1e-6):
    """The same map through the explicit N×N matrix A = φ(Q)φ(K)ᵀ, rows normalised by their sums."""
    a = torch.einsum("bihd,bjhd->bhij", feature_map(q), feature_map(k))
    return torch.einsum("bhij,bjhe->bihe", a, v) / (a.sum(-1).transpose(1, 2)[..., None] + eps)


class CAREBlock(nn.Module):
    def __init__(
        self, dim: int, *, global_ratio: float = 0.5, n_heads: int = 2, kernel_size: int = 5,
        memory_dim: int | None = None, mlp_ratio: int = 4,
    ):
        super().__init__()
        c_g = round(global_ratio * dim)
        if not 0 < c_g < dim:
            raise ValueError(f"global_ratio={global_ratio} must leave both parts non-empty for dim={dim}")
        if c_g % n_heads:
            raise ValueError(f"the global part ({c_g} channels) must be divisible by n_heads={n_heads}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.dim, self.c_global, self.c_local, self.n_heads = dim, c_g, dim - c_g, n_heads
        self.memory_dim = memory_dim or dim
        self.norm = nn.LayerNorm(dim)
        self.local = nn.Conv2d(self.c_local, self.c_local, kernel_size, padding=kernel_size // 2, groups=self.c_local)
        self.qkv = nn.Linear(c_g, 3 * c_g)
        self.global_out = nn.Linear(c_g, c_g)
        self.feature_mix = nn.Linear(dim, dim)
        self.feature_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        M = self.memory_dim
        self.memory_proj = nn.Linear(dim + M, dim + 2 * M)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def global_branch(self, xg):  # [B, H, W, C_g]
        B, H, W, C = xg.shape
        q, k, v = self.qkv(xg).view(B, H * W, 3, self.n_heads, C // self.n_heads).unbind(2)
        return self.global_out(linear_attention(q, k, v).reshape(B, H, W, C))

    def forward(self, x, memory=None):
        check_image(x, self.dim)
        B, H, W, _ = x.shape
        if memory is None:
            memory = x.new_zeros(B, H, W, self.memory_dim)
        else:
            check_image(memory, self.memory_dim, "memory")
            if memory.shape[:3] != x.shape[:3]:
                raise ValueError(f"memory must be [B, H, W, {self.memory_dim}] = "
                                 f"[{B}, {H}, {W}, {self.memory_dim}], got {tuple(memory.shape)}")
        h = self.norm(x)
        xl, xg = h.split([self.c_local, self.c_global], -1)
        l = self.local(xl.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        g = self.global_branch(xg)
        u = torch.cat([l, g], -1)
        mixed = F.gelu(self.feature_mix(u)).permute(0, 3, 1, 2)
        u = u + self.feature_dw(mixed).permute(0, 2, 3, 1)
        y, cand, gate = self.memory_proj(torch.cat([u, memory], -1)).split(
            [self.dim, self.memory_dim, self.memory_dim], -1
        )
        a = torch.sigmoid(gate)
        new_memory = a * memory + (1 - a) * torch.tanh(cand)
        x = x + self.out(y)
        x = x + self.ffn(self.ffn_norm(x))
        return x, new_memory
