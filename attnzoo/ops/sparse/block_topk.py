"""Block top-k key selection (NSA selection branch / SSA / Kinetics) and attention over the selection.

Keys live on a *timeline*: k [B, L, Hkv, D] where index j is the key's position (real tokens only),
valid [B, L] marks filled slots. Block b holds positions [b*bs, (b+1)*bs).

    k̄_b = mean_{j in block b} k_j                                  (pooled key, complete blocks only)
    s_{i,b} = mean_{g in GQA group} softmax_b(q_{i,g} · k̄_b / sqrt(D))       score="softmax" (SSA)
            = mean_{g in GQA group} q_{i,g} · k̄_b / sqrt(D)                   score="logits"  (Kinetics)

Query i (position p) scores only the complete blocks before its own block (b < p // bs), so a pooled
key never includes a token after p; its own block is always kept (it is one of the top_k, as in
NSA where the current block is forced to score 1). The query then attends, causally, to the union
of the kept blocks, the first `n_sink` positions and the last `window` positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pooled_block_keys(k: torch.Tensor, valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean key per block over valid slots: k [B, L, H, D] -> [B, nb, H, D] (nb = ceil(L / bs))."""
    B, L, H, D = k.shape
    nb = -(-L // block_size)
    pad = nb * block_size - L
    kz = torch.where(valid[..., None, None], k, k.new_zeros(()))
    kz = F.pad(kz, (0, 0, 0, 0, 0, pad)).view(B, nb, block_size, H, D).sum(2)
    cnt = F.pad(valid.to(k.dtype), (0, pad)).view(B, nb, block_size).sum(2).clamp_min(1)
    return kz / cnt[..., None, None]


def select_blocks(q, q_pos, kbar, *, block_size: int, top_k: int, score: str = "softmax", scale=None):
    """Top-k blocks per (query, kv head). q [B,Tq,Hq,D], q_pos [B,Tq], kbar [B,nb,Hkv,D].

    Returns block ids [B, Tq, Hkv, min(top_k, nb)] (long, -1 = no block) and the selection as a
    bool mask [B, Tq, Hkv, nb]. Computed in float32 (float64 for float64 inputs).
    """
    if score not in ("softmax", "logits"):
        raise ValueError(f'score must be "softmax" (SSA) or "logits" (Kinetics), got {score!r}')
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    B, Tq, Hq, D = q.shape
    nb, Hkv = kbar.shape[1], kbar.shape[2]
    G = Hq // Hkv
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = D**-0.5 if scale is None else scale
    logits = torch.einsum("btkgd,bnkd->btkgn", q.to(ct).view(B, Tq, Hkv, G, D), kbar.to(ct)) * scale
    cur = torch.div(q_pos, block_size, rounding_mode="floor")  # [B, Tq]
    blocks = torch.arange(nb, device=q.device)
    cand = (blocks < cur[..., None])[:, :, None, None, :]  # complete blocks before the query's own
    neg = torch.tensor(float("-inf"), dtype=ct, device=q.device)
    logits = torch.where(cand, logits, neg)
    if score == "softmax":
        p = torch.softmax(logits, dim=-1)
        s = torch.where(cand, p, neg.new_zeros(())).mean(3)
    else:
        s = logits.mean(3)
    s = torch.where(cand[:, :, :, 0], s, neg)  # [B, Tq, Hkv, nb]
    own = (blocks == cur[..., None])[:, :, None, :]
    s = torch.where(own, torch.tensor(float("inf"), dtype=ct, device=q.device), s)
    kk = min(top_k, nb)
    vals, ids = torch.topk(s, kk, dim=-1)
    ids = torch.where(vals > float("-inf"), ids, torch.full_like(ids, -1))
    sel = torch.zeros(B, Tq, Hkv, nb + 1, dtype=torch.bool, device=q.device)
    sel.scatter_(3, torch.where(ids >= 0, ids, torch.full_like(ids, nb)), True)
    return ids, sel[..., :nb]


def block_sparse_allowed(sel, q_pos, L: int, *, block_size: int, n_sink: int = 0, window=None):
    """Dense mask of the selection: bool [B, Hkv, Tq, L] (query position p sees key j iff j <= p and
    (block(j) kept or j < n_sink or p - j < window))."""
    j = torch.arange(L, device=sel.device)
    blk = torch.div(j, block_size, rounding_mode="floor")
    in_sel = sel[..., blk]  # [B, Tq, Hkv, L]
    p = q_pos[:, :, None, None]
    extra = j < n_sink
    if window is not None:
        extra = extra | (p - j < window)
    allowed = (in_sel | extra) & (j <= p)
    return allowed.permute(0, 2, 1, 3)


def block_sparse_attention_reference(q, k, v, q_pos, sel, *, block_size, n_sink=0, window=None, scale=None):
    """Dense softmax reference with the gathered mask, one kv head at a time (GQA groups share it)."""
    from attnzoo.ops.softmax.reference import softmax_attention_reference

    B, Tq, Hq, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    allowed = block_sparse_allowed(sel, q_pos, L, block_size=block_size, n_sink=n_sink, window=window)
    qf = q.view(B, Tq, Hkv, G, D).permute(0, 2, 1, 3, 4).reshape(B * Hkv, Tq, G, D)
    kf = k.permute(0, 2, 1, 3).reshape(B * Hkv, L, 1, D)
    vf = v.permute(0, 2, 1, 3).reshape(B * Hkv, L, 1, v.shape[-1])
    o = softmax_attention_reference(
        qf, kf, vf, allowed=allowed.reshape(B * Hkv, Tq, L), scale=D**-0.5 if scale is None else scale
    )
    return o.view(B, Hkv, Tq, G, -1).permute(0, 2, 1, 3, 4).reshape(B, Tq, Hq, -1)


def gathered_key_index(ids, q_pos, L: int, *, block_size: int, n_sink: int = 0, window=None):
    """Key positions each (query, kv head) reads, without duplicates: idx, ok [B, Tq, Hkv, K]."""
    B, Tq, Hkv, kk = ids.shape
    dev = ids.device
    off = torch.arange(block_size, device=dev)
    bidx = (ids[..., None] * block_size + off).reshape(B, Tq, Hkv, kk * block_size)
    p = q_pos[:, :, None, None]
    ok = (ids >= 0).repeat_interleave(block_size, dim=-1) & (bidx <= p)
    parts, oks = [bidx], [ok]
    kept = torch.zeros(B, Tq, Hkv, -(-L // block_size) + 1, dtype=torch.bool, device=dev)
    kept.scatter_(3, torch.where(ids >= 0, ids, torch.full_like(ids, kept.shape[-1] - 1)), True)

    def not_kept(j):  # j [B, Tq, Hkv, n] positions
        return ~torch.gather(kept, 3, torch.div(j.clamp(0, L - 1), block_size, rounding_mode="floor"))

    if window is not None and window > 0:
        w = min(window, L)
        widx = (p - torch.arange(w, device=dev)).expand(B, Tq, Hkv, w)
        parts.append(widx)
        oks.append((widx >= 0) & not_kept(widx))
    if n_sink > 0:
        s = min(n_sink, L)
        sidx = torch.arange(s, device=dev).expand(B, Tq, Hkv, s)
        in_win = (p - sidx < window) if window else torch.zeros_like(sidx, dtype=torch.bool)
        parts.append(sidx)
        oks.append((sidx <= p) & not_kept(sidx) & ~in_win)
    idx = torch.cat(parts, -1)
    ok = torch.cat(oks, -1)
    return idx.clamp(0, L - 1), ok


def block_sparse_attention(q, k, v, q_pos, ids, *, block_size, n_sink=0, window=None, scale=None, q_chunk=128):
    """Fast path: gather only the selected keys (top_k·bs + window + sinks per query), then softmax.

    q [B,Tq,Hq,D], k/v [B,L,Hkv,D] on the position timeline, q_pos [B,Tq], ids from select_blocks.
    Queries are processed in chunks of q_chunk to bound the gathered memory.
    """
    B, Tq, Hq, D = q.shape
    L, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = Hq // Hkv
    scale = D**-0.5 if scale is None else scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    kT, vT = k.permute(0, 2, 1, 3).to(ct), v.permute(0, 2, 1, 3).to(ct)  # [B, Hkv, L, D]
    outs = []
    for t0 in range(0, Tq, q_chunk):
        t1 = min(Tq, t0 + q_chunk)
        n = t1 - t0
        idx, ok = gathered_key_index(ids[:, t0:t1], q_pos[:, t0:t1], L, block_size=block_size,
                                     n_sink=n_sink, window=window)
        K = idx.shape[-1]
        flat = idx.permute(0, 2, 1, 3).reshape(B, Hkv, n * K, 1)
        kg = torch.gather(kT, 2, flat.expand(-1, -1, -1, D)).view(B, Hkv, n, K, D)
        vg = torch.gather(vT, 2, flat.expand(-1, -1, -1, Dv)).view(B, Hkv, n, K, Dv)
        qc = q[:, t0:t1].to(ct).view(B, n, Hkv, G, D).permute(0, 2, 1, 3, 4)  # [B, Hkv, n, G, D]
        s = torch.einsum("bkngd,bknjd->bkngj", qc, kg) * scale
        okp = ok.permute(0, 2, 1, 3)[:, :, :, None, :]
        s = s.masked_fill(~okp, float("-inf"))
        seen = okp.any(-1, keepdim=True)
        p = torch.softmax(torch.where(seen, s, torch.zeros_like(s)), -1) * seen.to(ct)
        o = torch.einsum("bkngj,bknjd->bkngd", p, vg)
        outs.append(o.permute(0, 2, 1, 3, 4).reshape(B, n, Hq, Dv))
    return torch.cat(outs, 1).to(q.dtype)
