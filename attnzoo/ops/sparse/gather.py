"""Torch block-sparse attention that reads only the selected blocks (the CPU fast path, impl="torch").

Each query block gathers its S selected key blocks (S·bs keys) and runs a dense softmax over them,
a chunk of query blocks at a time to bound the gathered memory. Differentiable through torch's
gather (gradients flow to q, k, v; the selection is an integer input). Same arguments as the
reference (reference.py) and the Triton kernels.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.sparse.reference import counted_ids


def _gather_blocks(x, ids, block_size):
    """x [B, Hkv, Lp, D] (Lp a multiple of bs), ids [B, Hkv, m, S] (>= 0) -> [B, Hkv, m, S·bs, D]."""
    B, Hkv, _, D = x.shape
    m, S = ids.shape[2], ids.shape[3]
    pos = (ids[..., None] * block_size + torch.arange(block_size, device=x.device)).reshape(B, Hkv, m * S * block_size)
    return torch.gather(x, 2, pos[..., None].expand(-1, -1, -1, D)).view(B, Hkv, m, S * block_size, D)


def block_sparse_attention_torch(q, k, v, block_ids, block_counts, *, block_size: int, scale=None,
                                 q_blocks_per_chunk: int = 16):
    """q [B, T, Hq, D], k, v [B, T, Hkv, D], block_ids [B, Hkv, M, S], block_counts [B, Hkv, M] -> o."""
    B, T, Hq, D = q.shape
    Hkv, Dv = k.shape[2], v.shape[-1]
    G = Hq // Hkv
    bs = block_size
    ct = compute_dtype(q)
    scale = D**-0.5 if scale is None else scale
    M = -(-T // bs)
    pad = M * bs - T
    ids = counted_ids(block_ids, block_counts).long()
    kT = torch.nn.functional.pad(k.to(ct), (0, 0, 0, 0, 0, pad)).transpose(1, 2)  # [B, Hkv, M·bs, D]
    vT = torch.nn.functional.pad(v.to(ct), (0, 0, 0, 0, 0, pad)).transpose(1, 2)
    qp = torch.nn.functional.pad(q.to(ct), (0, 0, 0, 0, 0, pad)).view(B, M, bs, Hkv, G, D)
    outs = []
    for m0 in range(0, M, q_blocks_per_chunk):
        m1 = min(M, m0 + q_blocks_per_chunk)
        idc = ids[:, :, m0:m1]  # [B, Hkv, m, S]
        ok_blk = idc >= 0
        kg = _gather_blocks(kT, idc.clamp_min(0), bs)
        vg = _gather_blocks(vT, idc.clamp_min(0), bs)
        kpos = (idc.clamp_min(0)[..., None] * bs + torch.arange(bs, device=q.device)).flatten(-2)  # [B,Hkv,m,S·bs]
        ok = ok_blk.repeat_interleave(bs, dim=-1)
        qpos = (torch.arange(m0, m1, device=q.device)[:, None] * bs + torch.arange(bs, device=q.device))
        allowed = ok[:, :, :, None, :] & (kpos[:, :, :, None, :] <= qpos[None, None, :, :, None])  # [B,Hkv,m,bs,K]
        qc = qp[:, m0:m1].permute(0, 3, 4, 1, 2, 5)  # [B, Hkv, G, m, bs, D]
        s = torch.einsum("bkgmid,bkmjd->bkgmij", qc, kg) * scale
        s = s.masked_fill(~allowed[:, :, None], float("-inf"))
        seen = allowed.any(-1)[:, :, None, :, :, None]
        p = torch.softmax(torch.where(seen, s, torch.zeros_like(s)), -1) * seen.to(ct)
        o = torch.einsum("bkgmij,bkmjd->bkgmid", p, vg)  # [B, Hkv, G, m, bs, Dv]
        outs.append(o.permute(0, 3, 4, 1, 2, 5).reshape(B, (m1 - m0) * bs, Hq, Dv))
    return torch.cat(outs, 1)[:, :T].to(q.dtype)


def block_sparse_decode_torch(q, k_cache, v_cache, block_ids, block_counts, cache_lens, *, block_size: int,
                              scale=None):
    """q [B, Hq, D] against the selected blocks of the cache (see reference.block_sparse_decode_reference)."""
    B, Hq, D = q.shape
    L, Hkv = k_cache.shape[1], k_cache.shape[2]
    bs = block_size
    ct = compute_dtype(q)
    scale = D**-0.5 if scale is None else scale
    pad = -(-L // bs) * bs - L
    ids = counted_ids(block_ids, block_counts).long()[:, :, None]  # [B, Hkv, 1, S]
    kT = torch.nn.functional.pad(k_cache.to(ct), (0, 0, 0, 0, 0, pad)).transpose(1, 2)
    vT = torch.nn.functional.pad(v_cache.to(ct), (0, 0, 0, 0, 0, pad)).transpose(1, 2)
    kg = _gather_blocks(kT, ids.clamp_min(0), bs)[:, :, 0]  # [B, Hkv, S·bs, D]
    vg = _gather_blocks(vT, ids.clamp_min(0), bs)[:, :, 0]
    kpos = (ids[:, :, 0].clamp_min(0)[..., None] * bs + torch.arange(bs, device=q.device)).flatten(-2)
    ok = (ids[:, :, 0] >= 0).repeat_interleave(bs, dim=-1) & (kpos < cache_lens[:, None, None])
    qf = q.to(ct).view(B, Hkv, Hq // Hkv, D)
    s = torch.einsum("bkgd,bkjd->bkgj", qf, kg) * scale
    s = s.masked_fill(~ok[:, :, None], float("-inf"))
    seen = ok.any(-1)[:, :, None, None]
    p = torch.softmax(torch.where(seen, s, torch.zeros_like(s)), -1) * seen.to(ct)
    return torch.einsum("bkgj,bkjd->bkgd", p, vg).reshape(B, Hq, -1).to(q.dtype)
