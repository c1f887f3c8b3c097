"""Forward and backward passes of chunked gated linear attention, as sequences of Triton launches.

Packed layout: q, k [N_tok, H, K], v [N_tok, H, V]; sequences given by cu_seqlens (a regular batch
[B, T] is cu_seqlens = [0, T, ..., B·T], built without a host sync). g [N_tok, H] (scalar gate)
or [N_tok, H, K] (vector gate), float32, the per-step log gate with g_gamma already added, or
None. States are float32 [N, H, K, V]. The math is CHUNKED.md §1 and §3; each kernel's file gives
its formula:

    forward:  b = chunk cumsum(g);  h = states entering chunks (state.py);
              [vector gate: A, intra-chunk scores (vector.py)];  o (output.py)
    backward: b, h (and A) from the forward (eager) or recomputed;  dh (state.py);  dv (output.py);
              dq, dk, db (scalar_bwd.py / vector.py, vector_fast.py);  dg = reverse cumsum
              of db inside each chunk + rowsum(S_c ⊙ dS_c) at the chunk's end (vector gate: state.py,
              cumsum.py; scalar gate: all inside scalar_bwd.py)

Vector gate: a (chunk, head) whose total log decay is >= −SAFE_LOG (safe.py, vector_fast.py) forms A
as one factorised product (q ⊙ e^{b − c})(k ⊙ e^{c − b})ᵀ, c = b_l / 2, inside the output/dv kernels and gets dq, dk,
db from chunk_vector_fast_dqdk_kernel; the others keep the sub-chunk kernels. Both kinds of
kernel are launched; each returns at once on the chunks of the other branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from attnzoo.ops.common.dispatch import triton_interpret
from attnzoo.ops.linear.triton.cumsum import chunk_local_cumsum, chunk_reverse_cumsum
from attnzoo.ops.linear.triton.output import chunk_dv_kernel, chunk_output_kernel
from attnzoo.ops.linear.triton.scalar_bwd import chunk_scalar_dqdk_kernel
from attnzoo.ops.linear.triton import state as triton_state
from attnzoo.ops.linear.triton.state import chunk_state_bwd_kernel, chunk_state_fwd_kernel
from attnzoo.ops.linear.triton.vector import chunk_intra_kernel, chunk_vector_dqdk_kernel
from attnzoo.ops.linear.triton import vector_fast as triton_vector_fast
from attnzoo.ops.linear.triton.vector_fast import chunk_vector_fast_dqdk_kernel

BT = 64  # chunk length
BC = 16  # sub-chunk length for the vector gate's intra-chunk scores


@dataclass
class ChunkTables:
    cu_seqlens: torch.Tensor     # int32 [N + 1]
    chunk_seq: torch.Tensor      # int32 [n_chunks]: the sequence of each chunk
    chunk_idx: torch.Tensor      # int32 [n_chunks]: its index inside the sequence
    chunk_offsets: torch.Tensor  # int32 [N + 1]: first global chunk of each sequence
    n_seqs: int
    n_chunks: int
    max_chunks: int              # chunks of the longest sequence (picks the state passes' segments)


# Tables of regular batches, by (tokens, batch, device): building them costs ~6 small launches
# (~0.7 ms of host time per call on the H200, measured), the kernels only read them.
_REGULAR_TABLES: dict = {}


def make_tables(n_tok: int, batch: int, cu_seqlens: torch.Tensor | None, device) -> ChunkTables:
    i32 = dict(dtype=torch.int32, device=device)
    if cu_seqlens is None:
        key = (n_tok, batch, str(device))
        tab = _REGULAR_TABLES.get(key)
        if tab is None:
            if len(_REGULAR_TABLES) >= 64:
                _REGULAR_TABLES.clear()
            T = n_tok // batch
            nt = triton.cdiv(T, BT)
            ar = torch.arange(batch * nt, **i32)
            tab = _REGULAR_TABLES[key] = ChunkTables(torch.arange(batch + 1, **i32) * T, ar // nt, ar % nt,
                                                     torch.arange(batch + 1, **i32) * nt, batch, batch * nt, nt)
        return tab
    cu = cu_seqlens.to(torch.int64).cpu()
    nts = [triton.cdiv(int(b - a), BT) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    n_chunks = sum(nts)
    seq = torch.repeat_interleave(torch.arange(len(nts)), torch.tensor(nts, dtype=torch.int64))
    offs = torch.zeros(len(nts) + 1, dtype=torch.int64)
    offs[1:] = torch.cumsum(torch.tensor(nts, dtype=torch.int64), 0)
    idx = torch.arange(n_chunks) - offs[seq]
    return ChunkTables(cu_seqlens.to(**i32), seq.to(**i32), idx.to(**i32), offs.to(**i32), len(nts), n_chunks,
                       max(nts, default=0))


def _gate_kind(g):
    return 0 if g is None else (1 if g.dim() == 2 else 2)


def _state_dtype(q):
    return q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32


# Launch configs of the state passes and of the no-gate/scalar output and dv kernels. A dict so
# that benchmarks/gpu_tune_gla.py can time others in one process (each config compiles once);
# the values are the ones measured best there (notes/triton_gla.md).
# H200, bf16, D = 128, H = 16, B·T = 16k (benchmarks/results/gla_h200/tune_s3_run*.jsonl): 2 pipeline
# stages for the vector gate's state passes were 4-10% faster over the whole op in two runs, and
# slower for the scalar gate at 8k-16k; the fused scalar dg 6% faster at 32k. Session 4
# (gla_h200/tune_s4.jsonl, vector fwd+bwd at 4k/8k/16k/32k): state_bv_vector 64 2.08/2.11/2.12/4.39 ms
# against 32's 2.01/2.31/2.34/4.83, hence 64 only where 32 would leave few programs
# (state_bv_vector_few); vector_fused_dg (the fast path's dq/dk kernel writes dg, the state backward
# term only for sub-chunk chunks) was slower, 2.24/2.52/2.55/5.23: off, kept as a tested alternative.
# vector_sub_factor (vector.py's SUB_FACTOR), H100 2026-12-08 (benchmarks/results/sub_factor_gpu/): vector
# fwd+bwd with strong gates (logsigmoid(x)) 1.39-1.41x faster at 1k-16k tokens (7.0-7.4 -> 5.0-5.3 ms), weak
# gates unchanged (1.00x), within the float64 loop's tolerance in every check: on.
TUNE = dict(state_bk=64, state_bv=32, state_warps=4, state_stages=3, scalar_out_warps=4, scalar_fused_dg=True,
            state_bv_vector=32, state_bv_vector_few=64, state_warps_vector=4, state_stages_vector=2,
            vector_fused_dg=False, vector_bwd_factor_f32=False, vector_sub_factor=True)


def _state_config(K, V, gate=1, n_heads_seqs=None):
    """BK, BV and launch options of the state passes (state.py). Vector gate: BV =
    TUNE["state_bv_vector_few"] where the state_bv_vector launch (n_heads_seqs = N·H sequences and
    heads) would have too few programs to go unsegmented, since each V block reloads the chunk's
    [BK, BT] float32 gate tile: fewer, wider blocks load it less often."""
    vec = "_vector" if gate == 2 else ""
    BK = min(TUNE["state_bk"], max(16, triton.next_power_of_2(K)))
    BV = min(TUNE["state_bv" + vec], max(16, triton.next_power_of_2(V)))
    if gate == 2 and n_heads_seqs is not None:
        if triton.cdiv(K, BK) * triton.cdiv(V, BV) * n_heads_seqs < triton_state.MIN_PROGRAMS:
            BV = min(TUNE["state_bv_vector_few"], max(16, triton.next_power_of_2(V)))
    return BK, BV, dict(num_warps=TUNE["state_warps" + vec], num_stages=TUNE["state_stages" + vec])


def _blocks(K, V):
    BK = min(64, max(16, triton.next_power_of_2(K)))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    return BK, BV


def _scalar_dqdk_bk(K):
    """K block of the no-gate/scalar dq/dk kernel (it holds all of K): at least 32. With K = 16 in a
    block of 16 the H200 (Triton 3.6, bf16 and fp16) returned dk off by ~100% (dq, dv, o, S right;
    the interpreter right; memcheck clean), while K = 8, 24 and 32 were right
    (benchmarks/gpu_gla_odd.py): a compiler fault at that tile shape, avoided by padding K to 32."""
    return max(32, triton.next_power_of_2(K))


def _output_config(gate, BK, dv=False):
    """Output and dv kernels: the vector gate's factorised A adds a [BT, BT] product per K block;
    K blocks of 32 and 8 warps keep it free of register spills (ptxas for sm_90, bf16, K = V = 128:
    0 B spilled, against 2.9 KB with blocks of 64 and 4 warps). FACTOR_F32 applies to the forward's
    A only: the dv kernel's Aᵀ reaches dv alone (CPU emulation: 0.003 of the gradient error, against
    0.05 for the forward's A)."""
    if gate == 2:
        return dict(BK=min(32, BK), GATE=gate, FACTOR_F32=triton_vector_fast.FACTOR_F32 and not dv, num_warps=8)
    return dict(BK=BK, GATE=gate, num_warps=TUNE["scalar_out_warps"])


