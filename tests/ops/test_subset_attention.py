"""subset_causal_attention: causal attention for sorted query subsets (MoH's routed heads)."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.softmax import softmax_attention
from attnzoo.ops.softmax.subset import subset_causal_attention, subset_causal_attention_reference


def subsets(B=2, H=3, L=50, D=8, density=0.4, seed=0, dtype=torch.float64):
    """Random query subsets: per (b, h) the selected positions sorted, padded to the largest count."""
    g = torch.Generator().manual_seed(seed)
    k, v = (torch.randn(B, H, L, D, generator=g, dtype=dtype) for _ in range(2))
    chosen = torch.rand(B, H, L, generator=g) < density
    count = chosen.sum(-1)
    n = int(count.max())
    q_pos = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)[..., :n]
    q = torch.randn(B, H, n, D, generator=g, dtype=dtype)
    return q, k, v, q_pos, count


def test_reference_is_softmax_attention_at_the_selected_positions():
    q, k, v, q_pos, count = subsets()
    o = subset_causal_attention_reference(q, k, v, q_pos, count)
    B, H, n, D = q.shape
    for b in range(B):
        for h in range(H):
            c = int(count[b, h])
            want = softmax_attention(q[b, h, :c][None, :, None], k[b, h][None, :, None], v[b, h][None, :, None],
                                     causal=True, q_pos=q_pos[b, h, :c][None], impl="reference")[0, :, 0]
            assert torch.allclose(o[b, h, :c], want, atol=1e-12)
            assert (o[b, h, c:] == 0).all()  # padding slots


@pytest.mark.parametrize("block", [None, 1, 3, 7, 16, 64, (12, 4), (9, 3, 1)])
def test_fast_path_equals_reference_for_any_block_size(block):
    q, k, v, q_pos, count = subsets(seed=1)
    o = subset_causal_attention(q, k, v, q_pos, count, block=block)
    assert torch.allclose(o, subset_causal_attention_reference(q, k, v, q_pos, count), atol=1e-12)


def test_offset_queries_dense_queries_and_float32():
    # queries = the last 9 positions of 40 keys (a KV-cache continuation), every slot real
    q, k, v, _, _ = subsets(B=1, H=2, L=40, seed=2)
    q = q[:, :, :9]
    q_pos = torch.arange(31, 40).expand(1, 2, 9)
    ref = subset_causal_attention_reference(q, k, v, q_pos)
    assert torch.allclose(subset_causal_attention(q, k, v, q_pos, block=4), ref, atol=1e-12)
    q, k, v, q_pos, count = (t.float() if t.is_floating_point() else t for t in subsets(L=300, D=16, seed=3))
    o = subset_causal_attention(q, k, v, q_pos, count)
    ref = subset_causal_attention_reference(q.double(), k.double(), v.double(), q_pos, count)
    assert (o.double() - ref).abs().max() < 2e-6


def test_gradients_match_the_reference():
    q, k, v, q_pos, count = subsets(B=1, H=2, L=30, seed=4)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    w = torch.randn(q.shape[:3] + (v.shape[-1],), dtype=q.dtype)
    o = subset_causal_attention(*ins, q_pos, count, block=5)  # autograd: the masked-SDPA path
    o_ref = subset_causal_attention_reference(*ref, q_pos, count)
    assert torch.allclose(o, o_ref, atol=1e-12)
    (o * w).sum().backward()
    (o_ref * w).sum().backward()
    for a, b in zip(ins, ref):
        assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_bad_inputs_raise():
    q, k, v, q_pos, count = subsets()
    with pytest.raises(ValueError, match="q_pos"):
        subset_causal_attention(q, k, v, q_pos.float(), count)
    with pytest.raises(ValueError, match="count"):
        subset_causal_attention(q, k, v, q_pos, count[0])
    with pytest.raises(ValueError, match=r"\[B, H, n, D\]"):
        subset_causal_attention(q[0], k, v, q_pos, count)
    with pytest.raises(ValueError, match="positions"):
        subset_causal_attention(q, k[:, :, :10], v[:, :, :10], q_pos, count)
    with pytest.raises(ValueError, match="block"):
        subset_causal_attention(q, k, v, q_pos, count, block=0)
