"""Short causal depthwise convolution over time, with a decode cache and padding masks.

    y_t = sum_{j=0}^{W-1} w[:, j] · x_{t-W+1+j} (+ b)        x [B, T, C], w [C, W], cache [B, W-1, C]

`cache` holds the W-1 previous real inputs (zeros at the start of a sequence). With a mask, padded
steps are skipped: every real output sees the W-1 previous *real* inputs, and the returned cache
holds the last W-1 real inputs, so padding never changes real outputs or the state. Works for any
T, including T < W and single-token steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compact_real_tokens(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the permutation that puts real steps first (in order), padded ones after: [B, T] long."""
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)


def causal_conv1d(x, weight, bias=None, *, cache=None, mask=None, activation=None, output_cache=False):
    """Returns (y [B, T, C], new_cache [B, W-1, C] or None)."""
    B, T, C = x.shape
    if weight.dim() != 2 or weight.shape[0] != C:
        raise ValueError(f"weight must be [C, W] = [{C}, W], got {tuple(weight.shape)}")
    W = weight.shape[1]
    if cache is None:
        cache = x.new_zeros(B, W - 1, C)
    elif tuple(cache.shape) != (B, W - 1, C):
        raise ValueError(f"conv cache must be [B, W-1, C] = {(B, W - 1, C)}, got {tuple(cache.shape)}")
    perm = None
    if mask is not None:
        perm = compact_real_tokens(mask)
        x = torch.gather(x, 1, perm[..., None].expand(B, T, C))
    xc = torch.cat([cache.to(x.dtype), x], 1)  # [B, W-1+T, C]
    y = F.conv1d(xc.transpose(1, 2), weight[:, None, :].to(x.dtype), None if bias is None else bias.to(x.dtype),
                 groups=C).transpose(1, 2)
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    new_cache = None
    if output_cache and W > 1:
        n_real = torch.full((B,), T, device=x.device) if mask is None else mask.sum(1)
        idx = n_real[:, None] + torch.arange(W - 1, device=x.device)  # last W-1 entries of cache+real
        new_cache = torch.gather(xc, 1, idx[..., None].expand(B, W - 1, C))
    elif output_cache:
        new_cache = x.new_zeros(B, 0, C)
    if perm is not None:
        y = torch.empty_like(y).scatter_(1, perm[..., None].expand(B, T, C), y)
    return y, new_cache
