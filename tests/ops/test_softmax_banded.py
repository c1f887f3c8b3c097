"""Causal sliding-window attention in query blocks (ops/softmax/banded.py) against the dense
reference (explicit T x T scores), and the dispatch that takes it."""

from __future__ import annotations

import pytest
import torch

import attnzoo
import attnzoo.ops.softmax.api as api
from attnzoo.ops.softmax import softmax_attention
from attnzoo.ops.softmax.banded import band_block, banded_window_attention, use_banded


def qkv(B, Tq, Tk, Hq, Hkv, D, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return r(B, Tq, Hq, D), r(B, Tk, Hkv, D), r(B, Tk, Hkv, D + 3)


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,w", [
    (2, 300, 300, 4, 2, 8),      # GQA, T not a multiple of the block
    (1, 200, 205, 2, 2, 70),     # window > 64: blocks of 80; a short cache before the queries
    (1, 129, 129, 1, 1, 1),      # each query sees only itself
    (1, 500, 520, 2, 1, 64),     # window = block
    (1, 300, 900, 2, 2, 16),     # a long history, most of it older than every window
    (1, 64, 64, 1, 1, 100),      # window wider than the sequence: plain causal
])
def test_banded_equals_dense_reference(B, Tq, Tk, Hq, Hkv, w):
    """Outputs and the gradients of q, k, v in float64."""
    q, k, v = (t.requires_grad_(True) for t in qkv(B, Tq, Tk, Hq, Hkv, 8))
    do = torch.randn(B, Tq, Hq, 11, dtype=torch.float64)
    o = banded_window_attention(q, k, v, window=w, scale=0.3)
    g = torch.autograd.grad(o, (q, k, v), do)
    o_r = softmax_attention(q, k, v, causal=True, window=w, scale=0.3, impl="reference")
    g_r = torch.autograd.grad(o_r, (q, k, v), do)
    assert o.shape == o_r.shape and (o - o_r).abs().max() < 1e-12
    for a, b in zip(g, g_r):
        assert (a - b).abs().max() < 1e-12


def test_dispatch(monkeypatch):
    """softmax_attention takes the blocked path for a causal window with default positions and no
    key mask beyond two blocks of queries; padding masks, explicit positions, non-causal windows and
    short sequences keep the dense mask. Both give the reference's values."""
    calls = []
    real = api.banded_window_attention
    monkeypatch.setattr(api, "banded_window_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = qkv(1, 300, 300, 2, 2, 8, dtype=torch.float32)
    ref = softmax_attention(q, k, v, causal=True, window=16, impl="reference")
    assert (softmax_attention(q, k, v, causal=True, window=16) - ref).abs().max() < 1e-5 and calls == [1]
    mask = torch.ones(1, 300, dtype=torch.bool)
    for kw in (dict(key_mask=mask), dict(q_pos=torch.arange(300)), dict(prefix_len=3)):
        softmax_attention(q, k, v, causal=True, window=16, **kw)
    softmax_attention(q, k, v, causal=False, window=16)
    softmax_attention(q[:, :128], k[:, :128], v[:, :128], causal=True, window=16)   # 2 blocks: dense
    assert calls == [1]
    assert not use_banded(128, 128, 16) and use_banded(129, 129, 16) and not use_banded(300, 200, 16)
    assert [band_block(w) for w in (1, 64, 65, 100)] == [64, 64, 80, 112]
    with pytest.raises(ValueError, match="window"):
        banded_window_attention(q, k, v, window=0, scale=1.0)


@pytest.mark.parametrize("name,kw", [("sliding_window", {"window": 8}), ("based", {"feature_dim": 4, "window": 8})])
def test_mixers_long_sequence_and_continuation(name, kw):
    """A mixer with a sliding-window branch at T = 300 (blocked path) equals its reference impl, and
    a prefill of 140 continued by 160 tokens with the state (a cache before the queries) equals it."""
    torch.manual_seed(0)
    m = attnzoo.build(name, d_model=16, n_heads=2, **kw).double()
    x = torch.randn(2, 300, 16, dtype=torch.float64)
    y = m(x)
    ref = attnzoo.build(name, d_model=16, n_heads=2, impl="reference", **kw).double()
    ref.load_state_dict(m.state_dict())
    assert (y - ref(x)).abs().max() < 1e-10
    y1, state = m(x[:, :140], return_state=True)
    y2 = m(x[:, 140:], state=state)
    assert (torch.cat([y1, y2], 1) - y).abs().max() < 1e-10


def test_compiles_without_graph_breaks():
    q, k, v = qkv(1, 200, 200, 2, 2, 8, dtype=torch.float32)
    fn = torch.compile(lambda q, k, v: banded_window_attention(q, k, v, window=8, scale=0.5), backend="eager",
                       fullgraph=True)
    assert (fn(q, k, v) - softmax_attention(q, k, v, causal=True, window=8, scale=0.5,
                                            impl="reference")).abs().max() < 1e-5
