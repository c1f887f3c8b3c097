"""Triton kernels that pass the state of gated linear attention across chunks (CHUNKED.md §1).

Gated linear attention: Yang, Wang, Shen, Panda & Kim, "Gated Linear Attention Transformers with
Hardware-Efficient Training", 2023, arXiv:2312.06635 (the chunk-wise state recurrence below).

Packed layout (see cumsum.py): k [N_tok, H, K], v [N_tok, H, V], q, do likewise; b the
chunk-local cumulative log gate, [N_tok, H] (scalar, GATE=1) or [N_tok, H, K] (vector, GATE=2),
or absent (GATE=0). h [N_chunks, H, K, V] is the state *entering* each chunk; dh the gradient
with respect to the state *leaving* each chunk. The state stays in float32 registers. With
bl_c = b at chunk c's last token (the chunk's total log decay):

    forward:   S <- diag(e^{bl_c}) S + Σ_j (k_j ⊙ e^{bl_c - b_j}) v_jᵀ
    backward:  dS <- diag(e^{bl_c}) dS + scale · Σ_i (q_i ⊙ e^{b_i}) do_iᵀ

Every exponent is <= 0 as written.

MODE=0: one program per (sequence, head, K block, V block) walks all of its sequence's chunks.
MODE=1/2 (segmented, for long sequences with few programs): the chunks of a sequence are cut into
segments of SEG consecutive chunks, s = 0 .. NS−1, and both maps are affine in the state, so a
segment is summarised by E_s (its recurrence run from S = 0) and G_s = Σ_{c in s} bl_c:

    forward:   S_leaving(s) = diag(e^{G_s}) S_entering(s) + E_s
    backward:  dS_entering(s) = diag(e^{G_s}) dS_leaving(s) + D_s

MODE=1 (summary launch) writes E (or D) [N, NSMAX, H, K, V] and G ([N, NSMAX, H] or
[N, NSMAX, H, K]) float32, one program per segment; MODE=2 (run launch) builds each segment's
entry state from h0 (dht) and the summaries of the segments before (after) it, then runs its
chunks exactly like MODE=0. Both launches have grid (N·H·NSMAX, KB, VB): the long axis first (axes 1
and 2 allow 65,535 programs). choose_segment picks SEG.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnzoo.ops.linear.triton.safe import chunk_is_safe

# Test/benchmark override of the segment length in chunks (None: choose_segment's rule).
SEGMENT_CHUNKS: int | None = None
MIN_PROGRAMS = 512  # at or above this many (sequence, head, K block, V block) programs: no segments
# The same for no gate / a scalar gate, whose fwd+bwd at 4k-8k tokens per sequence is as host-bound as
# GPU-bound (H200, B·T = 16k: 1.18 ms of host time against 1.08 of GPU time at T = 8k, B = 2): there the
# segments' two extra launches cost more than they save (8k: 1.26 / 1.06 ms unsegmented against 1.33 /
# 1.14 segmented in two runs), at 16k (128 programs) they still pay (1.39 against 1.51 ms).
MIN_PROGRAMS_SCALAR = 256
MIN_SEGMENT = 32    # chunks per segment at least (so short sequences never pay the second launch)
MAX_SEGMENTS = 8    # segments per sequence at most (keeps the entry-state loop short)


def choose_segment(*, n_programs: int, max_chunks: int, seg: int | None = None, min_programs: int | None = None) -> int:
    """Chunks per segment for the state passes, or 0 for one unsegmented launch (MODE=0).

    n_programs = KB·VB·N·H programs of the unsegmented launch; max_chunks the longest sequence's
    chunk count. Rule: 0 if n_programs >= min_programs (default MIN_PROGRAMS) or max_chunks <= MIN_SEGMENT, else
    max(MIN_SEGMENT, cdiv(max_chunks, MAX_SEGMENTS)) (so at most MAX_SEGMENTS segments). An explicit
    seg (or the module's SEGMENT_CHUNKS) overrides the rule; it still gives 0 when one segment holds
    every chunk."""
    if n_programs < 1 or max_chunks < 0:
        raise ValueError(f"expected n_programs >= 1 and max_chunks >= 0, got {n_programs}, {max_chunks}")
    seg = seg if seg is not None else SEGMENT_CHUNKS
    if seg is not None:
        if int(seg) < 1:
            raise ValueError(f"segment length must be >= 1 chunk, got {seg}")
        return int(seg) if max_chunks > int(seg) else 0
    if n_programs >= (MIN_PROGRAMS if min_programs is None else min_programs) or max_chunks <= MIN_SEGMENT:
        return 0
    return max(MIN_SEGMENT, triton.cdiv(max_chunks, MAX_SEGMENTS))


@triton.jit
def chunk_bounds(cu_seqlens, chunk_seq, i_c):
    """[bos, eos) (int64) of the packed sequence that holds chunk i_c (chunk tables of chunk.py)."""
    n = tl.load(chunk_seq + i_c)
    return tl.load(cu_seqlens + n).to(tl.int64), tl.load(cu_seqlens + n + 1).to(tl.int64)


@triton.jit
def chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT: tl.constexpr):
    """(bos, eos, t0): chunk_bounds and the chunk's first row t0 (int64)."""
    bos, eos = chunk_bounds(cu_seqlens, chunk_seq, i_c)
    return bos, eos, bos + tl.load(chunk_idx + i_c).to(tl.int64) * BT


@triton.jit
def _program(cu_seqlens, SEG, NSMAX, H: tl.constexpr, BT: tl.constexpr, MODE: tl.constexpr):
    """(n, i_h, s, bos, eos, chunks of the sequence, first chunk, end chunk of this program)."""
    pid = tl.program_id(0)  # axis 0: N·H(·NSMAX) may pass the 65,535 programs axes 1 and 2 allow
    if MODE == 0:
        i_nh = pid
        s = 0
    else:
        i_nh = pid // NSMAX
        s = pid % NSMAX
    n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + n).to(tl.int64)
    eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    n_chunks = tl.cdiv(eos - bos, BT)
    if MODE == 0:
        c_lo = 0
        c_hi = n_chunks
    else:
        c_lo = s * SEG
        c_hi = tl.minimum(c_lo + SEG, n_chunks)
    return n, i_h, s, bos, eos, n_chunks, c_lo, c_hi


