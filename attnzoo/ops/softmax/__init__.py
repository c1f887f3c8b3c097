"""Softmax attention ops: a reference with explicit scores and an SDPA path.

    o = softmax_attention(q, k, v, causal=True)                 # q [B,Tq,Hq,D], k/v [B,Tk,Hkv,D]
    o, p = softmax_attention(q, k, v, return_probs=True, impl="reference")   # p [B,Hq,Tq,Tk]
    o = subset_causal_attention(q, k, v, q_pos)                 # q [B,H,n,D] at positions q_pos
    o, decay = forgetting_attention(q, k, v, log_f)             # FoX: cumulative log forget gate on the logits
    o = stickbreaking_attention(q, k, v)                        # stick-breaking weights (log space)
"""

from attnzoo.ops.softmax.api import attention_allowed, softmax_attention
from attnzoo.ops.softmax.forgetting import forgetting_attention
from attnzoo.ops.softmax.stickbreaking import stickbreaking_attention
from attnzoo.ops.softmax.subset import subset_causal_attention

__all__ = ["attention_allowed", "forgetting_attention", "softmax_attention", "stickbreaking_attention",
           "subset_causal_attention"]
