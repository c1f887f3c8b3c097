"""Triton kernels of gated linear attention, one concern per file (importing this needs no triton):

- api.py: the entry point triton_gated_linear_attention (checks, custom op, autograd, vmap rule)
- chunk.py: the chunked forward / backward as sequences of launches (chunk tables, tuning)
- fused.py: short sequences in one launch forward and one backward (fused.use_fused picks it);
  fused_bwd.py: its backward kernels
- state.py: states entering chunks and their gradients (segmented passes)
- output.py: outputs and dv;  scalar_bwd.py: the scalar gate's dq, dk, dg
- vector.py: the vector gate's intra-chunk scores (sub-chunks);  vector_fast.py: its factorised branch
- safe.py: which chunks the factorised branch takes;  cumsum.py: chunk cumsums of the gate
- recurrent.py: the token-by-token decode kernel
"""

from attnzoo.ops.linear.triton.api import triton_gated_linear_attention, triton_supported

__all__ = ["triton_gated_linear_attention", "triton_supported"]
