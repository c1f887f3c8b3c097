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

from attnzoo.ops.dispatch import op_override


def compact_real_tokens(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the permutation that puts real steps first (in order), padded ones after: [B, T] long."""
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)


def real_tokens_first(x: torch.Tensor, mask: torch.Tensor):
    """x [B, T, C] and mask [B, T] gathered so that each row's real steps come first, in order.

    Returns (x, mask, perm [B, T]); `restore_token_order(y, perm)` puts an output back in place.
    """
    perm = compact_real_tokens(mask)
    return torch.gather(x, 1, perm[..., None].expand_as(x)), torch.gather(mask, 1, perm), perm


def restore_token_order(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Undo `real_tokens_first` on y [B, T, C]: row b's step i goes back to position perm[b, i]."""
    return torch.empty_like(y).scatter_(1, perm[..., None].expand_as(y), y)


def previous_inputs(x: torch.Tensor, cache: torch.Tensor | None, keep: int, *, name: str) -> torch.Tensor:
    """The decode cache [B, keep, C] of a causal conv over x [B, T, C]: zeros for a fresh sequence.

    `name` says what the cache is in the error, e.g. "conv cache must be [B, W-1, C]".
    """
    B, _, C = x.shape
    if cache is None:
        return x.new_zeros(B, keep, C)
    if tuple(cache.shape) != (B, keep, C):
        raise ValueError(f"{name} = {(B, keep, C)}, got {tuple(cache.shape)}")
    return cache


def last_real_inputs(xc: torch.Tensor, mask: torch.Tensor | None, keep: int) -> torch.Tensor:
    """The next decode cache: the last `keep` real steps of xc = [cache ; real steps first] [B, keep+T, C]."""
    B, n, C = xc.shape
    n_real = torch.full((B,), n - keep, device=xc.device) if mask is None else mask.sum(1)
    idx = n_real[:, None] + torch.arange(keep, device=xc.device)  # last keep entries of cache + real
    return torch.gather(xc, 1, idx[..., None].expand(B, keep, C))


def causal_conv1d(x, weight, bias=None, *, cache=None, mask=None, activation=None, output_cache=False):
    """Returns (y [B, T, C], new_cache [B, W-1, C] or None)."""
    B, T, C = x.shape
    if weight.dim() != 2 or weight.shape[0] != C:
        raise ValueError(f"weight must be [C, W] = [{C}, W], got {tuple(weight.shape)}")
    W = weight.shape[1]
    cache = previous_inputs(x, cache, W - 1, name="conv cache must be [B, W-1, C]")
    halo = op_override("conv_cache")  # sequence parallel: the previous ranks' last W-1 real inputs
    if halo is not None:
        cache = halo(x, mask, cache, W - 1)
    perm = None
    if mask is not None:
        x, _, perm = real_tokens_first(x, mask)
    xc = torch.cat([cache.to(x.dtype), x], 1)  # [B, W-1+T, C]
    y = F.conv1d(xc.transpose(1, 2), weight[:, None, :].to(x.dtype), None if bias is None else bias.to(x.dtype),
                 groups=C).transpose(1, 2)
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    new_cache = last_real_inputs(xc, mask, W - 1) if output_cache else None
    if perm is not None:
        y = restore_token_order(y, perm)
    return y, new_cache
