"""Block top-k sparse attention: public functions (input checks + dispatch).

    ids, counts = select_blocks(block_queries(q, bs), pooled_block_keys(k, None, bs), top_k=..., ...)
    o = block_sparse_attention(q, k, v, ids, counts, block_size=bs, impl="auto")
    o = block_topk_attention(q, k, v, block_size=bs, top_k=..., sink_blocks=..., local_blocks=...)
    o = block_sparse_decode(q, k_cache, v_cache, ids, counts, cache_lens, block_size=bs)

Shapes: q [B, T, Hq, D], k, v [B, T, Hkv, D] (Hq a multiple of Hkv: GQA), causal on positions
0..T-1; the selection layout is blocks.py's (block_ids int32 [B, Hkv, M, S] ascending, -1 padded,
block_counts [B, Hkv, M], M = ceil(T / bs)). Decode: q [B, Hq, D] at position cache_lens[b] - 1,
caches [B, L, Hkv, D], block_ids [B, Hkv, S], block_counts [B, Hkv].

impl: "reference" (dense masked softmax, float32), "torch" (gathers the selected blocks), "triton"
(FlashAttention-style kernels over the selected blocks; forward and backward, and a split-K decode
kernel), "auto" (Triton on CUDA when the shape is supported, else torch). All take the same arguments.
select_blocks has its own impl: the torch reference or one fused Triton kernel (triton/block_select.py).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.dispatch import resolve_impl, triton_interpret
from attnzoo.ops.common.precision import autocast_off, autocast_operands
from attnzoo.ops.sparse.blocks import block_queries, pooled_block_keys, select_blocks
from attnzoo.ops.sparse.gather import block_sparse_attention_torch, block_sparse_decode_torch
from attnzoo.ops.sparse.reference import block_sparse_attention_reference, block_sparse_decode_reference

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_BLOCK_SIZES = (16, 32, 64, 128)
MAX_HEAD_DIM = 128


def triton_supported(q, k, v, *, block_size: int) -> bool:
    """Shapes and dtypes the Triton kernels take (the device is dispatch's business)."""
    return (q.dtype in DTYPES and k.dtype == q.dtype and v.dtype == q.dtype and block_size in TRITON_BLOCK_SIZES
            and q.shape[-1] <= MAX_HEAD_DIM and v.shape[-1] == q.shape[-1])


def _check_triton(q, k, v, block_size):
    if not triton_supported(q, k, v, block_size=block_size):
        raise ValueError(f"triton block-sparse attention needs q, k, v of one dtype in {DTYPES}, block_size in "
                         f"{TRITON_BLOCK_SIZES}, head dim <= {MAX_HEAD_DIM} and equal for q, k and v; got "
                         f"{q.dtype}/{k.dtype}/{v.dtype}, block_size={block_size}, D={q.shape[-1]}, "
                         f"Dv={v.shape[-1]} (impl='torch' takes any)")
    if not (q.is_cuda or triton_interpret()):
        raise ValueError("triton block-sparse attention needs CUDA tensors (or TRITON_INTERPRET=1)")
    if not q.is_cuda and q.dtype == torch.bfloat16:
        raise ValueError("Triton 3.6's CPU interpreter multiplies bfloat16 tiles wrongly in tl.dot: use "
                         "float16/float32 there, or impl='torch'")


def _check_common(q, k, v, block_size):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if k.shape != v.shape[:-1] + k.shape[-1:] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"k and v must agree but for the last dim, and q's head dim must be k's; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-2] % k.shape[-2]:
        raise ValueError(f"query heads ({q.shape[-2]}) must be a multiple of KV heads ({k.shape[-2]})")


def _check_selection(block_ids, block_counts, want):
    """block_ids int [*want, S], block_counts int [*want]."""
    ok = (block_ids.dtype in (torch.int32, torch.int64) and block_counts.dtype in (torch.int32, torch.int64)
          and block_ids.dim() == len(want) + 1 and tuple(block_ids.shape[:-1]) == want
          and tuple(block_counts.shape) == want)
    if not ok:
        raise ValueError(f"block_ids must be int32/int64 [{', '.join(map(str, want))}, S] and block_counts "
                         f"[{', '.join(map(str, want))}], got {block_ids.dtype} {tuple(block_ids.shape)} and "
                         f"{block_counts.dtype} {tuple(block_counts.shape)}")


def block_sparse_attention(q, k, v, block_ids, block_counts, *, block_size: int, scale: float | None = None,
                           impl: str = "auto"):
    """Causal attention of each query block over its selected key blocks: o [B, T, Hq, D] in q's dtype."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:2] != q.shape[:2]:
        raise ValueError(f"q [B, T, Hq, D], k, v [B, T, Hkv, D] with one B and T, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    _check_common(q, k, v, block_size)
    B, T, _, D = q.shape
    M = -(-T // block_size)
    _check_selection(block_ids, block_counts, (B, k.shape[2], M))
    scale = D**-0.5 if scale is None else float(scale)
    q, k, v = autocast_operands(q, k, v)  # under autocast: one dtype, the region's (the kernels take one)
    with autocast_off(q):
        return _block_sparse_attention(q, k, v, block_ids, block_counts, block_size, scale, impl)


def _block_sparse_attention(q, k, v, block_ids, block_counts, block_size, scale, impl):
    impl = resolve_impl(impl, q, k, v, triton_supported=triton_supported(q, k, v, block_size=block_size))
    if impl == "reference":
        return block_sparse_attention_reference(q, k, v, block_ids, block_counts, block_size=block_size, scale=scale)
    if impl == "torch":
        return block_sparse_attention_torch(q, k, v, block_ids, block_counts, block_size=block_size, scale=scale)
    _check_triton(q, k, v, block_size)
    from attnzoo.ops.sparse.triton.attention import triton_block_sparse_attention

    return triton_block_sparse_attention(q, k, v, block_ids, block_counts, block_size=block_size, scale=scale)


def block_sparse_decode(q, k_cache, v_cache, block_ids, block_counts, cache_lens, *, block_size: int,
                        scale: float | None = None, impl: str = "auto"):
    """One query per sequence over the selected blocks of its cache: o [B, Hq, D]. No gradient (decode)."""
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.dim() != 4 or k_cache.shape[0] != q.shape[0]:
        raise ValueError(f"q [B, Hq, D], k_cache, v_cache [B, L, Hkv, D], got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    _check_common(q, k_cache, v_cache, block_size)
    B, Hkv = q.shape[0], k_cache.shape[2]
    _check_selection(block_ids, block_counts, (B, Hkv))
    if cache_lens.shape != (B,):
        raise ValueError(f"cache_lens must be [B={B}], got {tuple(cache_lens.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k_cache, v_cache = autocast_operands(q, k_cache, v_cache)
    with autocast_off(q):
        return _block_sparse_decode(q, k_cache, v_cache, block_ids, block_counts, cache_lens, block_size, scale, impl)


def _block_sparse_decode(q, k_cache, v_cache, block_ids, block_counts, cache_lens, block_size, scale, impl):
    kw = {"block_size": block_size, "scale": scale}
    impl = resolve_impl(impl, q, k_cache, v_cache,
                        triton_supported=triton_supported(q, k_cache, v_cache, block_size=block_size))
    if impl == "reference":
        return block_sparse_decode_reference(q, k_cache, v_cache, block_ids, block_counts, cache_lens, **kw)
    if impl == "torch":
        return block_sparse_decode_torch(q, k_cache, v_cache, block_ids, block_counts, cache_lens, **kw)
    _check_triton(q, k_cache, v_cache, block_size)
    from attnzoo.ops.sparse.triton.decode import triton_block_sparse_decode

    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    return triton_block_sparse_decode(q, k_cache, v_cache, block_ids.to(torch.int32), block_counts.to(torch.int32),
                                      cache_lens, **kw)


def block_topk_attention(q, k, v, *, block_size: int, top_k: int, sink_blocks: int = 0, local_blocks: int = 1,
                         score: str = "softmax", scale: float | None = None, impl: str = "auto"):
    """Selection (blocks.py, from each query block's first query and the pooled keys; the fused Triton kernel
    where impl resolves to Triton) and attention in one call: returns (o, block_ids, block_counts). The
    selection carries no gradient."""
    with torch.no_grad():
        ids, counts = select_blocks(block_queries(q, block_size), pooled_block_keys(k, None, block_size),
                                    top_k=top_k, sink_blocks=sink_blocks, local_blocks=local_blocks, score=score,
                                    scale=scale, impl="torch" if impl == "reference" else impl)
    return block_sparse_attention(q, k, v, ids, counts, block_size=block_size, scale=scale, impl=impl), ids, counts