def _segments(BK, BV, K, V, H, gate, tab, seg, x):
    """State-pass grid and segmentation (state.choose_segment) for blocks BK x BV
    (_state_config): (grid, SEG, NSMAX, E, G); SEG = 0 for one sequential launch (MODE 0), else
    E [N, NSMAX, H, K, V] and G (float32) hold the segment summaries of the two-launch form (MODE 1
    then 2) and the grid has N·H·NSMAX programs."""
    kb, vb = triton.cdiv(K, BK), triton.cdiv(V, BV)
    SEG = triton_state.choose_segment(
        n_programs=kb * vb * tab.n_seqs * H, max_chunks=tab.max_chunks, seg=seg,
        min_programs=triton_state.MIN_PROGRAMS if gate == 2 else triton_state.MIN_PROGRAMS_SCALAR)
    if not SEG:
        return (tab.n_seqs * H, kb, vb), 0, 1, x, x
    nsmax = triton.cdiv(tab.max_chunks, SEG)
    E = x.new_empty(tab.n_seqs, nsmax, H, K, V, dtype=torch.float32)
    G = x.new_empty(tab.n_seqs, nsmax, H, *((K,) if gate == 2 else ()), dtype=torch.float32) if gate else x
    return (tab.n_seqs * H * nsmax, kb, vb), SEG, nsmax, E, G


