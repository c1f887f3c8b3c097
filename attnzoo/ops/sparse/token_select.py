"""Per-token block selection and the attention over it (NSA's selection branch, Yuan et al. 2025,
arXiv:2502.11089; MoBA's gate, Lu et al. 2025, arXiv:2502.13189), plus NSA's block compression windows
and compressed attention.

Keys live on a position timeline k, v [B, L, Hkv, D] (slot j = position j); queries q [B, T, Hq, D] sit
at positions q_pos [B, T] on it (Hq a multiple of Hkv: GQA). Compression block i covers positions
[i·stride, i·stride + block_len) and is complete, so visible, to a query at p iff i·stride + block_len - 1 <= p:

    p_cmp(t) = softmax_i(q_t · k̃_i · scale | block i complete at q_pos[t])          (per query head)
    s(t, j) = Σ_{g in GQA group} Σ_i p_cmp(t)[g, i] · |block i ∩ selection block j| / block_len
    I_t = init blocks ∪ local blocks ∪ top-n_j(s(t, j) : earlier blocks, s > 0)    (per KV head, no grad)
    o_t = Σ_j softmax_j(q_t · k_j · scale | block(j) in I_t, j <= q_pos[t]) v_j

Selection block j covers [j·bs, (j+1)·bs). Init blocks are j < n_init, local blocks the n_local blocks
ending with the query's own block q_pos // bs. The layout: block_ids int32 [B, Hkv, T, S] ascending,
-1 padded, block_counts int32 [B, Hkv, T]. Unlike ops/sparse/blocks.py (one selection per query block,
for the block-sparse kernels), every query token chooses its own blocks, as in the paper.

Two torch paths compute the attention: one masked scaled_dot_product_attention call (the selection as a
dense [T, L] mask; O(T·L) work but BLAS-bound: fwd+bwd at B=2, T=1024, 4 heads, D=16, 64-blocks, top 4,
one CPU thread: 185 ms vs 740 ms for the gather and 681 ms for the explicit reference), taken while the
score matrix is small, and a gather of each query's S·bs keys (memory O(T·S·bs), for long inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.sparse.reference import _masked_softmax_attention, counted_ids


def n_compressed(L: int, block_len: int, stride: int) -> int:
    """How many complete compression blocks L positions hold: max(0, (L - block_len) // stride + 1)."""
    return max(0, (L - block_len) // stride + 1)


def compression_windows(k: torch.Tensor, block_len: int, stride: int) -> torch.Tensor:
    """The keys of each compression block: k [B, L, H, D] -> [B, Nc, block_len, H, D]."""
    B, L, H, D = k.shape
    n = n_compressed(L, block_len, stride)
    if n == 0:
        return k.new_zeros(B, 0, block_len, H, D)
    return k.unfold(1, block_len, stride)[:, :n].permute(0, 1, 4, 2, 3)


def compressed_positions(n: int, block_len: int, stride: int, device) -> torch.Tensor:
    """[n]: the position at which compression block i is complete (its last token)."""
    return torch.arange(n, device=device) * stride + block_len - 1


def compressed_attention(q, kc, vc, q_pos, *, block_len: int, stride: int, scale=None):
    """Attention over the complete compressed blocks: q [B, T, Hq, D], kc [B, Nc, Hkv, D], vc [B, Nc, Hkv, Dv],
    q_pos [B, T]. Returns (o [B, T, Hq, Dv] in q's dtype, p [B, Hkv, G, T, Nc] the probabilities, in the
    compute dtype). A query that sees no block gets zeros."""
    B, T, Hq, D = q.shape
    Nc, Hkv = kc.shape[1], kc.shape[2]
    G = Hq // Hkv
    ct = compute_dtype(q)
    scale = D**-0.5 if scale is None else scale
    seen = compressed_positions(Nc, block_len, stride, q.device)[None, None, :] <= q_pos[:, :, None]  # [B, T, Nc]
    s = torch.einsum("btkgd,bnkd->bkgtn", q.to(ct).view(B, T, Hkv, G, D), kc.to(ct)) * scale
    s = s.masked_fill(~seen[:, None, None], float("-inf"))
    any_seen = seen.any(-1)[:, None, None, :, None]
    p = torch.softmax(torch.where(any_seen, s, torch.zeros_like(s)), -1) * any_seen.to(ct)
    o = torch.einsum("bkgtn,bnkd->btkgd", p, vc.to(ct))
    return o.reshape(B, T, Hq, -1).to(q.dtype), p


def overlap_weights(n_cmp: int, n_sel: int, *, block_len: int, stride: int, sel_block: int, device, dtype):
    """W [Nc, Ns]: the share of compression block i's tokens that lie in selection block j (rows sum to 1
    where block i lies inside the timeline; W is the identity when block_len = stride = sel_block)."""
    start = torch.arange(n_cmp, device=device, dtype=dtype)[:, None] * stride
    s0 = torch.arange(n_sel, device=device, dtype=dtype)[None, :] * sel_block
    ov = torch.minimum(start + block_len, s0 + sel_block) - torch.maximum(start, s0)
    return ov.clamp_min(0) / block_len


@torch.no_grad()
def select_token_blocks(p_cmp, q_pos, n_sel: int, *, block_len: int, stride: int, sel_block: int, top_n: int,
                        n_init: int = 1, n_local: int = 1):
    """NSA's per-token selection (module docstring): p_cmp [B, Hkv, G, T, Nc], q_pos [B, T], n_sel the number of
    selection blocks of the timeline. Returns block_ids int32 [B, Hkv, T, S] (ascending, -1 padded),
    block_counts int32 [B, Hkv, T], S = min(n_sel, n_init + top_n + n_local)."""
    if not isinstance(top_n, int) or top_n < 0 or n_init < 0 or n_local < 1:
        raise ValueError(f"need top_n >= 0, n_init >= 0 and n_local >= 1 (the own block), got {top_n!r}, "
                         f"{n_init}, {n_local}")
    B, Hkv, _G, T, Nc = p_cmp.shape
    dev = p_cmp.device
    W = overlap_weights(Nc, n_sel, block_len=block_len, stride=stride, sel_block=sel_block, device=dev,
                        dtype=p_cmp.dtype)
    score = torch.einsum("bkgtn,ns->bkts", p_cmp, W)  # summed over the GQA group
    mb = (q_pos // sel_block)[:, None, :, None]  # [B, 1, T, 1]
    j = torch.arange(n_sel, device=dev)
    early = j <= mb - n_local  # wholly before the local blocks
    sel = (((j <= mb) & (j > mb - n_local)) | (early & (j < n_init))).expand(B, Hkv, T, n_sel)
    k = min(top_n, n_sel)
    if k > 0:
        cand = early & (j >= n_init) & (score > 0)
        vals, top = torch.topk(score.masked_fill(~cand, float("-inf")), k, dim=-1)
        picked = torch.zeros(B, Hkv, T, n_sel + 1, dtype=torch.bool, device=dev)
        picked.scatter_(3, torch.where(vals > float("-inf"), top, torch.full_like(top, n_sel)), True)
        sel = sel | picked[..., :n_sel]
    return block_layout(sel, min(n_sel, n_init + top_n + n_local))


def block_layout(sel: torch.Tensor, S: int):
    """A selection mask bool [..., n_sel] as (block_ids int32 [..., S] ascending, -1 padded, block_counts int32)."""
    n_sel = sel.shape[-1]
    j = torch.arange(n_sel, device=sel.device)
    ids = torch.sort(torch.where(sel, j, torch.full_like(j, n_sel)), dim=-1).values[..., :S]
    counts = (ids < n_sel).sum(-1)
    ids = torch.where(ids < n_sel, ids, torch.full_like(ids, -1))
    return ids.to(torch.int32), counts.to(torch.int32)


@torch.no_grad()
def select_moba_blocks(q, kbar, q_pos, n_sel: int, *, block_size: int, top_k: int):
    """MoBA's gate (Lu et al. 2025, arXiv:2502.13189), per query head: the own block q_pos // bs, and the
    top_k - 1 earlier blocks by s_j = q_t · mean(k over block j). q [B, T, Hq, D], kbar [B, N, Hkv, D] the
    means of the complete blocks (N >= every query's own block index), q_pos [B, T]. Returns block_ids
    int32 [B, Hq, T, S] (ascending, -1 padded) and block_counts [B, Hq, T], S = min(n_sel, top_k)."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1 (the own block counts), got {top_k!r}")
    B, T, Hq, D = q.shape
    N, Hkv = kbar.shape[1], kbar.shape[2]
    ct = compute_dtype(q)
    s = torch.einsum("btkgd,bnkd->bkgtn", q.to(ct).view(B, T, Hkv, Hq // Hkv, D), kbar.to(ct)).reshape(B, Hq, T, N)
    mb = (q_pos // block_size)[:, None, :, None]  # [B, 1, T, 1]
    sel = (torch.arange(n_sel, device=q.device) == mb).expand(B, Hq, T, n_sel)
    k = min(top_k - 1, N)
    if k > 0:
        vals, top = torch.topk(s.masked_fill(torch.arange(N, device=q.device) >= mb, float("-inf")), k, dim=-1)
        picked = torch.zeros(B, Hq, T, n_sel + 1, dtype=torch.bool, device=q.device)
        picked.scatter_(3, torch.where(vals > float("-inf"), top, torch.full_like(top, n_sel)), True)
        sel = sel | picked[..., :n_sel]
    return block_layout(sel, min(n_sel, top_k))


def token_sparse_attention_reference(q, k, v, block_ids, block_counts, q_pos, *, block_size: int, scale=None):
    """Dense masked softmax (float32; float64 for float64): query t sees key j iff block(j) is among its
    selected blocks and j <= q_pos[t]. q [B, T, Hq, D], k, v [B, L, Hkv, D] -> o [B, T, Hq, Dv]."""
    B, T, Hq, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    ct = compute_dtype(q)
    scale = D**-0.5 if scale is None else scale
    allowed = selection_mask(block_ids, block_counts, q_pos, L, block_size)  # [B, Hkv, T, L]
    qf = q.to(ct).view(B, T, Hkv, Hq // Hkv, D).permute(0, 2, 3, 1, 4)
    o = _masked_softmax_attention(qf, k.to(ct).transpose(1, 2), v.to(ct).transpose(1, 2), allowed, scale)
    return o.permute(0, 3, 1, 2, 4).reshape(B, T, Hq, -1).to(q.dtype)


def selection_mask(block_ids, block_counts, q_pos, L: int, block_size: int) -> torch.Tensor:
    """bool [B, Hkv, T, L]: query t may read key j (block(j) selected for t and j <= q_pos[t])."""
    B, Hkv, T, _ = block_ids.shape
    n = -(-L // block_size)
    ids = counted_ids(block_ids, block_counts).long()
    sel = torch.zeros(B, Hkv, T, n + 1, dtype=torch.bool, device=block_ids.device)
    sel.scatter_(3, torch.where(ids >= 0, ids, torch.full_like(ids, n)), True)
    j = torch.arange(L, device=block_ids.device)
    return sel[..., j // block_size] & (j <= q_pos[:, None, :, None])


def token_sparse_attention_sdpa(q, k, v, block_ids, block_counts, q_pos, *, block_size: int, scale=None):
    """The same attention as one masked scaled_dot_product_attention call (the selection as a dense bool
    mask [B, Hkv, T, L]): O(T·L) work, but BLAS-bound (module docstring). In the inputs' dtype, as SDPA."""
    B, T, Hq, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    allowed = selection_mask(block_ids, block_counts, q_pos, L, block_size)  # [B, Hkv, T, L]
    blind = ~allowed.any(-1, keepdim=True)  # no key (never for a query whose own block is selected): zeros
    allowed = (allowed | blind)[:, :, None].expand(B, Hkv, G, T, L).reshape(B, Hkv, G * T, L)
    qf = q.view(B, T, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * T, D)
    o = F.scaled_dot_product_attention(qf, k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
                                       scale=D**-0.5 if scale is None else scale)
    o = o.view(B, Hkv, G, T, -1).masked_fill(blind[:, :, None], 0.0)
    return o.permute(0, 3, 1, 2, 4).reshape(B, T, Hq, -1)


def token_sparse_attention_torch(q, k, v, block_ids, block_counts, q_pos, *, block_size: int, scale=None,
                                 max_gathered: int = 1 << 22):
    """The same attention reading only the selected blocks: each query gathers its S·bs keys (a chunk of
    queries at a time, at most max_gathered gathered elements per chunk). Differentiable in q, k, v."""
    B, T, Hq, D = q.shape
    L, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G, S, bs = Hq // Hkv, block_ids.shape[-1], block_size
    ct = compute_dtype(q)
    scale = D**-0.5 if scale is None else scale
    pad = -(-L // bs) * bs - L
    ids = counted_ids(block_ids, block_counts).long()
    kT = F.pad(k.to(ct), (0, 0, 0, 0, 0, pad)).transpose(1, 2)  # [B, Hkv, Lp, D]
    vT = F.pad(v.to(ct), (0, 0, 0, 0, 0, pad)).transpose(1, 2)
    qf = q.to(ct).view(B, T, Hkv, G, D).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, T, D]
    step = max(1, max_gathered // max(1, B * Hkv * S * bs * max(D, Dv)))
    offs = torch.arange(bs, device=q.device)
    outs = []
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        idc = ids[:, :, t0:t1]  # [B, Hkv, tc, S]
        kpos = (idc.clamp_min(0)[..., None] * bs + offs).flatten(-2)  # [B, Hkv, tc, S·bs]
        ok = (idc >= 0).repeat_interleave(bs, dim=-1) & (kpos <= q_pos[:, None, t0:t1, None])
        flat = kpos.reshape(B, Hkv, -1, 1)
        kg = torch.gather(kT, 2, flat.expand(-1, -1, -1, D)).view(B, Hkv, t1 - t0, S * bs, D)
        vg = torch.gather(vT, 2, flat.expand(-1, -1, -1, Dv)).view(B, Hkv, t1 - t0, S * bs, Dv)
        s = torch.einsum("bkgtd,bktjd->bkgtj", qf[:, :, :, t0:t1], kg) * scale
        s = s.masked_fill(~ok[:, :, None], float("-inf"))
        seen = ok.any(-1)[:, :, None, :, None]
        p = torch.softmax(torch.where(seen, s, torch.zeros_like(s)), -1) * seen.to(ct)
        outs.append(torch.einsum("bkgtj,bktjd->bkgtd", p, vg))
    o = torch.cat(outs, 3)  # [B, Hkv, G, T, Dv]
    return o.permute(0, 3, 1, 2, 4).reshape(B, T, Hq, Dv).to(q.dtype)


DENSE_MAX_SCORES = 1 << 25  # "torch" takes the masked SDPA while B·Hq·T·L is at most this, else the gather


def token_sparse_attention(q, k, v, block_ids, block_counts, q_pos, *, block_size: int, scale=None,
                           impl: str = "auto"):
    """Attention of each query over its own selected key blocks (module docstring).

    Args:
        q [B, T, Hq, D] at positions q_pos [B, T] (long) of the timeline k, v [B, L, Hkv, D] (Hq % Hkv == 0);
        block_ids int32 [B, Hkv, T, S] (-1 padded), block_counts int32 [B, Hkv, T]; block_size the selection
        block length; impl "auto" / "torch" (one masked SDPA call while B·Hq·T·L <= DENSE_MAX_SCORES,
        else each query gathers its selected blocks) or "reference" (dense mask, explicit softmax).
    Returns:
        o [B, T, Hq, Dv] in q's dtype (a query that sees no key gets zeros).
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape[:3] != k.shape[:3] or q.shape[-1] != k.shape[-1] \
            or q.shape[0] != k.shape[0] or q.shape[2] % k.shape[2]:
        raise ValueError(f"q [B, T, Hq, D], k, v [B, L, Hkv, D] with Hq % Hkv == 0, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, _, _ = q.shape
    Hkv = k.shape[2]
    if block_ids.dim() != 4 or tuple(block_ids.shape[:3]) != (B, Hkv, T) \
            or tuple(block_counts.shape) != (B, Hkv, T):
        raise ValueError(f"block_ids [B, Hkv, T, S] and block_counts [B, Hkv, T] = [{B}, {Hkv}, {T}], got "
                         f"{tuple(block_ids.shape)} and {tuple(block_counts.shape)}")
    if tuple(q_pos.shape) != (B, T):
        raise ValueError(f"q_pos must be [B, T] = [{B}, {T}], got {tuple(q_pos.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if impl == "reference":
        return token_sparse_attention_reference(q, k, v, block_ids, block_counts, q_pos, block_size=block_size,
                                                scale=scale)
    if impl not in ("auto", "torch"):
        raise ValueError(f'impl must be "auto", "torch" or "reference" (no Triton kernel for per-token '
                         f'selection), got {impl!r}')
    if B * q.shape[2] * T * k.shape[1] <= DENSE_MAX_SCORES:
        return token_sparse_attention_sdpa(q, k, v, block_ids, block_counts, q_pos, block_size=block_size,
                                           scale=scale)
    return token_sparse_attention_torch(q, k, v, block_ids, block_counts, q_pos, block_size=block_size,
                                        scale=scale)
