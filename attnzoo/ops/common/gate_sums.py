"""Intra-chunk sums of log gates, shared by the chunked ops (ops/linear, ops/delta).

Along one dim of a chunk (n steps), every exponent the chunked algebra needs is a sum of gates taken
directly (CHUNKED.md): inclusive / exclusive prefix and suffix sums, and the pairwise decay
exp(Σ_{j<l<=i} g_l) of a C x C block, each <= 0 in log space, so nothing overflows however strongly
the gate forgets. The in-place `add_*_` forms walk short dims by running sums over slices (fewer ops
than flip + cumsum on CPU); `pairwise_decay_grad` is the gradient of g through a pairwise decay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def add_revcumsum_(dst, x, dim: int):
    """dst += Σ_{l >= j} x_l along dim, in place, by a running sum over slices."""
    n = x.shape[dim]
    if n > 64 or x.numel() < 2048 * n:  # long, or thin slices (op overhead): flip and cumsum
        dst.add_(revcumsum(x, dim))
        return
    run = x.select(dim, n - 1).clone()
    dst.select(dim, n - 1).add_(run)
    for j in range(n - 2, -1, -1):
        run.add_(x.select(dim, j))
        dst.select(dim, j).add_(run)


def add_prefix_excl_(dst, x, dim: int):
    """dst += Σ_{l < j} x_l along dim, in place, by a running sum over slices."""
    n = x.shape[dim]
    if n < 2:
        return
    if n > 64 or x.numel() < 2048 * n:  # long, or thin slices (op overhead): one cumsum
        dst.add_(prefix_excl(x, dim))
        return
    run = x.select(dim, 0).clone()
    dst.select(dim, 1).add_(run)
    for j in range(2, n):
        run.add_(x.select(dim, j - 1))
        dst.select(dim, j).add_(run)


def suffix_excl(x, dim: int):
    """Σ_{l > j} x_l along dim (exactly 0 at the last position), summed directly from the end."""
    n = x.shape[dim]
    if n > 64 or x.numel() < 2048 * n:  # long, or thin slices: one cumsum of the flipped tensor
        pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [1, 0]
        return F.pad(x.flip(dim).cumsum(dim).narrow(dim, 0, n - 1), pad).flip(dim)
    out = torch.empty_like(x)
    out.select(dim, n - 1).zero_()
    for j in range(n - 2, -1, -1):  # short: n - 1 adds of slices (one pass over x in all)
        torch.add(out.select(dim, j + 1), x.select(dim, j + 1), out=out.select(dim, j))
    return out


def prefix_excl(x, dim: int):
    """Σ_{l < j} x_l along dim (exactly 0 at the first position)."""
    n = x.shape[dim]
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [1, 0]
    return F.pad(x.narrow(dim, 0, n - 1).cumsum(dim), pad)


def revcumsum(x, dim: int):
    """Σ_{l >= j} x_l along dim."""
    return x.flip(dim).cumsum(dim).flip(dim)


def pairwise_decay(g, dim: int):
    """exp(Σ_{j<l<=i} g_l) for i > j, 1 for i = j, 0 for i < j, along `dim` (size n).
    g [..., n] -> [..., n, n] (dim=-1); g [..., n, K] -> [..., n, n, K] (dim=-2)."""
    n = g.shape[dim]
    upper = torch.ones(n, n, dtype=torch.bool, device=g.device).triu()
    if dim == -1:  # masks as float multiplies (masked_fill is several times slower on CPU)
        lower = (~upper).to(g.dtype)
        seg = (g.clamp_min(-1e30)[..., :, None] * lower).cumsum_(-2)  # -inf -> -1e30: -inf * 0 would be nan
        return seg.exp_().mul_(_lower_incl(n, g))
    upper = upper[..., None]
    seg = g[..., :, None, :].expand(*g.shape[:-1], n, g.shape[-1]).masked_fill(upper, 0.0).cumsum(-3)
    return seg.masked_fill_(_strict_upper(n, g.device)[..., None], float("-inf")).exp_()


def _lower_incl(n: int, ref):
    return torch.ones(n, n, dtype=ref.dtype, device=ref.device).tril_()


def _strict_upper(n: int, device):
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def pairwise_decay_grad(p, dim: int):
    """Gradient of g from p = dL/dD ⊙ D for D = pairwise_decay(g, dim): Σ_{i>=l} Σ_{j<l} p_ij
    (the diagonal and the upper triangle of p are ignored). Summed as a cumsum over j (contiguous)
    of p, read at j = l − 1 and summed over the rows i >= l."""
    n = p.shape[dim]
    out_shape = list(p.shape)
    del out_shape[dim - 1]
    out = p.new_zeros(out_shape)
    if n < 2:
        return out
    rows_below = _strict_upper(n, p.device).T[:, :-1]  # [i, m = l − 1]: i > m
    if dim == -2:
        rows_below = rows_below[..., None]
    prefix = p.cumsum(dim).narrow(dim, 0, n - 1)  # Σ_{j<=m} p_ij
    out.narrow(dim, 1, n - 1).copy_((prefix * rows_below.to(p.dtype)).sum(dim - 1))
    return out