@triton.jit
def _decay(S, G, n, s, i_h, kk, NSMAX, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr):
    """diag(e^{G[n, s]}) S (G float32 [N, NSMAX, H] or [N, NSMAX, H, K])."""
    if GATE == 1:
        S *= tl.exp(tl.load(G + (n * NSMAX + s) * H + i_h))
    elif GATE == 2:
        S *= tl.exp(tl.load(G + ((n * NSMAX + s) * H + i_h) * K + kk, mask=kk < K, other=0.0))[:, None]
    return S


@triton.jit
def _store_summary(E, G, S, gsum, n, s, i_h, kk, s_off, mkv, NSMAX,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, GATE: tl.constexpr):
    """E[n, s] = S; G[n, s] = gsum (scalar gate: by the (0, 0) block program; vector: i_v == 0)."""
    tl.store(E + (n * NSMAX + s) * H * K * V + s_off, S, mask=mkv)
    if GATE == 1:
        if (tl.program_id(1) == 0) & (tl.program_id(2) == 0):
            tl.store(G + (n * NSMAX + s) * H + i_h, gsum)
    elif GATE == 2:
        if tl.program_id(2) == 0:
            tl.store(G + ((n * NSMAX + s) * H + i_h) * K + kk, gsum, mask=kk < K)


@triton.jit
def _step_tiles(x, y, b, bos, eos, i, i_h, kk, vv,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr):
    """Chunk i's operands of one state step (forward: x = k, y = v; backward: x = q, y = do):
    xT [BK, BT] (a transposed load), yt [BT, BV], the chunk's log decay bl and the per-token log gate
    bt (scalar gate: a scalar and [BT]; vector gate: [BK] and [BK, BT]; no gate: 0.0 and 0.0)."""
    t = bos + i * BT + tl.arange(0, BT)
    mt = t < eos
    xT = tl.load(x + t[None, :] * (H * K) + i_h * K + kk[:, None],
                 mask=(kk < K)[:, None] & mt[None, :], other=0.0)
    yt = tl.load(y + t[:, None] * (H * V) + i_h * V + vv[None, :],
                 mask=mt[:, None] & (vv < V)[None, :], other=0.0)
    last = tl.minimum(bos + (i + 1) * BT, eos) - 1
    if GATE == 1:
        bl = tl.load(b + last * H + i_h)
        bt = tl.load(b + t * H + i_h, mask=mt, other=0.0)
    elif GATE == 2:
        bl = tl.load(b + last * (H * K) + i_h * K + kk, mask=kk < K, other=0.0)
        bt = tl.load(b + t[None, :] * (H * K) + i_h * K + kk[:, None],
                     mask=(kk < K)[:, None] & mt[None, :], other=0.0)
    else:
        bl = 0.0
        bt = 0.0
    return xT, yt, bl, bt


