"""Fused kernels of gated linear attention for short sequences: ONE launch for the forward and ONE
for the backward, whatever the number of chunks (issue #22 item 2).

Layout as in chunk.py: packed tokens q, k [N_tok, H, K], v, do [N_tok, H, V]; g the per-token log
gate ([N_tok, H] scalar or [N_tok, H, K] vector, any float dtype, g_gamma already added) or None;
sequences are rows n·T .. n·T + T of a regular batch, or cu_seqlens[n] .. cu_seqlens[n + 1] (read on
the device: no host synchronisation, no chunk tables, so a call is CUDA-graph friendly).

One program per (sequence, head) [forward: and V block] keeps the state S [K, BV] in float32 registers
and walks the sequence's chunks of BT tokens in a loop. With b the chunk-local cumulative log gate
(cumsum inside the kernel), bl = b at the chunk's last token, A_ij = Σ_k q_ik k_jk e^{b_ik − b_jk}
(i >= j, zero above) (CHUNKED.md §1; GLA, Yang et al. 2023, arXiv:2312.06635, §3-4):

    o_i = scale · [ (q_i ⊙ e^{b_i})ᵀ S + Σ_{j<=i} A_ij v_j ],     S <- diag(e^{bl}) S + Σ_j (k_j ⊙ e^{bl − b_j}) v_jᵀ

Backward (fused_bwd.py), one program per (sequence, head), all of K and V: pass 1 runs the state
forward again and writes dq and q ⊙ dq (into dg's buffer); pass 2 runs dS backward from dht and writes
dk, dv and dg (TUNE["bwd_split"]: the passes as separate programs, and a second small launch for dg):

    dq_i = scale · e^{b_i} ⊙ (S do_i) + Σ_{j<=i} dA_ij D_ij k_j,    dA_ij = scale · do_i · v_j
    dk_j = e^{bl − b_j} ⊙ (dS v_j) + Σ_{i>=j} dA_ij D_ij q_i,   dv_j = (k_j ⊙ e^{bl − b_j})ᵀ dS + Σ_{i>=j} A_ij do_i
    dg_t = Σ_{s>=t} (q_s ⊙ dq_s − k_s ⊙ dk_s) + rowsum(S_T ⊙ dS_T)       (summed over K for a scalar gate)
    dS <- diag(e^{bl}) dS + scale · Σ_i (q_i ⊙ e^{b_i}) do_iᵀ,      dh0 = dS entering the first chunk

(D_ij = e^{b_i − b_j}; the dg identity of CHUNKED.md §3; with TUNE["dg_seg"] the sum restarts every
dg_seg tokens at the exact rowsum(S_c ⊙ dS_c) from a state checkpoint, fused_bwd.py.) Every exponent
is <= 0 as written. Scalar gate / no gate: A = (Q Kᵀ) ⊙ D as one product per chunk (BT = 64 forward).
Vector gate: chunks of BT = 16 whose A, dq and dk intra terms are formed pairwise per channel (a loop
over the chunk's rows), exact in every gate regime (no factorised e^{−b}, no branch). Transposed
products come from transposed loads (the states are never transposed, dq and dk are formed
transposed), never by transposing a tensor-core result (fla issue #640).

The programs are few when sequences are long (N·H per launch, each walking T / BT chunks in series):
the chunked multi-kernel path (chunk.py) stays for long T. `use_fused` is the dispatch rule.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnzoo.ops.linear.triton import fused_bwd
from attnzoo.ops.linear.triton.fused_common import _bounds, _cols, _pairwise, _rows, _scalar_gate, _vector_gate_T

# The longest sequence (tokens) the fused path takes, per gate kind, as measured on one H100 (bf16, H = 16,
# D = 128, 16k tokens per call, T = 256..2048, benchmarks/results/gla_fused/, 2026-12-07): scalar gate fwd+bwd
# 0.90-1.09 ms fused against 1.25-1.72 ms chunked (weak and strong gates), so 2048 (longer T not measured);
# the vector gate's fused kernels took 19.2-19.7 ms against the chunked path's 2.2 (weak) / 6.4 (strong):
# off (0). Only 16-bit inputs (FUSED_DTYPES) take it by the rule; float32 was not timed.
FUSED_MAX_T = {"scalar": 2048, "vector": 0}
FUSED_DTYPES = (torch.bfloat16, torch.float16)
FUSED_MAX_DIM = 128  # K and V at most (the backward holds a [K, V] float32 state per program)
# None: the rule (CUDA tensors only, so the interpreter tests of the chunked kernels keep testing
# them); True / False: force the fused path on (where K, V fit) or off (tests, benchmarks).
FORCE: bool | None = None
# Launch configs, first guesses (a dict so that benchmarks/gpu_gla_fused.py --sweep can time others in
# one process): chunk lengths (scalar gate / no gate forward and backward; vector gate, whose pairwise
# intra part costs BT·K exponentials per token), the forward's V block and the warps of each launch.
# bwd_split: the backward's two passes as separate programs (fused_bwd.py), two launches. dg_seg: tokens
# per dg segment of the one-program backward (0: the whole sequence), a multiple of the chunk lengths.
TUNE = dict(bt_scalar_fwd=64, bt_scalar_bwd=32, bt_vector=16, fwd_bv=64, fwd_warps=4, bwd_warps=8,
            fwd_stages=2, bwd_stages=2, bwd_split=False, dg_seg=64)
# Launch configs (kernel, gate, dtype, K, V, TUNE) that ran out of shared memory or registers at compile
# time: use_fused's callers fall back to the chunked path for them (fused_forward / backward return None).
FAILED: set = set()


def use_fused(n_tok: int, batch: int, cu_seqlens, K: int, V: int, is_cuda: bool, *, vector: bool = False,
              dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether the fused kernels run: K, V <= FUSED_MAX_DIM, a 16-bit dtype and the longest sequence <=
    FUSED_MAX_T[gate kind] tokens (with cu_seqlens, all n_tok tokens count: the lengths are not read on the
    host), on CUDA; FORCE overrides the length, the dtype and the device."""
    if K > FUSED_MAX_DIM or V > FUSED_MAX_DIM:
        return False
    if FORCE is not None:
        return bool(FORCE)
    longest = n_tok if cu_seqlens is not None else n_tok // max(batch, 1)
    return is_cuda and dtype in FUSED_DTYPES and longest <= FUSED_MAX_T["vector" if vector else "scalar"]


