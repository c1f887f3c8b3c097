"""MambAttention block: one multi-head attention shared by the time and frequency axes, each
followed by a bidirectional Mamba.

Kühne, Østergaard, Jensen, Tan (2025), "MambAttention: Mamba with Multi-Head Attention for
Generalizable Single-Channel Speech Enhancement", arXiv:2507.00966 [authors/id: verify]
(official code NikolaiKyhne/MambAttention, models/mambattention_block.py, read for the layout).
Mamba: Gu & Dao (2023), arXiv:2312.00752.

x [B, C, T, F] (C feature channels, T frames, F frequency bins) -> y [B, C, T, F]:

    time stage   (rows = B·F sequences of length T):  x = MHA(LN_t x) + x;  x = P_t BiM_t(N_t x) + x
    freq stage   (rows = B·T sequences of length F):  x = MHA(LN_f x) + x;  x = P_f BiM_f(N_f x) + x

MHA is ONE module (the same weights on both axes), bidirectional softmax attention computed with
attnzoo's softmax op. BiM = [Mamba(x) ; flip(Mamba'(flip x))] (two independent causal inner
mixers), and P: 2C -> C is the kernel-1 ConvTranspose1d of the official code, i.e. a Linear
(attnzoo.mixers.bidirectional with merge="concat"). N is an RMSNorm (eps 1e-5). The inner mixer is
a constructor argument: any registered causal mixer ("mamba" by default). Layer norms are separate
per axis; only the attention is shared.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.mixers.bidirectional import Bidirectional
from attnzoo.mixers.layers import RMSNorm
from attnzoo.ops.softmax import softmax_attention


class SharedAxisAttention(nn.Module):
    """Bidirectional multi-head softmax attention over x [N, L, C] (nn.MultiheadAttention's math)."""

    def __init__(self, dim: int, *, n_heads: int):
        super().__init__()
        if dim <= 0 or n_heads <= 0 or dim % n_heads:
            raise ValueError(f"channels={dim} must be a positive multiple of n_heads={n_heads}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        N, L, C = x.shape
        q, k, v = self.in_proj(x).view(N, L, 3, self.n_heads, self.head_dim).unbind(2)
        o = softmax_attention(q, k, v, causal=False)
        return self.out_proj(o.reshape(N, L, C))


class TimeFrequencyBlock(nn.Module):
    def __init__(
        self, channels: int, *, n_heads: int = 8, inner_mixer: str = "mamba", inner_kwargs: dict | None = None,
    ):
        super().__init__()
        self.channels = channels
        self.attention = SharedAxisAttention(channels, n_heads=n_heads)  # the one shared MHA
        self.time_norm, self.freq_norm = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.time_mixer_norm, self.freq_mixer_norm = RMSNorm(channels, eps=1e-5), RMSNorm(channels, eps=1e-5)
        kw = {"mixer": inner_mixer, "merge": "concat", "mixer_kwargs": inner_kwargs or {}}
        self.time_mixer = Bidirectional(channels, **kw)
        self.freq_mixer = Bidirectional(channels, **kw)

    def check(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, C, T, F] with C = {self.channels}, got {got}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")

    def _along(self, x, axis, norm, mixer_norm, mixer):
        """One stage along x's dim `axis` (2 = T, 3 = F): every line along it is a sequence of C-vectors."""
        self.check(x)
        h = x.movedim(1, -1).movedim(axis - 1, 2)  # [B, other axis, axis, C]
        rows = h.shape
        h = h.reshape(-1, rows[2], rows[3])  # [N, L, C]
        h = self.attention(norm(h)) + h
        h = mixer(mixer_norm(h)) + h
        return h.view(rows).movedim(2, axis - 1).movedim(-1, 1)

    def time_stage(self, x):
        """Mix along T only: x [B, C, T, F] -> [B, C, T, F]."""
        return self._along(x, 2, self.time_norm, self.time_mixer_norm, self.time_mixer)

    def freq_stage(self, x):
        """Mix along F only: x [B, C, T, F] -> [B, C, T, F]."""
        return self._along(x, 3, self.freq_norm, self.freq_mixer_norm, self.freq_mixer)

    def forward(self, x):
        return self.freq_stage(self.time_stage(x))
