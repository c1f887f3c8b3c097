"""What a shard needs from the shards before it besides the recurrent state: the last inputs of a
short causal conv or token shift (the halo), and the number of real tokens (positions, RoPE).

Halo. A causal conv of width W (a token shift is W = 2) at the start of shard p needs the last
keep = W - 1 *real* inputs before it, which may lie on several earlier ranks when padding leaves a
shard with fewer than keep real tokens in a row. Each rank's (tail, n) — its last keep real inputs,
right-aligned with zeros before them, and their number n <= keep — is an element of an associative
"keep the last keep" product,

    (t_l, n_l) · (t_r, n_r) = (last keep real rows of [t_l ; t_r], min(n_l + n_r, keep)),

so the halo of rank p is the exclusive prefix (cache_0, keep) · tail_0 · ... · tail_{p-1}, taken in
1 + ceil(log2 P) differentiable shifts (Hillis-Steele), each message keep x C per row: the volume
does not grow with P, the latency grows with log P. Rank 0's prefix starts with the caller's cache
(the decode state's conv cache, or zeros at a sequence start).
"""

from __future__ import annotations

import torch

from attnzoo.ops.conv.padding import compact_real_tokens
from attnzoo.parallel.comm import all_gather, shift
from attnzoo.parallel.context import SPConfig


def local_tail(x: torch.Tensor, mask: torch.Tensor | None, keep: int):
    """x [B, T, C] -> (tail [B, keep, C]: the last keep real steps, right-aligned, zeros before;
    n [B] long: how many of them are real, <= keep)."""
    B, T, C = x.shape
    if mask is None:
        tail = x[:, -keep:]
        if T < keep:
            tail = torch.cat([x.new_zeros(B, keep - T, C), tail], 1)
        return tail, torch.full((B,), min(T, keep), dtype=torch.long, device=x.device)
    perm = compact_real_tokens(mask)  # real steps first, in order
    n_real = mask.long().sum(1)
    idx = n_real[:, None] - keep + torch.arange(keep, device=x.device)  # the last keep real slots
    valid = idx >= 0
    pos = torch.gather(perm, 1, idx.clamp_min(0))
    tail = torch.gather(x, 1, pos[..., None].expand(B, keep, C))
    tail = torch.where(valid[..., None], tail, tail.new_zeros(()))
    return tail, n_real.clamp_max(keep)


def combine_tails(left, n_left, right, n_right, keep: int):
    """The product (left, n_left) · (right, n_right): row i of the result is right's row i where i >=
    keep - n_right, else left's row i + n_right (zeros there stay zeros)."""
    i = torch.arange(keep, device=left.device)[None]
    from_right = i >= keep - n_right[:, None]
    idx = (i + n_right[:, None]).clamp_max(keep - 1)
    moved = torch.gather(left, 1, idx[..., None].expand_as(left))
    out = torch.where(from_right[..., None], right, moved)
    return out, (n_left + n_right).clamp_max(keep)


def _send_form(tail, n):
    """One message: the tail rows with the count as an extra column (exact in any float dtype)."""
    B, keep, C = tail.shape
    return torch.cat([tail.reshape(B, keep * C), n[:, None].to(tail.dtype)], 1)


def _recv_form(msg, keep, C):
    B = msg.shape[0]
    return msg[:, :-1].reshape(B, keep, C), msg[:, -1].detach().round().long()


def conv_cache(cfg: SPConfig, x: torch.Tensor, mask: torch.Tensor | None, cache0: torch.Tensor, keep: int):
    """The previous `keep` real inputs of this rank's shard x [B, T, C] ([B, keep, C]); differentiable
    (gradients reach the earlier ranks' inputs). cache0 [B, keep, C] is used on rank 0."""
    if keep <= 0 or cfg.world == 1:
        return cache0
    B, _, C = x.shape
    tail, n = local_tail(x, mask, keep)
    msg = shift(_send_form(tail, n), 1, cfg, "conv halo")  # y_p = tail_{p-1}
    y, ny = _recv_form(msg, keep, C)
    if cfg.rank == 0:  # `y * 0 +` keeps rank 0's shift on the autograd path: its backward is what
        # receives rank 1's gradient for tail_0 (a node whose output is unused is never run)
        y, ny = y * 0 + cache0.to(x.dtype), torch.full((B,), keep, dtype=torch.long, device=x.device)
    d = 1
    while d < cfg.world:  # inclusive scan of the y's; the identity element is (zeros, 0)
        z, nz = _recv_form(shift(_send_form(y, ny), d, cfg, f"conv halo (step {d})"), keep, C)
        y, ny = combine_tails(z, nz, y, ny, keep)
        d *= 2
    return y


def position_offset(cfg: SPConfig, mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """[B] long: real tokens on the ranks before this one (T per rank without a mask)."""
    n = torch.full((B,), T, dtype=torch.long, device=device) if mask is None else mask.long().sum(1)
    if cfg.world == 1:
        return torch.zeros_like(n)
    counts = all_gather(cfg, n, "token counts")
    return sum(counts[: cfg.rank], torch.zeros_like(n))
