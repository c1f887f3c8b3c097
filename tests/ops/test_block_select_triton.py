"""The fused Triton block selection (ops/sparse/triton/block_select.py) against the torch selection
(blocks.select_blocks, the reference), on the CPU through Triton's interpreter (TRITON_INTERPRET=1 before
triton is imported): the same block ids and counts for prefill and decode, GQA, both scores, sink and
local blocks, and the explicit tie rule (equal scores: the lower block index first) on both paths."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from attnzoo.ops.sparse import block_queries, pooled_block_keys, select_blocks  # noqa: E402


def rand(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def both(qrep, kbar, **kw):
    a = select_blocks(qrep, kbar, impl="torch", **kw)
    b = select_blocks(qrep, kbar, impl="triton", **kw)
    return a, b


# (B, T, Hq, Hkv, D, bs, top_k, sink, local, score)
PREFILL = [
    (2, 70, 4, 2, 16, 8, 3, 1, 2, "softmax"),  # GQA 2, a partial last block
    (1, 100, 2, 2, 8, 4, 5, 0, 1, "logits"),  # 25 query blocks, no sink
    (1, 64, 8, 1, 12, 4, 2, 2, 3, "softmax"),  # GQA 8, D not a power of two
    (1, 40, 2, 1, 8, 4, 20, 1, 1, "logits"),  # top_k above every row's candidates: all of them
    (1, 24, 2, 2, 8, 4, 0, 1, 2, "softmax"),  # top_k = 0: only the forced blocks
]


@pytest.mark.parametrize("B,T,Hq,Hkv,D,bs,top_k,sink,local,score", PREFILL)
def test_prefill_selection_equals_torch(B, T, Hq, Hkv, D, bs, top_k, sink, local, score):
    q, k = rand(B, T, Hq, D, seed=T), rand(B, T, Hkv, D, seed=T + 1)
    (ia, ca), (ib, cb) = both(block_queries(q, bs), pooled_block_keys(k, None, bs), top_k=top_k, sink_blocks=sink,
                              local_blocks=local, score=score)
    assert ib.dtype == torch.int32 and cb.dtype == torch.int32 and ib.shape == ia.shape
    assert torch.equal(ca, cb) and torch.equal(ia, ib)
    assert ia.shape[-1] == min(-(-T // bs), sink + min(top_k, -(-T // bs)) + local)


def test_float16_inputs_and_strided_block_queries():
    q, k = rand(1, 96, 4, 16, seed=3, dtype=torch.float16), rand(1, 96, 2, 16, seed=4, dtype=torch.float16)
    qrep = block_queries(q, 8)  # a strided view (every 8th token): read in place
    assert not qrep.is_contiguous()
    (ia, ca), (ib, cb) = both(qrep, pooled_block_keys(k, None, 8), top_k=3, sink_blocks=1, local_blocks=1)
    assert torch.equal(ia, ib) and torch.equal(ca, cb)


@pytest.mark.parametrize("score", ["softmax", "logits"])
def test_decode_rows_of_different_lengths_equal_torch(score):
    B, L, Hq, Hkv, D, bs = 3, 90, 4, 2, 16, 8
    q, k = rand(B, 1, Hq, D, seed=6), rand(B, L, Hkv, D, seed=7)
    lens = torch.tensor([90, 33, 8])
    kbar = pooled_block_keys(k, torch.arange(L)[None] < lens[:, None], bs)
    (ia, ca), (ib, cb) = both(q, kbar, top_k=3, sink_blocks=1, local_blocks=2, score=score,
                              q_block=((lens - 1) // bs)[:, None])
    assert torch.equal(ia, ib) and torch.equal(ca, cb)
    assert (ia[2, :, 0, : int(cb[2, 0, 0])] == 0).all()  # a row in its first block reads only that block


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("score", ["softmax", "logits"])
def test_ties_take_the_lower_block_index_first(impl, score):
    """Exact ties (identical pooled keys, or a zero query: every score equal) resolve to the lower index."""
    B, Hq, Hkv, D, N = 1, 2, 1, 8, 12
    kbar = rand(B, N, Hkv, D, seed=11)
    key = 5 * kbar[:, 2:3].sign()
    kbar[:, [2, 5, 9]] = key  # blocks 2, 5, 9: one key, which the query below scores highest
    q = key.sign().expand(B, 1, Hq, D).contiguous()
    kw = {"sink_blocks": 0, "local_blocks": 1, "score": score, "impl": impl, "q_block": torch.tensor([[11]])}
    ids, cnt = select_blocks(q, kbar, top_k=2, **kw)
    assert ids[0, 0, 0, : cnt[0, 0, 0]].tolist() == [2, 5, 11]  # of the tied 2, 5, 9: the two lowest
    ids, cnt = select_blocks(torch.zeros_like(q), kbar, top_k=4, **{**kw, "q_block": torch.tensor([[9]])})
    assert ids[0, 0, 0].tolist() == [0, 1, 2, 3, 9]  # all nine candidates tie: blocks 0..3, then the own block
    ids, cnt = select_blocks(torch.zeros_like(q), kbar, top_k=2, **{**kw, "sink_blocks": 1,
                                                                      "q_block": torch.tensor([[9]])})
    assert ids[0, 0, 0].tolist() == [0, 1, 2, 9]  # sink 0 forced, then the lowest tied candidates 1, 2
    ids, cnt = select_blocks(-q, kbar, top_k=3, **kw)  # negative logits (the order-preserving key's other half)
    assert torch.equal(ids, select_blocks(-q, kbar, top_k=3, **{**kw, "impl": "torch"})[0])


def test_prefill_in_ranges_of_query_blocks_equals_one_launch(monkeypatch):
    """The prefill launches per range of query blocks ([0, 4), [4, 8), [8, 16), [16, 25) here) with lanes for
    the blocks each range can read: the same selection as the torch path."""
    import attnzoo.ops.sparse.triton.block_select as bsel

    monkeypatch.setattr(bsel, "PREFILL_SPLIT_MIN", 4)
    q, k = rand(1, 100, 4, 8, seed=21), rand(1, 100, 2, 8, seed=22)
    for score in ("softmax", "logits"):
        (ia, ca), (ib, cb) = both(block_queries(q, 4), pooled_block_keys(k, None, 4), top_k=3, sink_blocks=1,
                                  local_blocks=2, score=score)
        assert torch.equal(ia, ib) and torch.equal(ca, cb)


def test_triton_selection_refuses_what_it_cannot_take():
    q, k = rand(1, 1, 2, 8, seed=0, dtype=torch.float64), rand(1, 16, 2, 8, seed=1, dtype=torch.float64)
    with pytest.raises(ValueError, match="Triton selection"):
        select_blocks(q, k, top_k=1, impl="triton", q_block=torch.tensor([[3]]))
    ids, _ = select_blocks(q, k, top_k=1, impl="auto", q_block=torch.tensor([[3]]))  # auto on the CPU: torch
    assert ids.shape == (1, 2, 1, 2)
    with pytest.raises(ValueError, match="q_block"):
        select_blocks(q.float(), k.float(), top_k=1, impl="triton", q_block=torch.tensor([3]))


def test_auto_takes_triton_where_measured_faster(monkeypatch):
    """impl="auto": the fused selection on CUDA within SELECT_TRITON_MAX_WORK (rows · rounds · lanes; the
    H100 run: 2.6e8 faster, 1.0e9 slower than torch), torch beyond it, and never when switched off."""
    from attnzoo.ops.sparse import blocks

    def preferred(B, M, N, Hkv, G, top_k, decode=False):
        q, kb = torch.zeros(B, M, Hkv * G, 16), torch.zeros(B, N, Hkv, 16)
        return blocks.triton_select_preferred(q, kb, top_k, torch.zeros(B, M, dtype=torch.long) if decode else None)

    assert preferred(1, 1024, 1024, 4, 4, 61)            # GQA at 64k, blocks of 64: 2.6e8
    assert preferred(1, 512, 512, 16, 1, 29)             # 64k, blocks of 128: 1.2e8
    assert preferred(8, 1, 2048, 16, 1, 125, decode=True)  # decode at 128k
    assert not preferred(1, 1024, 1024, 16, 1, 61)       # 64k, blocks of 64, Hkv 16: 1.0e9 (torch was faster)
    monkeypatch.setattr(blocks, "SELECT_TRITON_AUTO", False)
    assert not preferred(1, 16, 16, 1, 1, 2)
