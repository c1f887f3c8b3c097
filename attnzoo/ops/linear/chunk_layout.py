"""Layout moves of the chunked linear-attention ops: [B, T, H, ...] <-> [B, H, N, C, ...].

One pass each way: the transpose, the zero padding of T up to N·C, the dtype change (bf16 inputs
-> float32 arithmetic and back) and an optional scale factor are folded into a single copy, so
the chunked ops (chunk.py here, ops/delta/chunk.py) pay for the layout once per tensor.
"""

from __future__ import annotations

import torch


def to_chunks(x, N: int, C: int, dtype, scale=None):
    """x [B, T, H, ...] -> [B, H, N, C, ...] contiguous in dtype, zero-padded along T to N·C,
    times scale if given."""
    B, T, H, *rest = x.shape
    out = torch.empty(B, H, N * C, *rest, dtype=dtype, device=x.device)
    if N * C > T:
        out[:, :, T:].zero_()
    src = x.transpose(1, 2)
    if scale is None:
        out[:, :, :T].copy_(src)
    elif x.dtype == dtype:
        torch.mul(src, scale, out=out[:, :, :T])
    else:  # scale after the cast: a bf16 product would be rounded to bf16
        out[:, :, :T].copy_(src).mul_(scale)
    return out.view(B, H, N, C, *rest)


def from_chunks(xc, T: int, dtype, scale=None, out=None):
    """xc [B, H, N, C, ...] -> [B, T, H, ...] in dtype (the first T of N·C steps), times scale if
    given; written into `out` (e.g. a segment's slice of a whole-sequence tensor) if given."""
    B, H, N, C, *rest = xc.shape
    src = xc.reshape(B, H, N * C, *rest)[:, :, :T].transpose(1, 2)
    if out is None:
        out = torch.empty(B, T, H, *rest, dtype=dtype, device=xc.device)
    if scale is None:
        out.copy_(src)
    else:
        torch.mul(src, scale, out=out)
    return out


# Working-set cap of one pass of the chunked ops, in elements of a [B, H, T, width] tensor. A long
# sequence is run as consecutive segments of whole chunks (the state carried from one to the next),
# so every intermediate stays about cache-sized and the time grows linearly in T.
SEGMENT_ELEMENTS = 2**18


def segments(T: int, C: int, batch_heads: int, width: int) -> list[tuple[int, int]]:
    """[start, end) of the segments of a sequence of T steps: whole chunks of C, about
    SEGMENT_ELEMENTS / (batch_heads · width) steps each (at least one chunk)."""
    seg = max(C, SEGMENT_ELEMENTS // max(1, batch_heads * width) // C * C)
    return [(s, min(s + seg, T)) for s in range(0, T, seg)]
