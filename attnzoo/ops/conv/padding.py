"""Padding and decode-state helpers of the causal convolutions (and of mixers with a token shift).

With a mask [B, T] (True = real), padded steps are skipped rather than convolved: the real steps
of each row are gathered first (`real_tokens_first`), convolved after the previous real inputs,
and put back (`restore_token_order`), so padding never changes real outputs or the returned
state. The state of a causal conv is the last `keep` real inputs, zeros at a sequence's start
(`previous_inputs`, `last_real_inputs`).
"""

from __future__ import annotations

import torch


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


def previous_inputs(x: torch.Tensor, state: torch.Tensor | None, keep: int, *, name: str) -> torch.Tensor:
    """The state [B, keep, C] of a causal conv over x [B, T, C]: zeros for a fresh sequence.

    `name` says what the state is in the error, e.g. "initial_state must be [B, W-1, C]".
    """
    B, _, C = x.shape
    if state is None:
        return x.new_zeros(B, keep, C)
    if tuple(state.shape) != (B, keep, C):
        raise ValueError(f"{name} = {(B, keep, C)}, got {tuple(state.shape)}")
    return state


def last_real_inputs(xc: torch.Tensor, mask: torch.Tensor | None, keep: int) -> torch.Tensor:
    """The next state: the last `keep` real steps of xc = [state ; real steps first] [B, keep+T, C]."""
    B, n, C = xc.shape
    n_real = torch.full((B,), n - keep, device=xc.device) if mask is None else mask.sum(1)
    idx = n_real[:, None] + torch.arange(keep, device=xc.device)  # last keep entries of state + real
    return torch.gather(xc, 1, idx[..., None].expand(B, keep, C))