def _states(k, v, b, gate, h0, tab, store_ht, seg=None):
    N_tok, H, K = k.shape
    V = v.shape[-1]
    BK, BV, opts = _state_config(K, V, gate, tab.n_seqs * H)
    h = k.new_empty(tab.n_chunks, H, K, V, dtype=_state_dtype(k))
    ht = k.new_empty(tab.n_seqs, H, K, V, dtype=torch.float32) if store_ht else None
    grid, SEG, nsmax, E, G = _segments(BK, BV, K, V, H, gate, tab, seg, k)
    for mode in ((1, 2) if SEG else (0,)):
        chunk_state_fwd_kernel[grid](
            k, v, b if b is not None else k, h, h0 if h0 is not None else k, ht if ht is not None else k,
            tab.cu_seqlens, tab.chunk_offsets, E, G, SEG, nsmax, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
            GATE=gate, HAS_H0=h0 is not None, STORE_HT=store_ht, MODE=mode, **opts,
        )
    return h, ht


def _dstates(q, do, b, gate, dht, h, ht, tab, scale, want_dh0, seg=None):
    """Reverse state pass: dh (gradient wrt the state leaving each chunk), dh0 (or None) and term
    (the per-block partial rowsum(S_c ⊙ dS_c), summed over blocks by the caller; None without a gate
    or when the scalar dq/dk kernel forms it, TUNE["scalar_fused_dg"])."""
    N_tok, H, K = q.shape
    V = do.shape[-1]
    BK, BV, opts = _state_config(K, V, gate, tab.n_seqs * H)
    dh = torch.empty_like(h)
    dh0 = q.new_empty(tab.n_seqs, H, K, V, dtype=torch.float32) if want_dh0 else None
    grid, SEG, nsmax, E, G = _segments(BK, BV, K, V, H, gate, tab, seg, q)
    term = None
    if gate == 1 and not TUNE["scalar_fused_dg"]:
        term = q.new_empty(grid[1] * grid[2], tab.n_chunks, H, dtype=torch.float32)
    elif gate == 2:
        term = q.new_empty(grid[2], tab.n_chunks, H, K, dtype=torch.float32)
        if triton_interpret():  # CPU tests: a row of term read but never written shows up as NaN
            term.fill_(float("nan"))
    for mode in ((1, 2) if SEG else (0,)):
        chunk_state_bwd_kernel[grid](
            q, do, b if b is not None else q, dh, dht if dht is not None else q, dh0 if dh0 is not None else q,
            h, ht if ht is not None else q, term if term is not None else q,
            tab.cu_seqlens, tab.chunk_offsets, scale, tab.n_chunks, E, G, SEG, nsmax, H=H, K=K, V=V, BT=BT,
            BK=BK, BV=BV, GATE=gate, HAS_DHT=dht is not None, STORE_DH0=want_dh0, MODE=mode,
            TERM=0 if term is None else (2 if gate == 2 and TUNE["vector_fused_dg"] else 1), **opts,
        )
    return dh, dh0, term


def _intra(q, k, b, tab):
    N_tok, H, K = q.shape
    A = q.new_empty(N_tok, H, BT, dtype=torch.float32)
    if triton_interpret():  # CPU tests: a read of a safe chunk's A (never written) shows up as NaN
        A.fill_(float("nan"))
    chunk_intra_kernel[(tab.n_chunks, H)](
        q, k, b, A, tab.cu_seqlens, tab.chunk_seq, tab.chunk_idx, H=H, K=K, BT=BT, BC=BC,
        BK=min(32, max(16, triton.next_power_of_2(K))), SUB_FACTOR=TUNE["vector_sub_factor"], num_warps=4,
    )
    return A


