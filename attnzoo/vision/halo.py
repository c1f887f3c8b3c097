"""Blocked local self-attention with a halo (HaloNets).

Vaswani, Ramachandran, Srinivas, Parmar, Hechtman, Shlens (2021), "Scaling Local Self-Attention
for Parameter Efficient Visual Backbones", arXiv:2103.12731.

x [B, H, W, C] -> y [B, H, W, C]. The image is cut into non-overlapping b×b query blocks; each
block attends to its (b+2h)×(b+2h) neighbourhood (the block plus a halo of h pixels). Per head,
for a query at pixel (i, j) and a key at pixel (i', j') of its window:

    logit = q·k / sqrt(d) + q·r_h[i' - i] + q·r_w[j' - j]          (factorised 2-D relative logits)
    y = W_o concat_h softmax(logits) v

r_h, r_w ∈ R^{(2·win-1)×d} with win = b + 2h, indexed by the relative offset (added after the
1/sqrt(d) scaling, with the unscaled q). Border handling (`pad_mode`):
- "zeros" (the paper's): the image is zero-padded before the windows are cut, so out-of-image
  keys and values are zero vectors that still take part in the softmax (their logit is only the
  relative term);
- "mask": out-of-image keys are excluded from the softmax.
H and W must be divisible by the block size. The strided (downsampling) variant is not implemented.

`halo_attention` is the fast path (unfold); `halo_attention_reference` loops over query pixels
with explicit 2-D offsets and is what the tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.vision.common import check_divisible, check_image


def _check_heads(q, k, v, rel_h, rel_w, block: int, halo: int):
    if q.dim() != 5 or k.shape != q.shape or v.shape[:4] != q.shape[:4]:
        raise ValueError(
            f"q, k must be [B, H, W, heads, d] and v [B, H, W, heads, dv]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if block < 1 or halo < 0:
        raise ValueError(f"block must be >= 1 and halo >= 0, got block={block}, halo={halo}")
    check_divisible(q.shape[1], q.shape[2], block, "block size")
    win = block + 2 * halo
    want = (2 * win - 1, q.shape[-1])
    if tuple(rel_h.shape) != want or tuple(rel_w.shape) != want:
        got = (tuple(rel_h.shape), tuple(rel_w.shape))
        raise ValueError(f"rel_h and rel_w must be [2*win-1, d] = {want}, got {got[0]}, {got[1]}")


def halo_attention_reference(q, k, v, rel_h, rel_w, *, block: int, halo: int, pad_mode: str = "zeros"):
    """Loop over query pixels; explicit window, explicit offsets. q, k [B,H,W,h,d], v [B,H,W,h,dv]."""
    _check_heads(q, k, v, rel_h, rel_w, block, halo)
    B, H, W, nh, d = q.shape
    win = block + 2 * halo
    out = torch.zeros(B, H, W, nh, v.shape[-1], dtype=q.dtype)
    for i in range(H):
        for j in range(W):
            top, left = (i // block) * block - halo, (j // block) * block - halo
            logits, values = [], []
            for ki in range(top, top + win):
                for kj in range(left, left + win):
                    inside = 0 <= ki < H and 0 <= kj < W
                    if not inside and pad_mode == "mask":
                        continue
                    kk = k[:, ki, kj] if inside else torch.zeros_like(k[:, 0, 0])
                    vv = v[:, ki, kj] if inside else torch.zeros_like(v[:, 0, 0])
                    qq = q[:, i, j]  # [B, h, d]
                    lg = (qq * kk).sum(-1) * d**-0.5
                    lg = lg + qq @ rel_h[ki - i + win - 1] + qq @ rel_w[kj - j + win - 1]
                    logits.append(lg)
                    values.append(vv)
            p = torch.softmax(torch.stack(logits, -1), -1)  # [B, h, n]
            out[:, i, j] = torch.einsum("bhn,nbhe->bhe", p, torch.stack(values, 0))
    return out


def _relative_index(block: int, halo: int, device) -> torch.Tensor:
    """idx[a, u] = table row of the offset between query row a (in its block) and window row u."""
    win = block + 2 * halo
    a = torch.arange(block, device=device)[:, None]
    u = torch.arange(win, device=device)[None, :]
    return u - (a + halo) + win - 1  # [block, win]


def halo_attention(q, k, v, rel_h, rel_w, *, block: int, halo: int, pad_mode: str = "zeros"):
    """Fast path: unfold the padded keys/values into windows. Same arguments as the reference."""
    _check_heads(q, k, v, rel_h, rel_w, block, halo)
    if pad_mode not in ("zeros", "mask"):
        raise ValueError(f"pad_mode must be 'zeros' or 'mask', got {pad_mode!r}")
    B, H, W, nh, d = q.shape
    dv = v.shape[-1]
    b, win = block, block + 2 * halo
    nH, nW = H // b, W // b
    # queries: [B, nh, nH, nW, b, b, d]
    qb = q.reshape(B, nH, b, nW, b, nh, d).permute(0, 5, 1, 3, 2, 4, 6)

    def windows(t):  # [B, H, W, nh, e] -> [B, nh, nH, nW, win, win, e]
        e = t.shape[-1]
        t = t.permute(0, 3, 4, 1, 2).reshape(B, nh * e, H, W)
        t = F.pad(t, (halo, halo, halo, halo))
        t = t.unfold(2, win, b).unfold(3, win, b)  # [B, nh*e, nH, nW, win, win]
        return t.reshape(B, nh, e, nH, nW, win, win).permute(0, 1, 3, 4, 5, 6, 2)

    kw, vw = windows(k), windows(v)
    logits = torch.einsum("bhxyijd,bhxyuvd->bhxyijuv", qb, kw) * d**-0.5
    idx = _relative_index(b, halo, q.device)
    qh = torch.einsum("bhxyijd,rd->bhxyijr", qb, rel_h)  # [.., b, b, 2win-1]
    qw = torch.einsum("bhxyijd,rd->bhxyijr", qb, rel_w)
    # gather: lh[..., i, j, u] = qh[..., i, j, idx[i, u]]
    lh = torch.gather(qh, -1, idx[:, None, :].expand(b, b, win).expand(*qh.shape[:-1], win))
    lw = torch.gather(qw, -1, idx[None, :, :].expand(b, b, win).expand(*qw.shape[:-1], win))
    logits = logits + lh[..., :, None] + lw[..., None, :]
    logits = logits.reshape(*logits.shape[:6], win * win)
    if pad_mode == "mask":
        ones = torch.ones(1, 1, H, W, dtype=q.dtype, device=q.device)
        inside = F.pad(ones, (halo, halo, halo, halo)).unfold(2, win, b).unfold(3, win, b)
        inside = inside.reshape(1, 1, nH, nW, 1, 1, win * win) > 0
        logits = logits.masked_fill(~inside, float("-inf"))
    p = torch.softmax(logits, -1)
    o = torch.einsum("bhxyijn,bhxyne->bhxyije", p, vw.reshape(B, nh, nH, nW, win * win, dv))
    return o.permute(0, 2, 4, 3, 5, 1, 6).reshape(B, H, W, nh, dv)


class HaloAttention(nn.Module):
    """Multi-head halo attention over [B, H, W, dim] (see the module docstring)."""

    def __init__(
        self, dim: int, *, n_heads: int = 8, block_size: int = 8, halo_size: int = 3,
        qkv_bias: bool = False, pad_mode: str = "zeros",
    ):
        super().__init__()
        if dim <= 0 or n_heads <= 0 or dim % n_heads:
            raise ValueError(f"dim={dim} must be a positive multiple of n_heads={n_heads}")
        if block_size < 1 or halo_size < 0:
            raise ValueError(f"block_size must be >= 1 and halo_size >= 0, got {block_size}, {halo_size}")
        if pad_mode not in ("zeros", "mask"):
            raise ValueError(f"pad_mode must be 'zeros' or 'mask', got {pad_mode!r}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.block_size, self.halo_size, self.pad_mode = block_size, halo_size, pad_mode
        win = block_size + 2 * halo_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_h = nn.Parameter(torch.randn(2 * win - 1, self.head_dim) * self.head_dim**-0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * win - 1, self.head_dim) * self.head_dim**-0.5)

    def forward(self, x, *, reference: bool = False):
        check_image(x, self.dim)
        B, H, W, _ = x.shape
        check_divisible(H, W, self.block_size, "block size")
        q, k, v = self.qkv(x).view(B, H, W, 3, self.n_heads, self.head_dim).unbind(3)
        fn = halo_attention_reference if reference else halo_attention
        o = fn(q, k, v, self.rel_h.to(q.dtype), self.rel_w.to(q.dtype),
               block=self.block_size, halo=self.halo_size, pad_mode=self.pad_mode)
        return self.proj(o.reshape(B, H, W, self.dim))

    def extra_repr(self):
        return (f"dim={self.dim}, n_heads={self.n_heads}, block_size={self.block_size}, "
                f"halo_size={self.halo_size}, pad_mode={self.pad_mode!r}")
