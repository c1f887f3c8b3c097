"""Sliding-window (local) causal softmax attention: each token sees itself and the w-1 tokens
before it (Beltagy et al. 2020, Longformer, arXiv:2004.05150; Child et al. 2019).

    y_t = sum_{s=t-w+1..t} softmax_s(q_t · k_s / sqrt(d)) v_s

Decoding keeps only the last w keys/values (memory O(w), not O(T)).
"""

from __future__ import annotations

from functools import partial

from attnzoo.mixers.softmax import SoftmaxAttention, kv_cache_bytes
from attnzoo.registry import Card, Paper, register


@register(
    "sliding_window",
    card=Card(
        title="Sliding-window causal softmax attention",
        paper=Paper("Longformer: The Long-Document Transformer", "Beltagy et al.", 2020, "2004.05150"),
        family="softmax",
        complexity="O(T w d)",
        state_bytes=partial(kv_cache_bytes, window=64),  # the last `window` tokens' K/V (default 64)
        causal=True,
        example_kwargs={"n_heads": 4, "window": 8},
    ),
)
class SlidingWindow(SoftmaxAttention):
    def __init__(self, d_model: int, *, window: int = 64, **kw):
        if kw.pop("causal", True) is not True:
            raise ValueError("sliding_window is causal; use softmax(window=..., causal=False) for a local encoder")
        super().__init__(d_model, window=window, causal=True, **kw)