def use_fused_for(q, v, g, batch: int, cu_seqlens) -> bool:
    """use_fused for the packed inputs of api._chunk_fwd / _chunk_bwd: q [N_tok, H, K], v [N_tok, H, V],
    g None / [N_tok, H] (scalar) / [N_tok, H, K] (vector)."""
    return use_fused(q.shape[0], batch, cu_seqlens, q.shape[-1], v.shape[-1], q.is_cuda,
                     vector=_gate_kind(g) == 2, dtype=q.dtype)


@triton.jit
def fused_fwd_kernel(
    q, k, v, g, o, h0, ht, cu_seqlens, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, VARLEN: tl.constexpr,
):
    """Grid (N·H, V / BV): o and the final state of one sequence, head and V block."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    n, i_h = i_nh // H, i_nh % H
    bos, eos = _bounds(cu_seqlens, n, T, VARLEN)
    kk = tl.arange(0, BK)
    vv = i_v * BV + tl.arange(0, BV)
    mkv = (kk < K)[:, None] & (vv < V)[None, :]
    s_off = i_nh.to(tl.int64) * K * V + kk[:, None] * V + vv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + s_off, mask=mkv, other=0.0)
    ar = tl.arange(0, BT)
    for c in range(0, tl.cdiv(eos - bos, BT)):
        t = bos + c * BT + ar
        mt = t < eos
        qt = _rows(q, t, mt, i_h, kk, H, K)
        kT = _cols(k, t, mt, i_h, kk, H, K)
        vt = _rows(v, t, mt, i_h, vv, H, V)
        causal = (ar[:, None] >= ar[None, :]) & mt[:, None] & mt[None, :]
        if GATE == 2:
            b = tl.cumsum(_rows(g, t, mt, i_h, kk, H, K).to(tl.float32), axis=0)
            bT, bl = _vector_gate_T(g, t, mt, i_h, kk, H, K)
            A, _ = _pairwise(bT, kT.to(tl.float32), _cols(q, t, mt, i_h, kk, H, K).to(tl.float32), bl, mt, BT, False)
            acc = tl.dot((qt * tl.exp(b)).to(qt.dtype), S.to(qt.dtype))
            acc += tl.dot(A.to(qt.dtype), vt)
            S *= tl.exp(bl)[:, None]
            kd = kT * tl.exp(bl[:, None] - bT)
        elif GATE == 1:
            b, bl = _scalar_gate(g, t, mt, i_h, H)
            A = tl.dot(qt, kT) * tl.exp(tl.where(causal, b[:, None] - b[None, :], 0.0))
            acc = tl.dot((qt * tl.exp(b)[:, None]).to(qt.dtype), S.to(qt.dtype))
            acc += tl.dot(tl.where(causal, A, 0.0).to(qt.dtype), vt)
            S *= tl.exp(bl)
            kd = kT * tl.exp(bl - b)[None, :]
        else:
            A = tl.dot(qt, kT)
            acc = tl.dot(qt, S.to(qt.dtype)) + tl.dot(tl.where(causal, A, 0.0).to(qt.dtype), vt)
            kd = kT
        tl.store(o + t[:, None] * (H * V) + i_h * V + vv[None, :], (acc * scale).to(o.dtype.element_ty),
                 mask=mt[:, None] & (vv < V)[None, :])
        S += tl.dot(kd.to(qt.dtype), vt)
    if STORE_HT:
        tl.store(ht + s_off, S, mask=mkv)


def _gate_kind(g):
    return 0 if g is None else (1 if g.dim() == 2 else 2)


def _dims(q, v):
    K, V = q.shape[-1], v.shape[-1]
    return max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))


def _seqs(n_tok, batch, cu_seqlens, like):
    """(N, T, cu, VARLEN): T the regular batch's length (0 with cu_seqlens); cu the tensor to pass (for a
    regular batch any tensor, `like`: the kernels read it only when VARLEN)."""
    if cu_seqlens is None:
        return batch, n_tok // batch, like, False
    return cu_seqlens.shape[0] - 1, 0, cu_seqlens, True


def _launch(key, launch, args, kwargs) -> bool:
    """Run one launch; False (and key added to FAILED, with a warning) when the compiler runs out of
    resources for it, so that the caller takes the chunked path."""
    from triton.runtime.errors import OutOfResources

    try:
        launch(*args, **kwargs)
        return True
    except OutOfResources as e:
        import warnings

        FAILED.add(key)
        warnings.warn(f"fused GLA kernel {key[:5]} does not fit ({e}); using the chunked path", stacklevel=3)
        return False


def fused_forward(q, k, v, g, *, scale, initial_state, output_final_state, batch, cu_seqlens=None):
    """One launch: (o in q's dtype, final state float32 [N, H, K, V] or None). Packed inputs (module
    docstring); cu_seqlens int32 [N + 1] or None (then batch regular sequences of n_tok / batch)."""
    n_tok, H, K = q.shape
    V = v.shape[-1]
    N, T, cu, varlen = _seqs(n_tok, batch, cu_seqlens, q)
    gate = _gate_kind(g)
    BK, BVfull = _dims(q, v)
    BV = min(TUNE["fwd_bv"], BVfull)
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    key = ("fwd", gate, q.dtype, K, V, tuple(sorted(TUNE.items())))
    if key in FAILED:
        return None
    launch = fused_fwd_kernel[(N * H, triton.cdiv(V, BV))]
    ok = _launch(key, launch, (
        q, k, v, g if g is not None else q, o, initial_state if initial_state is not None else q,
        ht if ht is not None else q, cu, T, scale,
    ), dict(H=H, K=K, V=V, BT=TUNE["bt_vector" if gate == 2 else "bt_scalar_fwd"], BK=BK, BV=BV, GATE=gate,
            HAS_H0=initial_state is not None, STORE_HT=ht is not None, VARLEN=varlen,
            num_warps=TUNE["fwd_warps"], num_stages=TUNE["fwd_stages"]))
    return (o, ht) if ok else None


def fused_backward(q, k, v, g, do, dht, *, scale, initial_state, batch, cu_seqlens=None):
    """One launch (two with TUNE["bwd_split"], fused_bwd.py): (dq, dk, dv in the inputs' dtype, dg float32
    in g's shape or None, dh0 float32 or None)."""
    n_tok, H, K = q.shape
    V = v.shape[-1]
    N, T, cu, varlen = _seqs(n_tok, batch, cu_seqlens, q)
    gate = _gate_kind(g)
    BK, BV = _dims(q, v)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dg = torch.empty(g.shape, dtype=torch.float32, device=g.device) if g is not None else None
    dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if initial_state is not None else None
    key = ("bwd", gate, q.dtype, K, V, tuple(sorted(TUNE.items())))
    if key in FAILED:
        return None
    ptr = lambda x: x if x is not None else q  # noqa: E731
    args = (q, k, v, ptr(g), do, ptr(initial_state), ptr(dht), dq, dk, dv, ptr(dg), ptr(dh0))
    kw = dict(H=H, K=K, V=V, BT=TUNE["bt_vector" if gate == 2 else "bt_scalar_bwd"], BK=BK, BV=BV, GATE=gate,
              HAS_H0=initial_state is not None, HAS_DHT=dht is not None, STORE_DH0=dh0 is not None, VARLEN=varlen)
    opts = dict(num_warps=TUNE["bwd_warps"], num_stages=TUNE["bwd_stages"])
    if not TUNE["bwd_split"]:
        segc = TUNE["dg_seg"] // kw["BT"] if gate else 0
        ck_dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32
        ckpt = q.new_empty(triton.cdiv(n_tok, segc * kw["BT"]), H, K, V, dtype=ck_dtype) if segc else q
        ok = _launch(key, fused_bwd.fused_bwd_kernel[(N * H,)], (*args, ckpt, cu, T, scale),
                     {**kw, **opts, "SEGC": segc})
    else:
        E = torch.empty_like(dg) if dg is not None else None
        tot = q.new_empty(N * H, *((K,) if gate == 2 else ()), dtype=torch.float32) if dg is not None else None
        ok = _launch(key, fused_bwd.fused_bwd_split_kernel[(N * H, 2)], (*args, ptr(E), ptr(tot), cu, T, scale),
                     {**kw, **opts})
        if ok and dg is not None:
            G = K if gate == 2 else 1
            fused_bwd.fused_dg_combine_kernel[(N * H,)](dg, E, tot, cu, T, H=H, G=G, BT=64,
                                                       BG=triton.next_power_of_2(G), VARLEN=varlen)
    return (dq, dk, dv, dg, dh0) if ok else None
