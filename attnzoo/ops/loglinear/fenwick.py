"""The Fenwick-tree partition of log-linear attention (Guo et al. 2025, arXiv:2506.04761, section 3.1).

The query at position t (0-based, counting real tokens) sees its prefix [0, t] as disjoint buckets:
the sentinel bucket {t} at level 0, and for every set bit i of t the dyadic block of 2^i tokens that
the Fenwick decomposition t -> t - lssb(t) -> ... peels off, at level i + 1. A key s <= t therefore
sits at level

    level(t, s) = bit_length(t XOR s)          (0 for s = t; at most bit_length(t))

Each level has its own state and its own data-dependent weight lambda_t^(level). With n_levels
weights the levels >= n_levels - 1 share the last weight and one state (the top level absorbs the
older buckets), so the state of a sequence after n tokens is min(n_levels - 1, bit_length(n))
matrices: levels 1 .. (level 0, the current token, is never stored). After n tokens the bucket at
level l (when bit l - 1 of n is set) is [(n >> l) << l, ((n >> l) << l) + 2^(l-1)); going from n to
n + 1 merges levels 0 .. p into level p + 1, p = the number of trailing ones of n (the carry of a
binary counter).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LevelState(NamedTuple):
    """The state of log-linear attention after `count` tokens: S [B, H, levels, K, V] (index i holds
    level i + 1; levels = min(n_levels - 1, bit_length(count)), the largest count of the batch),
    count [B] int64 (real tokens seen)."""

    S: torch.Tensor
    count: torch.Tensor


def capped_bit_length(x: torch.Tensor, n_levels: int) -> torch.Tensor:
    """min(bit_length(x), n_levels - 1) of a non-negative integer tensor (a sum of comparisons: no
    host read, one graph under torch.compile)."""
    out = torch.zeros_like(x)
    for j in range(n_levels - 1):
        out = out + (x >= (1 << j)).to(x.dtype)
    return out


def stored_levels(count: int, n_levels: int) -> int:
    """How many level matrices a sequence keeps after `count` tokens."""
    return min(n_levels - 1, int(count).bit_length())


def bucket_representatives(count: torch.Tensor, levels: int, n_levels: int) -> torch.Tensor:
    """[B, levels]: a token position inside each stored bucket of a state after `count` [B] tokens
    (level l = i + 1: (count >> l) << l; the top level n_levels - 1, which absorbs all older buckets:
    position 0). A bucket lies whole inside one level of any later query, so one position stands for it."""
    lv = torch.arange(1, levels + 1, device=count.device)
    rep = (count[:, None] >> lv) << lv
    return torch.where(lv == n_levels - 1, torch.zeros_like(rep), rep)


def real_positions(mask: torch.Tensor | None, count: torch.Tensor, B: int, T: int, device) -> torch.Tensor:
    """[B, T] int64 Fenwick positions: count + the number of real tokens before each step (padded
    steps get the next real token's position; they carry no key and their outputs are dropped)."""
    if mask is None:
        return count[:, None] + torch.arange(T, device=device)[None]
    return count[:, None] + mask.long().cumsum(1) - mask.long()
