"""Triton kernels for the gate sums of chunked gated linear attention (see CHUNKED.md §1, §3).

Tokens are packed: a tensor [N_tok, H, G] (G = 1 for a scalar gate, K for a vector gate) holds
every sequence back to back, sequence n occupying rows cu_seqlens[n] : cu_seqlens[n + 1]
(FlashAttention convention; a regular batch [B, T] is the case cu_seqlens = [0, T, 2T, ...]).
Chunks of BT tokens start at each sequence's first token.

- `chunk_local_cumsum`: b_i = Σ_{j <= i} g_j from the start of each chunk (so b <= 0).
- `segment_reverse_cumsum`: dg_t = carry_n + Σ_{s >= t, s in sequence n} db_s (the gate-gradient
  identity of CHUNKED.md §3, carry_n being the final-state term rowsum(S_T ⊙ dS_T)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def chunk_local_cumsum_kernel(
    g, b, cu_seqlens, chunk_seq, chunk_idx,
    H: tl.constexpr, G: tl.constexpr, BT: tl.constexpr, BG: tl.constexpr,
):
    i_c, i_h, i_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n = tl.load(chunk_seq + i_c)
    i = tl.load(chunk_idx + i_c)
    bos = tl.load(cu_seqlens + n)
    eos = tl.load(cu_seqlens + n + 1)
    t = bos + i * BT + tl.arange(0, BT)
    cols = i_g * BG + tl.arange(0, BG)
    m = (t < eos)[:, None] & (cols < G)[None, :]
    off = t[:, None] * (H * G) + i_h * G + cols[None, :]
    x = tl.load(g + off, mask=m, other=0.0).to(tl.float32)
    tl.store(b + off, tl.cumsum(x, axis=0), mask=m)


@triton.jit
def segment_reverse_cumsum_kernel(
    db, dg, carry, cu_seqlens,
    H: tl.constexpr, G: tl.constexpr, BT: tl.constexpr, BG: tl.constexpr, HAS_CARRY: tl.constexpr,
):
    i_n, i_h, i_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos = tl.load(cu_seqlens + i_n)
    eos = tl.load(cu_seqlens + i_n + 1)
    cols = i_g * BG + tl.arange(0, BG)
    acc = tl.zeros([BG], dtype=tl.float32)
    if HAS_CARRY:
        acc += tl.load(carry + (i_n * H + i_h) * G + cols, mask=cols < G, other=0.0)
    n_chunks = tl.cdiv(eos - bos, BT)
    for j in range(n_chunks):
        i = n_chunks - 1 - j
        t = bos + i * BT + tl.arange(0, BT)
        m = (t < eos)[:, None] & (cols < G)[None, :]
        off = t[:, None] * (H * G) + i_h * G + cols[None, :]
        x = tl.load(db + off, mask=m, other=0.0)
        total = tl.sum(x, axis=0)
        # reverse cumsum inside the chunk: total - (inclusive prefix) + x
        y = total[None, :] - tl.cumsum(x, axis=0) + x + acc[None, :]
        tl.store(dg + off, y, mask=m)
        acc += total


def chunk_local_cumsum(g: torch.Tensor, tables, BT: int) -> torch.Tensor:
    """g [N_tok, H] or [N_tok, H, K] (float32) -> chunk-local inclusive cumsum, same shape, float32."""
    N_tok, H = g.shape[:2]
    G = 1 if g.dim() == 2 else g.shape[2]
    BG = min(64, triton.next_power_of_2(G))
    b = torch.empty_like(g, dtype=torch.float32)
    grid = (tables.n_chunks, H, triton.cdiv(G, BG))
    chunk_local_cumsum_kernel[grid](g, b, tables.cu_seqlens, tables.chunk_seq, tables.chunk_idx,
                                    H=H, G=G, BT=BT, BG=BG)
    return b


def segment_reverse_cumsum(db: torch.Tensor, tables, BT: int, carry: torch.Tensor | None = None):
    """db [N_tok, H(, K)] float32 -> per-sequence reverse cumsum, plus carry [N, H(, K)] at each end."""
    N_tok, H = db.shape[:2]
    G = 1 if db.dim() == 2 else db.shape[2]
    BG = min(64, triton.next_power_of_2(G))
    dg = torch.empty_like(db)
    grid = (tables.n_seqs, H, triton.cdiv(G, BG))
    segment_reverse_cumsum_kernel[grid](
        db, dg, carry if carry is not None else db, tables.cu_seqlens,
        H=H, G=G, BT=BT, BG=BG, HAS_CARRY=carry is not None,
    )
    return dg
