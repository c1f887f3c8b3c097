"""Triton kernels for the gate sums of chunked gated linear attention (see CHUNKED.md §1, §3).

Tokens are packed: a tensor [N_tok, H, G] (G = 1 for a scalar gate, K for a vector gate) holds
every sequence back to back, sequence n occupying rows cu_seqlens[n] : cu_seqlens[n + 1]
(FlashAttention convention; a regular batch [B, T] is the case cu_seqlens = [0, T, 2T, ...]).
Chunks of BT tokens start at each sequence's first token.

- `chunk_local_cumsum`: b_i = Σ_{j <= i} g_j from the start of each chunk (so b <= 0).
- `chunk_reverse_cumsum`: dg_t = Σ_{s >= t, s in t's chunk} db_s + rowsum(S_c ⊙ dS_c), the
  gate-gradient identity of CHUNKED.md §3 with the sum over all later tokens replaced by its exact
  value at the chunk's end (S_c, dS_c the state leaving the chunk and its gradient; at a sequence's
  end that is the final-state term). Summing db over the whole sequence instead adds up the
  rounding of q ⊙ dq − k ⊙ dk (a difference of large terms) over T tokens (measured on the H200,
  bf16, T = 4096: 3.6e-2 relative error for dg that way, where fla's chunk_gla has 1.8e-3).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnzoo.ops.linear.triton.safe import chunk_is_safe


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
def chunk_reverse_cumsum_kernel(
    db, dg, term, b, cu_seqlens, chunk_seq, chunk_idx,
    H: tl.constexpr, G: tl.constexpr, BT: tl.constexpr, BG: tl.constexpr, SKIP_SAFE: tl.constexpr = False,
):
    i_c, i_h, i_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n = tl.load(chunk_seq + i_c)
    i = tl.load(chunk_idx + i_c)
    bos = tl.load(cu_seqlens + n)
    eos = tl.load(cu_seqlens + n + 1)
    if SKIP_SAFE:  # the vector fast path's kernel already wrote dg for this chunk
        if chunk_is_safe(b, tl.minimum(bos + i * BT + BT, eos).to(tl.int64) - 1, i_h, H, G, BG):
            return
    t = bos + i * BT + tl.arange(0, BT)
    cols = i_g * BG + tl.arange(0, BG)
    m = (t < eos)[:, None] & (cols < G)[None, :]
    off = t[:, None] * (H * G) + i_h * G + cols[None, :]
    x = tl.load(db + off, mask=m, other=0.0)
    after = tl.load(term + (i_c * H + i_h) * G + cols, mask=cols < G, other=0.0)
    # reverse cumsum inside the chunk (total - inclusive prefix + x), plus all later chunks' share
    y = tl.sum(x, axis=0)[None, :] - tl.cumsum(x, axis=0) + x + after[None, :]
    tl.store(dg + off, y, mask=m)


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


def chunk_reverse_cumsum(db: torch.Tensor, term: torch.Tensor, tables, BT: int, skip_safe_of=None) -> torch.Tensor:
    """db [N_tok, H(, K)] float32, term [n_chunks, H(, K)] (the gradient of all later cumulative
    gates, rowsum(S_c ⊙ dS_c)) -> dg_t = Σ_{s >= t in t's chunk} db_s + term[chunk(t)].
    skip_safe_of=b (vector gate): in place, leaving the chunks that safe.chunk_is_safe
    takes (their rows of db already hold dg)."""
    N_tok, H = db.shape[:2]
    G = 1 if db.dim() == 2 else db.shape[2]
    BG = min(64, triton.next_power_of_2(G))
    dg = db if skip_safe_of is not None else torch.empty_like(db)
    chunk_reverse_cumsum_kernel[(tables.n_chunks, H, triton.cdiv(G, BG))](
        db, dg, term, skip_safe_of if skip_safe_of is not None else db, tables.cu_seqlens, tables.chunk_seq,
        tables.chunk_idx, H=H, G=G, BT=BT, BG=BG, SKIP_SAFE=skip_safe_of is not None,
    )
    return dg
