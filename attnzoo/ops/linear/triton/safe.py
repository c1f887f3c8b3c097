"""The branch test of the vector gate's factorised path (GLA, Yang et al. 2023, arXiv:2312.06635,
§4.1; the bound is vector_fast's docstring): a (chunk, head) is SAFE when its total log
decay is >= −SAFE_LOG in every key channel,

    min_k b[l, h, k] >= −SAFE_LOG,    l the chunk's last valid row

(b the chunk-local cumulative log gate [N_tok, H, K], float32). A minimum is exact in any order,
so every kernel that calls chunk_is_safe on the same b takes the same branch for a chunk. Its own
file because the state passes (triton_state) need it too, and triton_vector_fast imports them.
"""

from __future__ import annotations

import triton
import triton.language as tl

# a chunk is factorised when its total log decay is >= −SAFE_LOG. With the factors centred on half the decay
# (vector_fast.py) 80 is safe (factors within e^{±40}) and is what logsigmoid(x) gates need (chunk totals
# −52..−74); it stays 20: the H100 check at 80 put bf16 dg at 2.1e-2, over its 2e-2 tolerance (everything
# else within 3.7e-3; benchmarks/results/gla_safe80/, notes/triton_gla.md).
SAFE_LOG = tl.constexpr(20.0)
# inside a chunk that is not safe, the sub-chunk kernels (vector.py) may factorise a 16-row diagonal block
# about its own midpoint (chunk.TUNE["vector_sub_factor"]) when its decay is >= −SUB_SAFE_LOG in every channel
# of the K block: factors within e^{±SUB_SAFE_LOG / 2} = e^{±20}, the range of the uncentred SAFE_LOG = 20
# factors checked on the GPU, with float32 operands. logsigmoid(x) gates decay ~ −13 per 16 tokens.
SUB_SAFE_LOG = tl.constexpr(40.0)


@triton.jit
def chunk_is_safe(b, last, i_h, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr):
    """True when min_k b[last, i_h, k] >= −SAFE_LOG (a scalar; identical for any BK)."""
    lo = tl.zeros([BK], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        kk = i_k * BK + tl.arange(0, BK)
        lo = tl.minimum(lo, tl.load(b + last * (H * K) + i_h * K + kk, mask=kk < K, other=0.0))
    return tl.min(lo, axis=0) >= -SAFE_LOG


@triton.jit
def block_is_factorable(br, bre, mk):
    """True when a sub-chunk's own decay b_{r'} − b_r (br, bre [BK]: b at its first and last valid row) is
    >= −SUB_SAFE_LOG in every channel of the K block (mask mk): its diagonal block may be factorised about
    its midpoint (vector.py, SUB_FACTOR)."""
    return tl.min(tl.where(mk, bre - br, 0.0), axis=0) >= -SUB_SAFE_LOG
