"""Forward and backward passes of the chunked (gated) delta rule, as sequences of Triton launches.

Packed layout: q, k [N_tok, H, K], v [N_tok, H, V], beta [N_tok, H], g [N_tok, H] float32 (the
per-step log gate) or None; sequences given by the chunk tables of ops/linear/triton/chunk.py
(make_tables: a regular batch or cu_seqlens). States float32 [N, H, K, V]. The math is CHUNKED.md
section 2; each kernel's file gives its formula:

    forward:  b = chunk cumsum(g);  Ainv, W, U (wy.py);  h, V', final state (state.py);
              o = scale ((Q ⊙ e^b) h + (Q Kᵀ ⊙ D) V')  (the GLA output kernel, V' in place of V)
    backward: dh, dV', dh0 (state.py);  dv, dβ, dk_wy (backward.delta_wy_bwd_kernel);
              dq, dk (backward.delta_dqk_kernel);  dg = in-chunk reverse cumsum of db
"""

from __future__ import annotations

import torch
import triton

from attnzoo.ops.delta.triton.backward import delta_dqk_kernel, delta_wy_bwd_kernel
from attnzoo.ops.delta.triton.state import delta_state_bwd_kernel, delta_state_fwd_kernel
from attnzoo.ops.delta.triton.wy import delta_wy_fwd_kernel
from attnzoo.ops.linear.triton.chunk import make_tables  # noqa: F401  (re-exported for api.py)
from attnzoo.ops.linear.triton.cumsum import chunk_local_cumsum, chunk_reverse_cumsum
from attnzoo.ops.linear.triton.output import chunk_output_kernel

BT = 64  # chunk length (the same as the GLA kernels': make_tables counts chunks of this size)

# Launch options, a dict so that benchmarks/gpu_delta.py can time others in one process (each
# config compiles once). Not tuned on a GPU yet: the values are first guesses. The state passes walk
# a sequence's chunks one after the other with one program per (V block, sequence, head), so few
# long sequences leave SMs idle: below state_min_programs programs the V block shrinks to
# state_bv_few (each V block reloads the chunk's K and W tiles, so smaller blocks cost bandwidth).
# state_stages pipelines the state passes' tile loads for 16-bit inputs; float32 inputs take
# state_stages_f32 (their per-chunk tiles of all K, q, k and W in the backward, are ~100 KB: a second
# stage could pass the shared memory of a block).
TUNE = dict(state_bv=32, state_bv_few=16, state_min_programs=256, state_warps=4, state_stages=2,
            state_stages_f32=1, wy_warps=4, bwd_warps=8, dqk_bk=64, out_warps=4)


def _bk(K):
    """The K block of the kernels that hold all of K: at least 32 (the GLA kernels saw a compiler
    fault with K tiles of 16 on the H200, ops/linear/triton/chunk._scalar_dqdk_bk)."""
    return max(32, triton.next_power_of_2(K))


def _bv(V, cap):
    return min(cap, max(16, triton.next_power_of_2(V)))


def _state_launch(V, n_seqs, H, dtype):
    """(BV, grid, launch options) of the state passes."""
    BV = _bv(V, TUNE["state_bv"])
    if triton.cdiv(V, BV) * n_seqs * H < TUNE["state_min_programs"]:
        BV = _bv(V, TUNE["state_bv_few"])
    stages = TUNE["state_stages_f32" if dtype == torch.float32 else "state_stages"]
    return BV, (n_seqs * H, triton.cdiv(V, BV)), dict(num_warps=TUNE["state_warps"], num_stages=stages)


def _state_dtype(x):
    return x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32


