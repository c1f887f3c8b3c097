"""Long sequences run as cache-sized segments (chunk_layout.segments): the chunked GLA and delta
rule give the same outputs, final state and gradients whether the sequence is cut into segments
or not, and the layout helpers round-trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo.ops.common.chunk_layout as layout
from attnzoo.ops.delta.chunk import chunk_delta_rule
from attnzoo.ops.linear.chunk import chunk_gated_linear_attention

B, T, H, K, V = 2, 150, 2, 8, 6


def _grads(fn, leaves, seed):
    o, S = fn()
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() + (
        S * torch.randn(S.shape, generator=gen, dtype=S.dtype)).sum()
    return [o, S, *torch.autograd.grad(loss, leaves)]


def _inputs(gate_shape):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64), torch.randn(B, T, H, K, generator=gen,
                                                                                     dtype=torch.float64)
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(gate_shape, generator=gen, dtype=torch.float64) + 2.0)
    S0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    return [x.requires_grad_() for x in (q, k, v, g, S0)]


def _same_with_and_without_segments(monkeypatch, run, leaves):
    whole = _grads(run, leaves, seed=1)
    monkeypatch.setattr(layout, "SEGMENT_ELEMENTS", 16 * B * H * K)  # 16 steps: 4 chunks of 4 or 1 of 16
    cut = _grads(run, leaves, seed=1)
    assert len(layout.segments(T, 16, B * H, K)) == -(-T // 16)
    for a, b in zip(cut, whole):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_gla_segments_match_one_pass(monkeypatch, gate):
    q, k, v, g, S0 = _inputs((B, T, H) if gate == "scalar" else (B, T, H, K))

    def run():
        return chunk_gated_linear_attention(q, k, v, g, scale=0.5, initial_state=S0, output_final_state=True,
                                            chunk_size=16)

    _same_with_and_without_segments(monkeypatch, run, [q, k, v, g, S0])


def test_delta_rule_segments_match_one_pass(monkeypatch):
    q, k, v, g, S0 = _inputs((B, T, H))
    beta = torch.sigmoid(g.detach() * 3.0).requires_grad_()

    def run():
        return chunk_delta_rule(q, F.normalize(k, dim=-1), v, beta, g, scale=0.5, initial_state=S0,
                                output_final_state=True, chunk_size=16)

    _same_with_and_without_segments(monkeypatch, run, [q, k, v, beta, g, S0])


def test_segments_cover_the_sequence_in_whole_chunks():
    segs = layout.segments(1000, 64, batch_heads=4, width=64)
    assert segs[0][0] == 0 and segs[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))
    assert all((hi - lo) % 64 == 0 for lo, hi in segs[:-1])
    assert layout.segments(10, 64, batch_heads=10**6, width=64) == [(0, 10)]  # at least one chunk


def test_layout_round_trip_with_padding_dtype_and_scale():
    x = torch.randn(2, 13, 3, 5, dtype=torch.bfloat16)
    c = layout.to_chunks(x, 4, 4, torch.float32, scale=0.5)
    assert c.shape == (2, 3, 4, 4, 5) and c.dtype == torch.float32 and c.is_contiguous()
    assert torch.equal(c.reshape(2, 3, 16, 5)[:, :, 13:], torch.zeros(2, 3, 3, 5))
    assert torch.equal(c.reshape(2, 3, 16, 5)[:, :, :13].transpose(1, 2), x.float() * 0.5)  # scaled after the cast
    back = layout.from_chunks(c, 13, torch.float32, scale=2.0)
    assert back.is_contiguous() and torch.equal(back, x.float())


def test_cuda_segments_are_not_cache_sized():
    """On CUDA the cap only bounds memory: Based's 12 heads x 273 features at 32k tokens were 512
    one-chunk segments (a dozen-plus launches each) under the CPU cap, 7 under the CUDA one."""
    assert len(layout.segments(32768, 64, 12, 273)) == len(layout.segments(32768, 64, 12, 273, "cpu")) == 512
    cuda = layout.segments(32768, 64, 12, 273, torch.device("cuda"))
    assert len(cuda) == 7 and cuda[-1][1] == 32768 and all((hi - lo) % 64 == 0 for lo, hi in cuda[:-1])
