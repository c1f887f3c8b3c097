"""Triton kernels of the (gated) delta rule, one concern per file (importing this needs no triton):

- api.py: the entry point triton_delta_rule (checks, custom op, autograd, vmap rule)
- chunk.py: the chunked forward / backward as sequences of launches
- wy.py: the WY / UT transform of each chunk (Ainv, W, U)
- state.py: the state passes across chunks (h, V', final state; dh, dV', dh0)
- backward.py: the per-chunk gradients (dv, dbeta through the UT transform; dq, dk, the gate's db)
- recurrent.py: the token-by-token decode kernel
"""

from attnzoo.ops.delta.triton.api import triton_delta_rule, triton_supported

__all__ = ["triton_delta_rule", "triton_supported"]
