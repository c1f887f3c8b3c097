"""Softmax attention ops: a reference with explicit scores and an SDPA path.

    o = softmax_attention(q, k, v, causal=True)                 # q [B,Tq,Hq,D], k/v [B,Tk,Hkv,D]
    o, p = softmax_attention(q, k, v, return_probs=True, impl="reference")   # p [B,Hq,Tq,Tk]
"""

from attnzoo.ops.softmax.api import attention_allowed, softmax_attention

__all__ = ["softmax_attention", "attention_allowed"]
