"""Launchers and the autograd wrapper of the Triton block-sparse attention (forward.py, backward.py).

    o = triton_block_sparse_attention(q, k, v, block_ids, block_counts, *, block_size, scale)

q [B, T, Hq, D], k, v [B, T, Hkv, D] (one dtype: float16, bfloat16 or float32), block_ids int32
[B, Hkv, M, S], block_counts int32 [B, Hkv, M] (blocks.py). Gradients flow to q, k, v; the forward
keeps o and the row log-sum-exp (float32 [B, Hq, T]) for the backward.
"""

from __future__ import annotations

import os

import torch
import triton



LOG2E = 1.4426950408889634

# (BM, BN, num_warps, num_stages) tried on CUDA (autotuned per kernel, block size, T and H; BM, BN must
# divide the block size); the first valid entry is the fixed config of the interpreter or of
# ATTNZOO_SPARSE_AUTOTUNE=0. Not tuned on a GPU by hand yet (see notes/sparse_topk.md).
CONFIGS = {
    "fwd": [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3)],
    "bwd": [(64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2)],
}
_TUNED: dict = {}


def _valid(kind, block_size):
    got = [c for c in CONFIGS[kind] if c[0] <= block_size and c[1] <= block_size]
    return got[:3] or [(block_size, block_size, 4, 2)]


def _quick_bench(fn, quantiles):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def _launch(kernel, kind, block_size, grid, args, meta):
    """kernel[grid(META)](*args, **meta) with the tile config: autotuned on CUDA, fixed otherwise."""
    if args[0].is_cuda and os.environ.get("ATTNZOO_SPARSE_AUTOTUNE", "1") != "0":
        key = (kernel, block_size)
        if key not in _TUNED:
            configs = [triton.Config({"BM": m, "BN": n}, num_warps=w, num_stages=st)
                       for m, n, w, st in _valid(kind, block_size)]
            _TUNED[key] = triton.autotune(configs, key=["T", "H"], do_bench=_quick_bench)(kernel)
        _TUNED[key][grid](*args, **meta)
        return
    m, n, w, st = _valid(kind, block_size)[0]
    kernel[grid({"BM": m, "BN": n})](*args, **meta, BM=m, BN=n, num_warps=w, num_stages=st)


def _fwd(q, k, v, ids, cnt, block_size, scale):
    from attnzoo.ops.sparse.triton.forward import block_sparse_fwd_kernel

    B, T, H, D = q.shape
    G = H // k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    _launch(block_sparse_fwd_kernel, "fwd", block_size,
            lambda META: (triton.cdiv(T, block_size) * (block_size // META["BM"]), B * H),
            (q, k, v, o, lse, ids, cnt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
             *ids.stride()[:3], *cnt.stride()[:2], T, H, G, scale * LOG2E),
            {"BS": block_size, "D": D, "BD": triton.next_power_of_2(D)})
    return o, lse


def _bwd(q, k, v, o, lse, do, ids, cnt, block_size, scale):
    from attnzoo.ops.sparse.triton.backward import (
        block_sparse_bwd_dkdv_kernel,
        block_sparse_bwd_dq_kernel,
        transpose_selection,
    )

    B, T, H, D = q.shape
    Hkv = k.shape[2]
    G = H // Hkv
    n_blocks = triton.cdiv(T, block_size)
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2).contiguous()  # [B, H, T]
    meta = {"BS": block_size, "D": D, "BD": triton.next_power_of_2(D)}
    dq = torch.empty_like(q)
    _launch(block_sparse_bwd_dq_kernel, "bwd", block_size,
            lambda META: (n_blocks * (block_size // META["BM"]), B * H),
            (q, k, v, do, dq, lse, delta, ids, cnt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
             *ids.stride()[:3], *cnt.stride()[:2], T, H, G, scale * LOG2E, scale), meta)
    q_ids, q_cnt = transpose_selection(ids, cnt, n_blocks)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    _launch(block_sparse_bwd_dkdv_kernel, "bwd", block_size,
            lambda META: (n_blocks * (block_size // META["BN"]), B * Hkv),
            (q, k, v, do, dk, dv, lse, delta, q_ids, q_cnt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
             *q_ids.stride()[:3], *q_cnt.stride()[:2], T, H, Hkv, G, scale * LOG2E, scale), meta)
    return dq, dk, dv


class BlockSparseAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ids, cnt, block_size, scale):
        o, lse = _fwd(q, k, v, ids, cnt, block_size, scale)
        ctx.save_for_backward(q, k, v, o, lse, ids, cnt)
        ctx.block_size, ctx.scale = block_size, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, ids, cnt = ctx.saved_tensors
        dq, dk, dv = _bwd(q, k, v, o, lse, do.contiguous(), ids, cnt, ctx.block_size, ctx.scale)
        return dq, dk, dv, None, None, None, None


def triton_block_sparse_attention(q, k, v, block_ids, block_counts, *, block_size: int, scale: float):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    ids, cnt = block_ids.to(torch.int32).contiguous(), block_counts.to(torch.int32).contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return BlockSparseAttentionFunction.apply(q, k, v, ids, cnt, block_size, float(scale))
    return _fwd(q, k, v, ids, cnt, block_size, float(scale))[0]
