"""Causal softmax attention for a subset of query positions (MoH's routed heads, decoding).

    o = subset_causal_attention(q, k, v, q_pos, count=count)      # q [B,H,n,D], k/v [B,H,L,D]

Key j sits at position j; the query in slot i of row (b, h) sits at position q_pos[b,h,i]
(ascending along i for the first count[b,h] slots; the other slots are padding, output 0) and sees
keys 0..q_pos[b,h,i]:

    o_i = Σ_{j ≤ p_i} softmax_j(q_i·k_j · scale) v_j

This is the all-queries causal attention with the unselected rows removed, computed at a cost
proportional to the rows kept. The queries are grouped by position block [a, a+Bp): every query of
a block sees the keys [0, a) unmasked, which go through the CPU flash kernel (it also returns the
log-sum-exp); only the keys of the block itself, [a, a+Bp), need a mask and are computed
explicitly; the two parts are merged exactly through the log-sum-exp (CHUNKED.md's merge rule).
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
        o = o * (torch.arange(q.shape[2], device=q.device) < count[..., None])[..., None].to(o.dtype)
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


def _block_attention(qj, pj, k, v, a, b, scale, bias_table, flash):
    """Queries qj [B,H,m,D] at positions pj [B,H,m] in [a, b): keys [0, a) unmasked, [a, b) masked.

    On the CPU both parts go through the flash kernel, which also returns each part's log-sum-exp;
    they merge exactly as o = σ(lse1 - lse2)·o1 + σ(lse2 - lse1)·o2 (CHUNKED.md's merge rule)."""
    B, H, m, D = qj.shape
    if not flash:
        allowed = torch.arange(b, device=qj.device) <= pj[..., None]
        return F.scaled_dot_product_attention(qj, k[:, :, :b], v[:, :, :b], attn_mask=allowed, scale=scale)
    w = b - a
    bias = bias_table[:w].index_select(0, (pj - a).reshape(-1))[:, :w].view(B, H, m, w)
    o2, lse2 = _FLASH_LSE(qj, k[:, :, a:b], v[:, :, a:b], attn_mask=bias, scale=scale)
    if a == 0:
        return o2
    o1, lse1 = _FLASH_LSE(qj, k[:, :, :a], v[:, :, :a], scale=scale)
    return torch.lerp(o2, o1, torch.sigmoid(lse1 - lse2).to(o1.dtype)[..., None])


def subset_causal_attention(q, k, v, q_pos, count=None, *, scale=None, block=None):
    """Causal attention of sorted query subsets; see the module docstring. Returns o [B, H, n, Dv]."""
    _check(q, k, v, q_pos, count)
    B, H, n, D = q.shape
    L = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    if n == 0:
        return q.new_zeros(B, H, 0, v.shape[-1])
    slot = torch.arange(n, device=q.device)
    real = torch.ones(B, H, n, dtype=torch.bool, device=q.device) if count is None else slot < count[..., None]
    if not bool(real.any()):
        return q.new_zeros(B, H, n, v.shape[-1])
    lo, hi = int(q_pos[real].min()), int(q_pos[real].max())
    if lo < 0 or hi >= L:
        raise ValueError(f"query positions must lie in [0, L) = [0, {L}), got [{lo}, {hi}]")
    block = default_block(int(real.sum()) // (B * H), hi - lo + 1) if block is None else block
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    nb = (hi - lo) // block + 1
    blk = torch.where(real, torch.div(q_pos - lo, block, rounding_mode="floor"), nb)  # padding: block nb
    cnt = torch.zeros(B, H, nb + 1, dtype=torch.long, device=q.device).scatter_add_(2, blk, torch.ones_like(blk))
    start = cnt.cumsum(2) - cnt  # first slot of each block (slots are sorted by position)
    m_all = cnt[..., :nb].amax((0, 1)).tolist()
    out = q.new_zeros(B, H, n + 1, v.shape[-1])  # slot n: sink for the padding of each block
    # the flash op's backward ignores the gradient of its log-sum-exp output: autograd takes SDPA
    flash = (_FLASH_LSE is not None and q.device.type == "cpu"
             and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))))
    bias_table = _band_bias(block, q.dtype, q.device)
    q_rows = q.reshape(B * H * n, D)  # row gathers (index_select) are much faster than torch.gather
    row_offset = n * torch.arange(B * H, device=q.device).view(B, H, 1)
    for j, m in enumerate(m_all):
        if m == 0:
            continue
        a, b = lo + j * block, min(lo + (j + 1) * block, hi + 1)
        r = torch.arange(m, device=q.device)
        ok = r < cnt[..., j, None]  # [B,H,m]
        idx = (start[..., j, None] + r).clamp_max_(n - 1)
        flat = (idx + row_offset).reshape(-1)
        qj = q_rows.index_select(0, flat).view(B, H, m, D)
        pj = torch.where(ok, q_pos.reshape(-1).index_select(0, flat).view(B, H, m), a)  # padding: a query at a
        oj = _block_attention(qj, pj, k, v, a, b, scale, bias_table, flash)
        out.scatter_(2, torch.where(ok, idx, n)[..., None].expand_as(oj), oj)
    return out[:, :, :n]
