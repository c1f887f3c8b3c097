"""Causal softmax attention for a subset of query positions (MoH's routed heads, decoding).

    o = subset_causal_attention(q, k, v, q_pos, count=count)      # q [B,H,n,D], k/v [B,H,L,D]

Key j sits at position j; the query in slot i of row (b, h) sits at position q_pos[b,h,i]
(ascending along i for the first count[b,h] slots; the other slots are padding, output 0) and sees
keys 0..q_pos[b,h,i]:

    o_i = Σ_{j ≤ p_i} softmax_j(q_i·k_j · scale) v_j

This is the all-queries causal attention with the unselected rows removed, computed at a cost
proportional to the rows kept. The queries are grouped by position block [a, a+Bp): every query of
a block sees the keys [0, a) unmasked, which go through the CPU flash kernel (it also returns the
log-sum-exp); only the keys of the block itself, [a, a+Bp), need a mask (a small additive one,
also through the flash kernel); the parts merge exactly through their log-sum-exps (CHUNKED.md's
merge rule). With two levels (block=(big, small)) each big block's own keys are again split by
the small blocks, so most keys go through big flash calls with little padding. (Padding: all heads
of one call share the block, so each takes the largest count of selected queries in it.)
Off the CPU (the flash-with-lse op is CPU-only), and when autograd needs gradients (the op's backward
ignores the log-sum-exp's gradient), each block is one masked SDPA call over [0, a+Bp) instead.
`subset_causal_attention_reference` is the explicit masked softmax, float64-exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FLASH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def subset_causal_attention_reference(q, k, v, q_pos, count=None, *, scale=None):
    """Explicit scores, masked softmax: same contract as `subset_causal_attention`."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    keys = torch.arange(k.shape[2], device=q.device)
    s = s.masked_fill(keys > q_pos[..., None], float("-inf"))
    o = torch.einsum("bhij,bhjd->bhid", torch.softmax(s, -1), v)
    if count is not None:
        live = torch.arange(q.shape[2], device=q.device) < count[..., None]
        o = torch.where(live[..., None], o, o.new_zeros(()))
    return o


def _check(q, k, v, q_pos, count):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, n, D] / [B, H, L, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k [B,H,L,{q.shape[-1]}] and v [B,H,L,Dv] must match q {tuple(q.shape)}; "
                         f"got {tuple(k.shape)}, {tuple(v.shape)}")
    if tuple(q_pos.shape) != tuple(q.shape[:3]) or q_pos.dtype != torch.long:
        raise ValueError(f"q_pos must be long {tuple(q.shape[:3])}, got {q_pos.dtype} {tuple(q_pos.shape)}")
    if count is not None and (tuple(count.shape) != tuple(q.shape[:2]) or count.dtype != torch.long):
        raise ValueError(f"count must be long {tuple(q.shape[:2])}, got {count.dtype} {tuple(count.shape)}")


def default_block(n_queries: int, span: int, target: int = 64) -> int:
    """Position block size giving about `target` queries per block (multiple of 16, at least 16)."""
    per_pos = max(n_queries, 1) / max(span, 1)
    return max(16, int(round(target / per_pos / 16)) * 16)


def _band_bias(width: int, dtype, device):
    """[width, width] additive mask: row r allows the band keys 0..r."""
    return torch.zeros(width, width, dtype=dtype, device=device).masked_fill_(
        torch.ones(width, width, dtype=torch.bool, device=device).triu_(1), float("-inf"))


def _flash(q, k, v, scale, mask=None):
    """(o, lse) of unmasked (or additively masked) attention through the CPU flash kernel."""
    o, lse = _FLASH_LSE(q, k, v, attn_mask=mask, scale=scale)
    return o, lse.to(torch.float64 if o.dtype == torch.float64 else torch.float32)  # lse kept >= fp32


def _merge(o1, lse1, o2, lse2):
    """Softmax attention over two disjoint key sets from each one's (o, lse): exact."""
    return torch.lerp(o2, o1, torch.sigmoid(lse1 - lse2).to(o1.dtype)[..., None]), torch.logaddexp(lse1, lse2)


