"""The factorised fast path of gated linear attention with a per-key-channel gate (GLA, Yang et al.
2023, arXiv:2312.06635, §4.1): the branch decision and the backward kernel for dq, dk, db.

Layout as in state.py: q, k [N_tok, H, K], v, do [N_tok, H, V], b [N_tok, H, K] the
chunk-local cumulative log gate (b_i <= 0, decreasing along the chunk), h the state entering each
chunk, dh the gradient of the state leaving it. Inside a chunk of BT tokens, for any per-channel
constant c_k,

    A_ij = Σ_k q_ik k_jk e^{b_ik − b_jk} = (q ⊙ e^{b − c})_i · (k ⊙ e^{c − b})_j        (i >= j)

is ONE tensor-core product per chunk, like the scalar gate, but one factor grows without bound when
the chunk forgets strongly (CHUNKED.md §1). The factors are centred on half the chunk's decay,
c = b_l / 2 (l = min(t0 + BT, eos) − 1 the chunk's last valid row; b is cumulative, so b_l is the
chunk's minimum): then every exponent b_i − c and c − b_j lies within ±|b_l| / 2. A (chunk, head)
is SAFE when

    min_k b_{l,k} >= −SAFE_LOG        (each factor within e^{±SAFE_LOG / 2})

For the causal pairs (i >= j) the two exponents sum to b_i − b_j <= 0, so a product never exceeds
|q_ik k_jk|, and each factor is a scale, so the operands' relative precision and hence the products'
are those of the unfactorised form. With SAFE_LOG = 80 a factor stays within e^{40} ≈ 2e17 |x| (float32
/ bf16 / tf32 range: 3.4e38); only the masked pairs (i < j) can reach e^{SAFE_LOG} |q k| and, with large
inputs, overflow: every kernel drops them with tl.where (never by multiplying with a mask), so an inf
there stays unread (tested). fp16 inputs take float32 factors (factor_cast). Gates: GLA's own
(logsigmoid(x)/16) gives chunk totals of about −3..−10; logsigmoid(x), x ~ N(0, 1) ("strong", −0.81 per
token) gives min_k b_l from −52 to −74 (K = 128, over 4096 (chunk, head)s). SAFE_LOG is 20 for now (the
bound of the uncentred form, c = 0, checked on the GPU): every strong chunk then takes the sub-chunk path
of vector.py, 3x slower (the 2026-12-07 H100 profile: 6.45 against 2.15 ms fwd+bwd). 80, which the centred
factors allow and which factorises every strong chunk, passed in the interpreter (fp32, fp16) and on an
H100 in fp16, but bf16's dg came to 2.1e-2 against its 2e-2 tolerance (benchmarks/results/gla_safe80/):
the backward's factorised products take bf16 operands; chunk.TUNE["vector_bwd_factor_f32"] makes them
float32 (tf32 dots, as the forward's FACTOR_F32), not yet checked or timed on a GPU.
Gates that forget harder than −SAFE_LOG per chunk keep the sub-chunk path.
Every kernel that branches calls `chunk_is_safe` on the same b buffer: a minimum is exact in any
order, so all kernels take the same branch for a chunk
(vector.chunk_intra_kernel and chunk_vector_dqdk_kernel return at once on safe chunks,
chunk_vector_fast_dqdk_kernel on unsafe ones, output's kernels form A themselves on safe chunks and
read it on unsafe ones).

Backward on a safe chunk (one program per (chunk, K block, head)), with S_0 = h,
dS_c = dh, dA_ij = scale · do_i · v_j (i >= j), q̂ = q ⊙ e^{b − c}, k̂ = k ⊙ e^{c − b}:

    dq_i = e^{b_i − c} ⊙ Σ_j dA_ij k̂_j + scale · e^{b_i} ⊙ (do_i S_0ᵀ)
    dk_j = e^{c − b_j} ⊙ Σ_i dA_ij q̂_i + e^{b_l − b_j} ⊙ (v_j dS_cᵀ)
    db_t = q_t ⊙ dq_t − k_t ⊙ dk_t      (per position and channel, float32: the convention of
                                        chunk_vector_dqdk_kernel; chunk_reverse_cumsum sums it)

Transposed products come from transposed loads, never from transposing a tl.dot result (the
Triton 3.6 Hopper miscompile, fla issue #640).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnzoo.ops.linear.triton.safe import SAFE_LOG, chunk_is_safe  # noqa: F401 (re-exported)
from attnzoo.ops.linear.triton.state import chunk_rows
from attnzoo.ops.linear.triton.scalar_bwd import chunk_value_products

# Operands of the forward's factorised A (the output kernel; dv's Aᵀ stays in the input dtype)
# in float32 (tf32 dots) whatever the inputs' dtype. q ⊙ e^{b − c} and k ⊙ e^{c − b} are new roundings
# that bf16 inputs do not carry (the sub-chunk path's diagonal blocks are exact in float32). CPU
# emulation (2-layer gla LM, whole gradient vs float64, benchmarks/bf16_factored_emulation.py):
# 0.054 with bf16 A operands, 0.0066 with float32 ones, the rest of the op in bf16 either way; the
# backward's products add 0.003. H200 (gla_bf16_grad_check.py, output and dv kernels both in
# float32): 0.088 against 0.143, ~9% slower.
FACTOR_F32 = True


@triton.jit
def factor_cast(x, like, F32: tl.constexpr = False):
    """A factorised operand (q ⊙ e^{b − c} or k ⊙ e^{c − b}) in the inputs' dtype for the tensor cores,
    except float16, whose range (max 65504, normal min 6e-5) holds neither e^{SAFE_LOG / 2} nor
    e^{−SAFE_LOG / 2}, and when F32 is set (FACTOR_F32): float32 there (tf32 dots: a 10-bit mantissa
    with fp32's range)."""
    if F32 or like.dtype == tl.float16:
        return x.to(tl.float32)
    else:
        return x.to(like.dtype)


def chunk_safe_mask(b: torch.Tensor, tables, BT: int) -> torch.Tensor:
    """The same decision in torch, for tests and diagnostics: bool [n_chunks, H]."""
    cu = tables.cu_seqlens.long()
    seq, idx = tables.chunk_seq.long(), tables.chunk_idx.long()
    last = torch.minimum(cu[seq] + (idx + 1) * BT, cu[seq + 1]) - 1
    return b[last].float().clamp_max(0.0).amin(-1) >= -float(SAFE_LOG.value)


@triton.jit
def chunk_vector_fast_dqdk_kernel(
    q, k, v, do, b, h, dh, dq, dk, db, cu_seqlens, chunk_seq, chunk_idx, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, FUSED_DG: tl.constexpr = False, F32: tl.constexpr = False,
):
    """dq, dk [N_tok, H, K] and db (float32) for the rows of one SAFE (chunk, head) and K block
    (db is per channel, so K blocks are independent; dA = do vᵀ is recomputed per block). FUSED_DG:
    write the final dg instead of db, as the scalar kernel does (scalar_bwd.py): the in-chunk
    reverse cumsum plus <S_c, dS_c> per channel, e^{b_c} Σ_v S_0 ⊙ dS_c + Σ_j k_j ⊙ (dk's inter-chunk
    term); chunk_reverse_cumsum then skips safe chunks. F32: the two factorised products' operands in
    float32 (tf32 dots; chunk.TUNE["vector_bwd_factor_f32"]), for bf16 inputs' dg (module docstring)."""
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_rows(cu_seqlens, chunk_seq, chunk_idx, i_c, BT)
    last = tl.minimum(t0 + BT, eos) - 1
    if chunk_is_safe(b, last, i_h, H, K, BK):
        t = t0 + tl.arange(0, BT)
        mt = t < eos
        kk = i_k * BK + tl.arange(0, BK)
        mk = kk < K
        mtk = mt[:, None] & mk[None, :]
        s_base = i_c.to(tl.int64) * H * K * V + i_h * K * V
        acc_dq, acc_dk, ds, dsT, hdh = chunk_value_products(do, v, h, dh, t, mt, kk, mk, s_base, i_h, H, V, BT, BK,
                                                            BV, HDH=FUSED_DG)
        ar = tl.arange(0, BT)
        causal = (ar[:, None] >= ar[None, :]) & mt[:, None] & mt[None, :]
        anti = (ar[:, None] <= ar[None, :]) & mt[:, None] & mt[None, :]
        ds = tl.where(causal, ds * scale, 0.0)
        dsT = tl.where(anti, dsT * scale, 0.0)
        off = t[:, None] * (H * K) + i_h * K + kk[None, :]
        # dq first, then dk: fewer [BT, BK] tiles live at once (register pressure)
        bt = tl.load(b + off, mask=mtk, other=0.0)
        kt = tl.load(k + off, mask=mtk, other=0.0)
        bl = tl.load(b + last * (H * K) + i_h * K + kk, mask=mk, other=0.0)
        c = 0.5 * bl  # the factors' centre: |b − c| <= SAFE_LOG / 2 on a safe chunk
        kh = factor_cast(kt * tl.exp(c[None, :] - bt), kt, F32)
        acc_dq = tl.exp(bt) * acc_dq * scale + tl.exp(bt - c[None, :]) * tl.dot(ds.to(kh.dtype), kh)
        tl.store(dq + off, acc_dq.to(dq.dtype.element_ty), mask=mtk)
        qt = tl.load(q + off, mask=mtk, other=0.0)
        dbt = qt.to(tl.float32) * acc_dq
        qh = factor_cast(qt * tl.exp(bt - c[None, :]), qt, F32)
        acc_dk = tl.exp(tl.where(mtk, bl[None, :] - bt, 0.0)) * acc_dk
        if FUSED_DG:  # everything after the chunk, per channel: <S_c, dS_c> with S_c = e^{b_c} S_0 + Σ_j ...
            after = tl.exp(bl) * hdh + tl.sum(kt.to(tl.float32) * acc_dk, axis=0)
        acc_dk += tl.exp(c[None, :] - bt) * tl.dot(dsT.to(qh.dtype), qh)
        tl.store(dk + off, acc_dk.to(dk.dtype.element_ty), mask=mtk)
        dbt = dbt - kt.to(tl.float32) * acc_dk
        if FUSED_DG:
            dbt = tl.sum(dbt, axis=0)[None, :] - tl.cumsum(dbt, axis=0) + dbt + after[None, :]
        tl.store(db + off, dbt, mask=mtk)
