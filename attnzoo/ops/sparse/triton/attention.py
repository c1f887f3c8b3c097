"""Launchers and the autograd wrapper of the Triton block-sparse attention (forward.py, backward.py).

    o = triton_block_sparse_attention(q, k, v, block_ids, block_counts, *, block_size, scale)

q [B, T, Hq, D], k, v [B, T, Hkv, D] (one dtype: float16, bfloat16 or float32), block_ids int32
[B, Hkv, M, S], block_counts int32 [B, Hkv, M] (blocks.py). Gradients flow to q, k, v; the forward
keeps o and the row log-sum-exp (float32 [B, Hq, T]) for the backward.
"""

from __future__ import annotations

import torch
import triton



LOG2E = 1.4426950408889634


def _fwd(q, k, v, ids, cnt, block_size, scale):
    from attnzoo.ops.sparse.triton.forward import block_sparse_fwd_kernel, forward_config

    B, T, H, D = q.shape
    G = H // k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    cfg = forward_config(block_size, D)
    grid = (triton.cdiv(T, block_size) * (block_size // cfg["BM"]), B * H)
    block_sparse_fwd_kernel[grid](
        q, k, v, o, lse, ids, cnt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        *ids.stride()[:3], *cnt.stride()[:2], T, H, G, scale * LOG2E,
        BS=block_size, BM=cfg["BM"], BN=cfg["BN"], D=D, BD=triton.next_power_of_2(D),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return o, lse


def _bwd(q, k, v, o, lse, do, ids, cnt, block_size, scale):
    from attnzoo.ops.sparse.triton.backward import (
        backward_config,
        block_sparse_bwd_dkdv_kernel,
        block_sparse_bwd_dq_kernel,
        transpose_selection,
    )

    B, T, H, D = q.shape
    Hkv = k.shape[2]
    G = H // Hkv
    n_blocks = triton.cdiv(T, block_size)
    delta = (o.float() * do.float()).sum(-1).transpose(1, 2).contiguous()  # [B, H, T]
    cfg = backward_config(block_size)
    BD = triton.next_power_of_2(D)
    kw = {"BS": block_size, "BM": cfg["BM"], "BN": cfg["BN"], "D": D, "BD": BD,
          "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    dq = torch.empty_like(q)
    block_sparse_bwd_dq_kernel[(n_blocks * (block_size // cfg["BM"]), B * H)](
        q, k, v, do, dq, lse, delta, ids, cnt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *ids.stride()[:3], *cnt.stride()[:2], T, H, G, scale * LOG2E, scale, **kw,
    )
    q_ids, q_cnt = transpose_selection(ids, cnt, n_blocks)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    block_sparse_bwd_dkdv_kernel[(n_blocks * (block_size // cfg["BN"]), B * Hkv)](
        q, k, v, do, dk, dv, lse, delta, q_ids, q_cnt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *q_ids.stride()[:3], *q_cnt.stride()[:2], T, H, Hkv, G, scale * LOG2E, scale, **kw,
    )
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