def _subset_blocks(q, q_pos, count, k, v, key_lo, blocks, scale, bias_table):
    """(o, lse) [B,H,n,Dv], [B,H,n] of queries q [B,H,n,D] (first count[b,h] slots real, positions
    q_pos ascending) over the keys key_lo..q_pos. Queries are grouped by position block blocks[0]:
    each group sees the keys [key_lo, a) unmasked (one flash call) and its own block [a, b) either
    with a mask (last level) or recursively with the next, smaller block size."""
    B, H, n, D = q.shape
    real = torch.arange(n, device=q.device) < count[..., None]
    block = blocks[0]
    lo, hi = int(q_pos[real].min()), int(q_pos[real].max())
    nb = (hi - lo) // block + 1
    blk = torch.where(real, torch.div(q_pos - lo, block, rounding_mode="floor"), nb)  # padding: block nb
    cnt = torch.zeros(B, H, nb + 1, dtype=torch.long, device=q.device).scatter_add_(2, blk, torch.ones_like(blk))
    start = cnt.cumsum(2) - cnt  # first slot of each block (slots are sorted by position)
    out = q.new_zeros(B, H, n + 1, v.shape[-1])  # slot n: sink for the padding of each block
    out_lse = torch.full((B, H, n + 1), float("-inf"), device=q.device,
                         dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    q_rows, pos_rows = q.reshape(B * H * n, D), q_pos.reshape(-1)  # row gathers: faster than gather
    row_offset = n * torch.arange(B * H, device=q.device).view(B, H, 1)
    for j, m in enumerate(cnt[..., :nb].amax((0, 1)).tolist()):
        if m == 0:
            continue
        a, b = lo + j * block, min(lo + (j + 1) * block, hi + 1)
        r = torch.arange(m, device=q.device)
        ok = r < cnt[..., j, None]  # [B,H,m]
        idx = (start[..., j, None] + r).clamp_max_(n - 1)
        flat = (idx + row_offset).reshape(-1)
        qj = q_rows.index_select(0, flat).view(B, H, m, D)
        pj = torch.where(ok, pos_rows.index_select(0, flat).view(B, H, m), a)  # padding: a query at a
        if len(blocks) > 1:
            oj, lj = _subset_blocks(qj, pj, cnt[..., j], k, v, a, blocks[1:], scale, bias_table)
        else:
            w = b - a
            bias = bias_table[:w].index_select(0, (pj - a).reshape(-1))[:, :w].view(B, H, m, w)
            oj, lj = _flash(qj, k[:, :, a:b], v[:, :, a:b], scale, bias)
        if a > key_lo:
            oj, lj = _merge(*_flash(qj, k[:, :, key_lo:a], v[:, :, key_lo:a], scale), oj, lj)
        dest = torch.where(ok, idx, n)
        out.scatter_(2, dest[..., None].expand_as(oj), oj)
        out_lse.scatter_(2, dest, lj)
    return out[:, :, :n], out_lse[:, :, :n]


def _masked_blocks(q, q_pos, count, k, v, block, scale):
    """Differentiable / non-CPU path: per position block one masked SDPA call over keys [0, b)."""
    B, H, n, D = q.shape
    out = q.new_zeros(B, H, n, v.shape[-1])
    real = torch.arange(n, device=q.device) < count[..., None]
    lo, hi = int(q_pos[real].min()), int(q_pos[real].max())
    for a in range(lo, hi + 1, block):
        sel = real & (q_pos >= a) & (q_pos < a + block)
        if not bool(sel.any()):
            continue
        b = min(a + block, hi + 1)
        allowed = torch.arange(b, device=q.device) <= q_pos[..., None]  # [B,H,n,b]
        o = F.scaled_dot_product_attention(q, k[:, :, :b], v[:, :, :b], attn_mask=allowed | ~sel[..., None],
                                           scale=scale)
        out = torch.where(sel[..., None], o, out)
    return out


def default_blocks(n_queries: int, span: int) -> tuple[int, ...]:
    """Position blocks for `n_queries` selected queries over `span` positions: about 64 queries per
    block; over long spans a first level of about 384 queries per block (bigger flash calls with less
    padding), each split into the small blocks (the op alone, 12 heads at 1/3 density, 1 CPU thread:
    -8% time at T=4096, -23% at T=8192 against one level)."""
    small = default_block(n_queries, span, 64)
    big = default_block(n_queries, span, 384) // small * small
    return (big, small) if span >= 2 * big else (small,)


def subset_causal_attention(q, k, v, q_pos, count=None, *, scale=None, block=None):
    """Causal attention of sorted query subsets (MoH: Jin et al. 2024, arXiv:2410.11842); see the module docstring.

    Args:
        q: [B, H, n, D], the selected queries, positions ascending. k: [B, H, L, D]. v: [B, H, L, Dv].
        q_pos: long [B, H, n], the query positions in [0, L). count: long [B, H] real slots (None: all n).
        scale: None means D ** -0.5. block: position block size, or a tuple of decreasing sizes
        (levels); None chooses them.
    Returns:
        o [B, H, n, Dv] (0 in the padding slots).

    Example:
        >>> q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8)
        >>> q_pos = torch.tensor([[[2, 7, 19], [0, 5, 6]]])
        >>> o = subset_causal_attention(q, k, v, q_pos)
        >>> o.shape
        torch.Size([1, 2, 3, 8])
        >>> torch.allclose(o, subset_causal_attention_reference(q, k, v, q_pos), atol=1e-5)
        True
    """
    _check(q, k, v, q_pos, count)
    B, H, n, D = q.shape
    L = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    count = torch.full((B, H), n, dtype=torch.long, device=q.device) if count is None else count
    real = torch.arange(n, device=q.device) < count[..., None]
    if n == 0 or not bool(real.any()):
        return q.new_zeros(B, H, n, v.shape[-1])
    lo, hi = int(q_pos[real].min()), int(q_pos[real].max())
    if lo < 0 or hi >= L:
        raise ValueError(f"query positions must lie in [0, L) = [0, {L}), got [{lo}, {hi}]")
    if block is None:
        blocks = default_blocks(int(real.sum()) // (B * H), hi - lo + 1)
    else:
        blocks = tuple(block) if isinstance(block, (tuple, list)) else (block,)
    if not blocks or min(blocks) < 1:
        raise ValueError(f"block must be >= 1 (or a tuple of such sizes), got {block}")
    # the flash op's backward ignores the gradient of its log-sum-exp output: autograd takes SDPA
    if (_FLASH_LSE is None or q.device.type != "cpu"
            or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))):
        return _masked_blocks(q, q_pos, count, k, v, blocks[-1], scale)
    bias_table = _band_bias(blocks[-1], q.dtype, q.device)
    return _subset_blocks(q, q_pos, count, k, v, 0, blocks, scale, bias_table)[0]
