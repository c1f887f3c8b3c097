"""Plain references for block-sparse attention: dense softmax with the selection's mask, in float32
(float64 for float64 inputs). O(T^2) memory: small shapes only.

    o_i = Σ_j softmax_j(scale · q_i · k_j | j <= i, block(j) in S_{block(i)}) v_j

Same arguments as the fast paths (api.py): q [B, T, Hq, D], k, v [B, T, Hkv, D], block_ids int32
[B, Hkv, M, S] (-1 padded), block_counts int32 [B, Hkv, M]; entries past a row's count are ignored.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.sparse.blocks import allowed_keys, selected_block_mask


def counted_ids(block_ids: torch.Tensor, block_counts: torch.Tensor) -> torch.Tensor:
    """block_ids with every entry past its row's count set to -1."""
    s = torch.arange(block_ids.shape[-1], device=block_ids.device)
    return torch.where(s < block_counts[..., None], block_ids, torch.full_like(block_ids, -1))


def _masked_softmax_attention(q, k, v, allowed, scale):
    """q [B, Hkv, G, Tq, D], k/v [B, Hkv, L, D], allowed [B, Hkv, Tq, L] -> [B, Hkv, G, Tq, Dv]."""
    s = torch.einsum("bkgid,bkjd->bkgij", q, k) * scale
    s = s.masked_fill(~allowed[:, :, None], float("-inf"))
    seen = allowed.any(-1)[:, :, None, :, None]
    p = torch.softmax(torch.where(seen, s, torch.zeros_like(s)), -1) * seen.to(s.dtype)
    return torch.einsum("bkgij,bkjd->bkgid", p, v)


def block_sparse_attention_reference(q, k, v, block_ids, block_counts, *, block_size: int, scale=None):
    """Causal self-attention over the selected blocks (positions 0..T-1): o [B, T, Hq, Dv] in q's dtype."""
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    ct = compute_dtype(q)
    scale = D**-0.5 if scale is None else scale
    allowed = allowed_keys(counted_ids(block_ids, block_counts), T, block_size)
    qf = q.to(ct).view(B, T, Hkv, Hq // Hkv, D).permute(0, 2, 3, 1, 4)
    kf, vf = k.to(ct).transpose(1, 2), v.to(ct).transpose(1, 2)
    o = _masked_softmax_attention(qf, kf, vf, allowed, scale)  # [B, Hkv, G, T, Dv]
    return o.permute(0, 3, 1, 2, 4).reshape(B, T, Hq, -1).to(q.dtype)


def block_sparse_decode_reference(q, k_cache, v_cache, block_ids, block_counts, cache_lens, *, block_size: int,
                                  scale=None):
    """One query per sequence against a cache: q [B, Hq, D], k_cache/v_cache [B, L, Hkv, D], block_ids
    int32 [B, Hkv, S], block_counts [B, Hkv], cache_lens [B] (keys j < cache_lens[b] are real; the query
    sits at position cache_lens[b] - 1). Returns o [B, Hq, Dv] in q's dtype."""
    B, Hq, D = q.shape
    L, Hkv = k_cache.shape[1], k_cache.shape[2]
    ct = compute_dtype(q)
    scale = D**-0.5 if scale is None else scale
    n = -(-L // block_size)
    sel = selected_block_mask(counted_ids(block_ids, block_counts)[:, :, None], n)[:, :, 0]  # [B, Hkv, n]
    j = torch.arange(L, device=q.device)
    allowed = sel[:, :, j // block_size] & (j < cache_lens[:, None, None])  # [B, Hkv, L]
    qf = q.to(ct).view(B, Hkv, Hq // Hkv, 1, D)
    o = _masked_softmax_attention(qf, k_cache.to(ct).transpose(1, 2), v_cache.to(ct).transpose(1, 2),
                                  allowed[:, :, None], scale)
    return o.reshape(B, Hq, -1).to(q.dtype)