def chunk_forward(q, k, v, beta, g, *, scale, initial_state, output_final_state, tab, keep=None):
    """Returns o (input dtype) and the final state (float32, or None). keep: a dict to receive
    what the backward would otherwise recompute (b, Ainv, w, h, v_new)."""
    N_tok, H, K = q.shape
    V = v.shape[-1]
    gate = 0 if g is None else 1
    BK = _bk(K)
    b = chunk_local_cumsum(g, tab, BT) if g is not None else None
    w, u = torch.empty_like(k), torch.empty_like(v)
    Ainv = q.new_empty(N_tok, H, BT, dtype=torch.float32)
    delta_wy_fwd_kernel[(tab.n_chunks, H)](
        k, v, beta, b if b is not None else k, w, u, Ainv, tab.cu_seqlens, tab.chunk_seq, tab.chunk_idx,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=_bv(V, 64), GATE=gate, num_warps=TUNE["wy_warps"],
    )
    h = k.new_empty(tab.n_chunks, H, K, V, dtype=_state_dtype(k))
    v_new = torch.empty_like(v)
    ht = k.new_empty(tab.n_seqs, H, K, V, dtype=torch.float32) if output_final_state else None
    BVs, grid, opts = _state_launch(V, tab.n_seqs, H, k.dtype)
    delta_state_fwd_kernel[grid](
        k, w, u, b if b is not None else k, h, v_new, initial_state if initial_state is not None else k,
        ht if ht is not None else k, tab.cu_seqlens, tab.chunk_offsets,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BVs, GATE=gate, HAS_H0=initial_state is not None,
        STORE_HT=output_final_state, **opts,
    )
    o = torch.empty_like(v)
    BKo, BVo = min(64, BK), _bv(V, 64)
    chunk_output_kernel[(tab.n_chunks, triton.cdiv(V, BVo), H)](
        q, k, v_new, b if b is not None else q, h, q, o, tab.cu_seqlens, tab.chunk_seq, tab.chunk_idx, scale,
        H=H, K=K, V=V, BT=BT, BK=BKo, BV=BVo, GATE=gate, num_warps=TUNE["out_warps"],
    )
    if keep is not None:
        keep.update(b=b, Ainv=Ainv, w=w, h=h, v_new=v_new)
    return o, ht


def chunk_backward(q, k, v, beta, g, do, dht, *, scale, initial_state, tab, saved=None):
    """Returns dq, dk, dv (input dtype), dbeta (beta's dtype), dg (float32 or None), dh0 (float32
    or None). saved: the forward's keep dict (else the forward's passes are run again)."""
    N_tok, H, K = q.shape
    V = v.shape[-1]
    gate = 0 if g is None else 1
    BK = _bk(K)
    if saved is None:
        saved = {}
        chunk_forward(q, k, v, beta, g, scale=scale, initial_state=initial_state, output_final_state=False,
                      tab=tab, keep=saved)
    b, Ainv, w, h, v_new = (saved[x] for x in ("b", "Ainv", "w", "h", "v_new"))
    dh = torch.empty_like(h)
    dv_new = v.new_empty(v.shape, dtype=torch.float32)
    dh0 = q.new_empty(tab.n_seqs, H, K, V, dtype=torch.float32) if initial_state is not None else None
    BVs, grid, opts = _state_launch(V, tab.n_seqs, H, k.dtype)
    delta_state_bwd_kernel[grid](
        q, k, w, b if b is not None else q, do, dh, dv_new, dht if dht is not None else q,
        dh0 if dh0 is not None else q, tab.cu_seqlens, tab.chunk_offsets, scale,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BVs, GATE=gate, HAS_DHT=dht is not None, STORE_DH0=dh0 is not None,
        **opts,
    )
    dv = torch.empty_like(v)
    dk_wy = k.new_empty(k.shape, dtype=torch.float32)
    dbeta = beta.new_empty(beta.shape, dtype=torch.float32)
    db = q.new_empty(N_tok, H, dtype=torch.float32) if gate else None
    delta_wy_bwd_kernel[(tab.n_chunks, H)](
        k, v, beta, b if b is not None else k, Ainv, h, v_new, dv_new, dv, dk_wy, dbeta,
        db if db is not None else k, tab.cu_seqlens, tab.chunk_seq, tab.chunk_idx,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=_bv(V, 32), GATE=gate, num_warps=TUNE["bwd_warps"],
    )
    BKq = min(TUNE["dqk_bk"], BK)
    nkb = triton.cdiv(K, BKq)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    db_part = q.new_empty(nkb, N_tok, H, dtype=torch.float32) if gate else None
    delta_dqk_kernel[(tab.n_chunks, nkb, H)](
        q, k, b if b is not None else q, h, dh, v_new, do, dk_wy, dq, dk, db_part if db_part is not None else q,
        tab.cu_seqlens, tab.chunk_seq, tab.chunk_idx, scale, N_tok,
        H=H, K=K, V=V, BT=BT, BK=BKq, BV=_bv(V, 32), GATE=gate, num_warps=TUNE["bwd_warps"],
    )
    dg = None
    if gate:
        db += db_part.sum(0)
        dg = chunk_reverse_cumsum(db, db.new_zeros(tab.n_chunks, H), tab, BT)
    return dq, dk, dv, dbeta.to(beta.dtype), dg, dh0