def chunk_forward(q, k, v, g, *, scale, initial_state, output_final_state, tab, keep=None):
    """Returns o (input dtype) and the final state (float32, or None). keep: a dict to receive what
    the backward would otherwise recompute (b, h, ht, A: chunk_backward(saved=keep))."""
    N_tok, H, K = q.shape
    V = v.shape[-1]
    gate = _gate_kind(g)
    b = chunk_local_cumsum(g, tab, BT) if g is not None else None
    h, ht = _states(k, v, b, gate, initial_state, tab, output_final_state or (keep is not None and gate > 0))
    A = _intra(q, k, b, tab) if gate == 2 else None
    o = torch.empty_like(v)
    BK, BV = _blocks(K, V)
    chunk_output_kernel[(tab.n_chunks, triton.cdiv(V, BV), H)](
        q, k, v, b if b is not None else q, h, A if A is not None else q, o, tab.cu_seqlens, tab.chunk_seq,
        tab.chunk_idx, scale, H=H, K=K, V=V, BT=BT, BV=BV, **_output_config(gate, BK),
    )
    if keep is not None:
        keep.update(b=b, h=h, ht=ht, A=A)
    return o, (ht if output_final_state else None)


def chunk_backward(q, k, v, g, do, dht, *, scale, initial_state, tab, saved=None):
    """Returns dq, dk, dv (input dtype), dg (float32, g's shape, or None), dh0 (float32 or None).
    saved: the forward's keep dict (b, h, ht, A taken from it instead of recomputed)."""
    N_tok, H, K = q.shape
    V = v.shape[-1]
    gate = _gate_kind(g)
    if saved is not None:
        b, h, ht, A = saved["b"], saved["h"], saved["ht"], saved["A"]
    else:
        b = chunk_local_cumsum(g, tab, BT) if g is not None else None
        h, ht = _states(k, v, b, gate, initial_state, tab, gate > 0)
        A = None
    BK, BV = _blocks(K, V)
    dh, dh0, term = _dstates(q, do, b, gate, dht, h, ht, tab, scale, initial_state is not None)
    if gate == 2 and A is None:
        A = _intra(q, k, b, tab)
    dv = torch.empty_like(v)
    chunk_dv_kernel[(tab.n_chunks, triton.cdiv(V, BV), H)](
        q, k, do, b if b is not None else q, dh, A if A is not None else q, dv, tab.cu_seqlens, tab.chunk_seq,
        tab.chunk_idx, scale, H=H, K=K, V=V, BT=BT, BV=BV, **_output_config(gate, BK, dv=True),
    )
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    db = torch.empty_like(g, dtype=torch.float32) if g is not None else None
    if gate == 2:
        if triton_interpret():  # CPU tests: a row neither dq/dk kernel wrote shows up as NaN
            for x in (dq, dk, db):
                x.fill_(float("nan"))
        BKv = min(32, max(16, triton.next_power_of_2(K)))
        chunk_vector_dqdk_kernel[(tab.n_chunks, triton.cdiv(K, BKv), H)](
            q, k, v, do, b, h, dh, dq, dk, db, tab.cu_seqlens, tab.chunk_seq, tab.chunk_idx, scale,
            H=H, K=K, V=V, BT=BT, BC=BC, BK=BKv, BV=BV, SUB_FACTOR=TUNE["vector_sub_factor"], num_warps=4,
        )
        chunk_vector_fast_dqdk_kernel[(tab.n_chunks, triton.cdiv(K, BK), H)](
            q, k, v, do, b, h, dh, dq, dk, db, tab.cu_seqlens, tab.chunk_seq, tab.chunk_idx, scale,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=min(BV, 32), FUSED_DG=TUNE["vector_fused_dg"],
            F32=TUNE["vector_bwd_factor_f32"], num_warps=8,
        )
    else:
        chunk_scalar_dqdk_kernel[(tab.n_chunks, H)](
            q, k, v, do, b if b is not None else q, h, dh, dq, dk, db if db is not None else q,
            tab.cu_seqlens, tab.chunk_seq, tab.chunk_idx, scale,
            H=H, K=K, V=V, BT=BT, BK=_scalar_dqdk_bk(K), BV=min(BV, 32), GATE=gate,
            FUSED_DG=term is None, num_warps=8 if K > 64 else 4,
        )
    if term is not None:  # vector gate with fused dg: in place, only the sub-chunk path's chunks
        dg = chunk_reverse_cumsum(db, term.sum(0), tab, BT,
                                  skip_safe_of=b if gate == 2 and TUNE["vector_fused_dg"] else None)
    else:  # the scalar kernel wrote dg itself (or there is no gate)
        dg = db
    return dq, dk, dv, dg, dh0
