"""Triton block-sparse attention (forward, backward, decode) against the dense masked reference, on the
CPU through Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported). Tiny shapes: the
interpreter is slow. The same checks at real shapes (bf16, H=16, D=128) run in benchmarks/sparse_gpu.py."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from attnzoo.ops.sparse import (  # noqa: E402
    block_queries,
    block_sparse_attention,
    block_sparse_decode,
    pooled_block_keys,
    select_blocks,
)
from tests.ops._checks import rel  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 4e-3}


def rand(*shape, seed, dtype):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def fwd_bwd(impl, q, k, v, ids, cnt, bs, do):
    ins = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    o = block_sparse_attention(*ins, ids, cnt, block_size=bs, impl=impl)
    o.backward(do.to(o.dtype))
    return [o] + [t.grad for t in ins]


def check(q, k, v, ids, cnt, bs):
    do = rand(*q.shape, seed=9, dtype=torch.float32)
    got = fwd_bwd("triton", q, k, v, ids, cnt, bs, do)
    want = fwd_bwd("reference", q.double(), k.double(), v.double(), ids, cnt, bs, do.double())
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        assert a.dtype == q.dtype and torch.isfinite(a).all(), name
        assert rel(a, b) < TOL[q.dtype], (name, rel(a, b))


def test_topk_selection_gqa_partial_last_block_float32():
    B, T, Hq, Hkv, D, bs = 1, 70, 4, 2, 16, 16  # 5 query blocks, the last one 6 tokens long
    q, k, v = (rand(B, T, h, D, seed=s, dtype=torch.float32) for s, h in ((0, Hq), (1, Hkv), (2, Hkv)))
    ids, cnt = select_blocks(block_queries(q, bs), pooled_block_keys(k, None, bs), top_k=1, sink_blocks=1)
    assert cnt.max() == 3 and cnt.min() == 1  # variable length lists (early blocks have fewer candidates)
    check(q, k, v, ids, cnt, bs)


def test_hand_made_selection_of_different_lengths_per_head_block_32_float16():
    B, T, H, D, bs = 2, 96, 2, 32, 32
    q, k, v = (rand(B, T, H, D, seed=s, dtype=torch.float16) for s in (3, 4, 5))
    ids = torch.full((B, H, 3, 3), -1, dtype=torch.int32)
    cnt = torch.zeros(B, H, 3, dtype=torch.int32)
    for m in range(3):
        ids[:, 0, m, : m + 1] = torch.arange(m + 1, dtype=torch.int32)  # head 0: every block (dense causal)
        cnt[:, 0, m] = m + 1
        ids[:, 1, m, 0] = m  # head 1: only its own block
        cnt[:, 1, m] = 1
    ids[1, 1, 2, :2] = torch.tensor([0, 2], dtype=torch.int32)  # one row of batch 1 also reads block 0
    cnt[1, 1, 2] = 2
    check(q, k, v, ids, cnt, bs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_kernel_rows_of_different_lengths_and_empty_splits(dtype):
    B, L, Hq, Hkv, D, bs = 3, 90, 4, 2, 16, 16
    q = rand(B, Hq, D, seed=6, dtype=dtype)
    k, v = rand(B, L, Hkv, D, seed=7, dtype=dtype), rand(B, L, Hkv, D, seed=8, dtype=dtype)
    lens = torch.tensor([90, 33, 17])
    kbar = pooled_block_keys(k, torch.arange(L)[None] < lens[:, None], bs)
    ids, cnt = select_blocks(q[:, None], kbar, top_k=2, sink_blocks=1, q_block=((lens - 1) // bs)[:, None])
    ids, cnt = ids[:, :, 0], cnt[:, :, 0]
    o = block_sparse_decode(q, k, v, ids, cnt, lens, block_size=bs, impl="triton")
    ref = block_sparse_decode(q.double(), k.double(), v.double(), ids, cnt, lens, block_size=bs, impl="reference")
    assert o.dtype == dtype and rel(o, ref) < TOL[dtype]


def test_triton_refuses_what_it_cannot_take():
    q = rand(1, 32, 2, 16, seed=0, dtype=torch.float32)
    ids, cnt = select_blocks(block_queries(q, 16), pooled_block_keys(q, None, 16), top_k=1)
    with pytest.raises(ValueError, match="block_size"):
        block_sparse_attention(q, q, q, *select_blocks(block_queries(q, 8), pooled_block_keys(q, None, 8), top_k=1),
                               block_size=8, impl="triton")
    with pytest.raises(ValueError, match="bfloat16"):
        qb = q.bfloat16()
        block_sparse_attention(qb, qb, qb, ids, cnt, block_size=16, impl="triton")