@triton.jit
def _fwd_chunk(k, v, b, S, bos, eos, i, i_h, kk, vv,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr):
    """One forward step over chunk i: returns (S leaving the chunk, the chunk's log decay bl)."""
    kT, vt, bl, bt = _step_tiles(k, v, b, bos, eos, i, i_h, kk, vv, H=H, K=K, V=V, BT=BT, GATE=GATE)
    if GATE == 1:
        S *= tl.exp(bl)
        kT = (kT * tl.exp(bl - bt)[None, :]).to(vt.dtype)
    elif GATE == 2:
        S *= tl.exp(bl)[:, None]
        kT = (kT * tl.exp(bl[:, None] - bt)).to(vt.dtype)
    S += tl.dot(kT, vt)
    return S, bl


@triton.jit
def _bwd_chunk(q, do, b, dS, bos, eos, i, i_h, kk, vv, scale,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr):
    """One backward step over chunk i: returns (dS entering the chunk, the chunk's log decay bl)."""
    qT, dot_, bl, bt = _step_tiles(q, do, b, bos, eos, i, i_h, kk, vv, H=H, K=K, V=V, BT=BT, GATE=GATE)
    if GATE == 1:
        dS *= tl.exp(bl)
        qT = (qT * (scale * tl.exp(bt))[None, :]).to(dot_.dtype)
    elif GATE == 2:
        dS *= tl.exp(bl)[:, None]
        qT = (qT.to(tl.float32) * scale * tl.exp(bt)).to(dot_.dtype)
    else:
        qT = (qT.to(tl.float32) * scale).to(dot_.dtype)
    dS += tl.dot(qT, dot_)
    return dS, bl


@triton.jit
def chunk_state_fwd_kernel(
    k, v, b, h, h0, ht, cu_seqlens, chunk_offsets, E, G, SEG, NSMAX,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
    MODE: tl.constexpr = 0,
):
    """MODE 0: h (and ht) of whole sequences. MODE 1: E[n, s], G[n, s] of every segment but the
    last. MODE 2: entry state S = h0, then S = diag(e^{G[n,s']}) S + E[n,s'] for s' < s; then h of
    the segment's chunks, and ht from the last segment. (E, G, SEG, NSMAX unused in MODE 0.)"""
    n, i_h, s, bos, eos, n_chunks, c_lo, c_hi = _program(cu_seqlens, SEG, NSMAX, H=H, BT=BT, MODE=MODE)
    if MODE == 1:
        if c_hi >= n_chunks:  # the last segment's summary is never used
            return
    elif MODE == 2:
        if (s > 0) & (c_lo >= n_chunks):  # past this sequence's last segment (segment 0 always runs)
            return
    c0 = tl.load(chunk_offsets + n).to(tl.int64)
    kk = tl.program_id(1) * BK + tl.arange(0, BK)
    vv = tl.program_id(2) * BV + tl.arange(0, BV)
    mkv = (kk < K)[:, None] & (vv < V)[None, :]
    s_off = i_h * K * V + kk[:, None] * V + vv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if MODE != 1:
        if HAS_H0:
            S += tl.load(h0 + n * H * K * V + s_off, mask=mkv, other=0.0)
    if MODE == 2:
        for sp in range(0, s):
            S = _decay(S, G, n, sp, i_h, kk, NSMAX, H=H, K=K, GATE=GATE)
            S += tl.load(E + (n * NSMAX + sp) * H * K * V + s_off, mask=mkv, other=0.0)
    if MODE == 1:  # the segment's total log decay G (the scalar gate's as a 0-d float32 tensor)
        gsum = tl.zeros([BK], dtype=tl.float32) if GATE == 2 else tl.sum(tl.zeros([BK], dtype=tl.float32), axis=0)
    for i in range(c_lo, c_hi):
        if MODE != 1:
            tl.store(h + (c0 + i) * H * K * V + s_off, S.to(h.dtype.element_ty), mask=mkv)
        S, bl = _fwd_chunk(k, v, b, S, bos, eos, i, i_h, kk, vv, H=H, K=K, V=V, BT=BT, GATE=GATE)
        if MODE == 1:
            if GATE > 0:
                gsum += bl
    if MODE == 1:
        _store_summary(E, G, S, gsum, n, s, i_h, kk, s_off, mkv, NSMAX, H=H, K=K, V=V, GATE=GATE)
    elif STORE_HT:
        if c_hi >= n_chunks:  # always so in MODE 0
            tl.store(ht + n * H * K * V + s_off, S, mask=mkv)


