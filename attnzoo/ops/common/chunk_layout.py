"""Layout moves of the chunked linear-attention ops: [B, T, H, ...] <-> [B, H, N, C, ...].

One pass each way: the transpose, the zero padding of T up to N·C, the dtype change (bf16 inputs
-> float32 arithmetic and back) and an optional scale factor are folded into a single copy, so
the chunked ops (chunk.py here, ops/delta/chunk.py) pay for the layout once per tensor.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import autocast_off


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
# On a GPU there is no such cache to fit and each segment costs a dozen-plus kernel launches: the cap
# only bounds the transient memory (64 MB of float32 per [B, H, T, width] tensor). With the CPU cap,
# Based's 12 heads x 273 features made every 64-token chunk its own segment (512 at 32k tokens).
SEGMENT_ELEMENTS_CUDA = 2**24


def segments(T: int, C: int, batch_heads: int, width: int, device=None) -> list[tuple[int, int]]:
    """[start, end) of the segments of a sequence of T steps: whole chunks of C, about
    SEGMENT_ELEMENTS / (batch_heads · width) steps each (SEGMENT_ELEMENTS_CUDA for a CUDA device;
    at least one chunk)."""
    cap = SEGMENT_ELEMENTS_CUDA if device is not None and torch.device(device).type == "cuda" else SEGMENT_ELEMENTS
    seg = max(C, cap // max(1, batch_heads * width) // C * C)
    return [(s, min(s + seg, T)) for s in range(0, T, seg)]


class _Segment:
    """What one segment's forward keeps for its backward (the ctx of a per-segment pass)."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def fold_vmapped(x, in_dim, size: int):
    """Inside a vmap rule: x with the vmapped dim (size `size`; None: x is shared by every member,
    expanded) merged into its batch dim 0: [G, B, ...] -> [G·B, ...]. None passes through."""
    if x is None:
        return None
    x = x.movedim(in_dim, 0) if in_dim is not None else x.unsqueeze(0).expand(size, *x.shape)
    return x.reshape(size * x.shape[1], *x.shape[2:])


def fold_vmapped_packing(q, q_dim, cu_dim, cu_seqlens, size: int):
    """Inside a vmap rule of a packed op (tokens of one member's sequences concatenated, cut by a
    cu_seqlens every member shares): q with its vmapped dim moved to 0, and the cu_seqlens of the
    members' packings laid end to end (member m's offsets shifted by m x its token count), so that
    fold_vmapped then makes one packed call. Returns (q, q_dim, cu_seqlens)."""
    q = q.movedim(q_dim, 0) if q_dim is not None else q
    q_dim = 0 if q_dim is not None else None
    if cu_dim is not None:
        raise ValueError("vmap over cu_seqlens is not supported: give every member the same packing")
    total = q.shape[1 if q_dim == 0 else 0]  # packed tokens of one member
    offs = torch.arange(size, device=cu_seqlens.device, dtype=cu_seqlens.dtype)[:, None] * total
    cu_seqlens = torch.cat([(cu_seqlens[:-1][None] + offs).reshape(-1), cu_seqlens[-1:] + (size - 1) * total])
    return q, q_dim, cu_seqlens


def unfold_vmapped(x, size: int):
    """The inverse of fold_vmapped for an output: [G·B, ...] -> [G, B, ...] (out_dim 0)."""
    return None if x is None else x.view(size, x.shape[0] // size, *x.shape[1:])


class SegmentedScan(torch.autograd.Function):
    """A chunked recurrent op run over consecutive segments of the sequence, the state carried from
    one to the next, as one autograd node: outputs and input gradients are written straight into
    whole-sequence tensors (no concatenation, no per-segment zero-filled slice gradients).

        o, S = segmented_scan(seg_forward, seg_backward, S0, sizes, V, *inputs)

    inputs: tensors [B, T, H, ...] (or None); sizes: segment lengths summing to T; V: width of o.
    seg_forward(seg, inputs_slices, S, o_slice) -> S writes o_slice and stores what it needs on seg;
    seg_backward(seg, do_slice, dS, grad_slices) -> dS_entering writes the inputs' gradients into
    grad_slices (None for a None input).

    Under torch.func.vmap (many models trained as one: attnzoo.train.group) the vmapped dim is folded
    into the batch dim, since sequences of a batch are independent: one call over G·B sequences."""

    @staticmethod
    def forward(seg_forward, seg_backward, S0, sizes, V, *inputs):
        B, T, H = inputs[0].shape[:3]
        o = torch.empty(B, T, H, V, dtype=inputs[0].dtype, device=inputs[0].device)
        segs, S, lo = [], S0, 0
        for n in sizes:
            seg = _Segment()
            S = seg_forward(seg, [None if x is None else x[:, lo:lo + n] for x in inputs], S, o[:, lo:lo + n])
            segs.append((lo, n, seg))
            lo += n
        return o, S, segs

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, seg_backward, S0, _, _, *ins = inputs
        ctx.segs, ctx.has_S0, ctx.seg_backward = output[2], S0 is not None, seg_backward
        ctx.meta_all = [None if x is None else (x.shape, x.dtype) for x in ins]

    @staticmethod
    def backward(ctx, do, dS, _segs):
        grads = [None if m is None else torch.empty(m[0], dtype=m[1], device=do.device) for m in ctx.meta_all]
        # the segments hold plain references (not save_for_backward), which can close a cycle through
        # this node's outputs: drop them here so the graph's memory is freed after the backward
        segs, ctx.segs = ctx.segs, None
        with autocast_off(do):  # backward may run inside the caller's autocast region: keep the op's precision
            for lo, n, seg in reversed(segs):
                grad_slices = [None if x is None else x[:, lo:lo + n] for x in grads]
                dS = ctx.seg_backward(seg, do[:, lo:lo + n], dS, grad_slices)
        return (None, None, dS if ctx.has_S0 else None, None, None, *grads)

    @staticmethod
    def vmap(info, in_dims, seg_forward, seg_backward, S0, sizes, V, *inputs):
        G = info.batch_size
        S0 = fold_vmapped(S0, in_dims[2], G)
        inputs = [fold_vmapped(x, d, G) for x, d in zip(inputs, in_dims[5:])]
        o, S, segs = SegmentedScan.apply(seg_forward, seg_backward, S0, sizes, V, *inputs)
        return (unfold_vmapped(o, G), unfold_vmapped(S, G), segs), (0, None if S is None else 0, None)


def segmented_scan(seg_forward, seg_backward, S0, sizes, V, *inputs):
    """(o, S) of SegmentedScan (see there)."""
    o, S, _ = SegmentedScan.apply(seg_forward, seg_backward, S0, sizes, V, *inputs)
    return o, S
