"""block_sparse decode keeps the pooled keys of complete blocks in its state and pools only the block a
step completes: the incremental pooled keys equal pooling the whole cache, and the outputs are unchanged."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.ops.sparse import pooled_block_keys, update_pooled_keys

D = 32


def build(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    kw = {"n_heads": 4, "n_kv_heads": 2, "block_size": 4, "top_k": 2, "n_sink": 1, "window": 2, **kw}
    return attnzoo.build("block_sparse", d_model=D, **kw).to(dtype).eval()


def exact_blocks(state, bs):
    """Pooling the whole cache, and how many leading blocks of each row are complete."""
    full = pooled_block_keys(state.k, state.valid, bs)[:, : state.k.shape[1] // bs]
    return full, state.seen // bs


def test_update_pooled_keys_pools_only_the_completed_rows_block_and_leaves_its_input_alone():
    B, L, H, hd, bs = 3, 12, 2, 5, 4
    K = torch.randn(B, L, H, hd, dtype=torch.float64)
    old = torch.randn(B, 2, H, hd, dtype=torch.float64)
    kept = old.clone()
    total = torch.tensor([12, 11, 8])
    out = update_pooled_keys(old, K, total, torch.tensor([True, False, True]), bs)
    assert torch.equal(old, kept) and out.shape == (B, 3, H, hd)
    assert torch.allclose(out[0, 2], K[0, 8:12].mean(0), atol=1e-14)  # row 0 completed block 2 (grown slot)
    assert torch.equal(out[1, :2], old[1]) and (out[1, 2] == 0).all()  # row 1 completed nothing
    assert torch.allclose(out[2, 1], K[2, 4:8].mean(0), atol=1e-14) and torch.equal(out[2, 0], old[2, 0])


@pytest.mark.parametrize("score", ["softmax", "logits"])
def test_decode_pooled_keys_equal_whole_cache_pooling_and_outputs_are_unchanged(score, monkeypatch):
    bs = 4
    m = build(score=score)
    x = torch.randn(2, 23, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False  # rows at different paces: row 1 has 6 tokens after the prefill, row 0 has 9
    import attnzoo.mixers.block_sparse as mod

    pooled_calls = []
    real_pool = mod.pooled_block_keys
    monkeypatch.setattr(mod, "pooled_block_keys", lambda *a: pooled_calls.append(a[0].shape) or real_pool(*a))
    with torch.no_grad():
        y, s = m(x[:, :9], mask=mask, return_state=True)
        outs = [y]
        for t in range(9, 23):
            n_before = len(pooled_calls)
            y, s = m(x[:, t:t + 1], state=s, return_state=True)
            assert len(pooled_calls) == n_before  # a decode step never pools the whole cache
            full, ncomplete = exact_blocks(s, bs)
            assert s.kbar.shape == full.shape
            for b in range(2):
                n = int(ncomplete[b])
                assert torch.allclose(s.kbar[b, :n], full[b, :n], atol=1e-14, rtol=0), (t, b)
            outs.append(y)
        # the same steps with the pooled keys dropped from the state: the whole cache is pooled each step
        y0, s0 = m(x[:, :9], mask=mask, return_state=True)
        ref = [y0]
        for t in range(9, 23):
            s0.kbar = None
            y0, s0 = m(x[:, t:t + 1], state=s0, return_state=True)
            ref.append(y0)
    assert torch.allclose(torch.cat(outs, 1), torch.cat(ref, 1), atol=1e-12)
    # and both equal one forward over each row's real tokens
    with torch.no_grad():
        for b, n_pre in ((0, 9), (1, 6)):
            xs = torch.cat([x[b:b + 1, :n_pre], x[b:b + 1, 9:]], 1)
            whole = m(xs)
            got = torch.cat([outs[0][b:b + 1, :n_pre], torch.cat(outs[1:], 1)[b:b + 1]], 1)
            assert torch.allclose(got, whole, atol=1e-10)


def test_full_mode_state_keeps_pooled_keys_and_a_bad_kbar_is_refused():
    m = build(mode="full")
    x = torch.randn(1, 10, D, dtype=torch.float64)
    with torch.no_grad():
        _, s = m(x, return_state=True)
        full, _ = exact_blocks(s, 4)
        assert torch.allclose(s.kbar, full, atol=1e-14)
        m.mode = "sparse"
        s.kbar = s.kbar[:, :1]
        with pytest.raises(ValueError, match="pooled keys"):
            m(x[:, :1], state=s)


def test_chunked_prefill_pools_only_the_new_blocks_and_equals_one_forward(monkeypatch):
    import attnzoo.mixers.block_sparse as mod

    m = build()
    x = torch.randn(2, 30, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, 10:] = False  # row 1: 10 tokens in the first chunk (2 complete blocks), row 0: 13 (3 blocks)
    pooled = []
    real_pool = mod.pooled_block_keys
    monkeypatch.setattr(mod, "pooled_block_keys", lambda *a: pooled.append(a[0].shape[1]) or real_pool(*a))
    with torch.no_grad():
        y1, s = m(x[:, :13], mask=mask, return_state=True)
        y2, s = m(x[:, 13:], state=s, return_state=True)  # 17 more tokens per row
        assert pooled[-1] == int(s.seen.max()) - 2 * 4  # the timeline after the 2 blocks complete in both rows
        full, n = exact_blocks(s, 4)
        for b in range(2):
            assert torch.allclose(s.kbar[b, : n[b]], full[b, : n[b]], atol=1e-14, rtol=0)
        for b, n_pre in ((0, 13), (1, 10)):
            whole = m(torch.cat([x[b:b + 1, :n_pre], x[b:b + 1, 13:]], 1))
            assert torch.allclose(torch.cat([y1[b:b + 1, :n_pre], y2[b:b + 1]], 1), whole, atol=1e-10)