@triton.jit
def chunk_state_bwd_kernel(
    q, do, b, dh, dht, dh0, h, ht, term, cu_seqlens, chunk_offsets, scale, NC, E, G, SEG, NSMAX,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, GATE: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    MODE: tl.constexpr = 0, TERM: tl.constexpr = 0,
):
    """With TERM = 1 (a gate), also writes term = rowsum(S_c ⊙ dS_c) per chunk (S_c the state leaving the
    chunk, from h of the next chunk or ht), partial over this program's V block (and K block if
    scalar): the gradient of every later cumulative gate, so the reverse cumsum stays inside each
    chunk. (The scalar gate's can instead be formed in scalar_bwd.py: FUSED_DG there.) TERM = 2
    (vector gate, the fast path's dq/dk kernel forming dg itself): only for chunks that are not
    safe.chunk_is_safe, the others' rows of term are left unwritten.
    MODE 1: D[n, s] (into E) and G[n, s] of every segment but the first. MODE 2: entry dS = dht,
    then dS = diag(e^{G[n,s']}) dS + D[n,s'] for s' = NS−1 down to s+1; then the segment's chunks
    in reverse (dh, term), and dh0 from segment 0."""
    n, i_h, s, bos, eos, n_chunks, c_lo, c_hi = _program(cu_seqlens, SEG, NSMAX, H=H, BT=BT, MODE=MODE)
    if MODE == 1:
        if (s == 0) | (c_lo >= n_chunks):  # the first segment's summary is never used
            return
    elif MODE == 2:
        if (s > 0) & (c_lo >= n_chunks):
            return
    c0 = tl.load(chunk_offsets + n).to(tl.int64)
    kk = tl.program_id(1) * BK + tl.arange(0, BK)
    vv = tl.program_id(2) * BV + tl.arange(0, BV)
    mkv = (kk < K)[:, None] & (vv < V)[None, :]
    s_off = i_h * K * V + kk[:, None] * V + vv[None, :]
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if MODE != 1:
        if HAS_DHT:
            dS += tl.load(dht + n * H * K * V + s_off, mask=mkv, other=0.0)
    if MODE == 2:
        ns = tl.cdiv(n_chunks, SEG)
        for j in range(0, ns - 1 - s):
            sp = ns - 1 - j
            dS = _decay(dS, G, n, sp, i_h, kk, NSMAX, H=H, K=K, GATE=GATE)
            dS += tl.load(E + (n * NSMAX + sp) * H * K * V + s_off, mask=mkv, other=0.0)
    if MODE == 1:  # the segment's total log decay G (the scalar gate's as a 0-d float32 tensor)
        gsum = tl.zeros([BK], dtype=tl.float32) if GATE == 2 else tl.sum(tl.zeros([BK], dtype=tl.float32), axis=0)
    for j in range(0, c_hi - c_lo):
        i = c_hi - 1 - j
        if MODE != 1:
            tl.store(dh + (c0 + i) * H * K * V + s_off, dS.to(dh.dtype.element_ty), mask=mkv)
            if TERM > 0:
                need = mkv
                if TERM == 2:  # only the sub-chunk path's chunks read term (masked loads fetch nothing)
                    unsafe = chunk_is_safe(b, tl.minimum(bos + (i + 1) * BT, eos) - 1, i_h, H, K, BK) == 0
                    need = need & unsafe
                S_c = tl.load(h + (c0 + i + 1) * H * K * V + s_off, mask=need & (i < n_chunks - 1), other=0.0)
                S_c = S_c.to(tl.float32) + tl.load(ht + n * H * K * V + s_off, mask=need & (i == n_chunks - 1),
                                                   other=0.0)
                part = tl.sum(S_c * dS, axis=1)
                if GATE == 1:
                    tl.store(term + ((tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)) * NC + c0 + i) * H
                             + i_h, tl.sum(part, axis=0))
                elif TERM == 2:
                    tl.store(term + ((tl.program_id(2) * NC + c0 + i) * H + i_h) * K + kk, part,
                             mask=(kk < K) & unsafe)
                else:
                    tl.store(term + ((tl.program_id(2) * NC + c0 + i) * H + i_h) * K + kk, part, mask=kk < K)
        dS, bl = _bwd_chunk(q, do, b, dS, bos, eos, i, i_h, kk, vv, scale, H=H, K=K, V=V, BT=BT, GATE=GATE)
        if MODE == 1:
            if GATE > 0:
                gsum += bl
    if MODE == 1:
        _store_summary(E, G, dS, gsum, n, s, i_h, kk, s_off, mkv, NSMAX, H=H, K=K, V=V, GATE=GATE)
    elif STORE_DH0:
        if s == 0:  # always so in MODE 0
            tl.store(dh0 + n * H * K * V + s_off, dS, mask=mkv)
