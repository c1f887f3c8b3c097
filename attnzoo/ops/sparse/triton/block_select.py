"""Triton block top-k selection: the whole of blocks.select_blocks in one program per (query block,
batch·KV head), for prefill (one program per query block) and decode (one per sequence's query token).

Each program holds its row of N block scores in registers (BN = next power of two >= N lanes):

    l_{g,n} = scale · q_{m, hk·G + g} · k̄_{n, hk}         (float32, over the D channels in chunks of DC)
    s_n = mean_g softmax_{n < qb}(l_{g,n})  ("softmax", SSA)   or   mean_g l_{g,n}  ("logits", Kinetics)
    forced_n = n <= qb and (n < sink_blocks or n > qb - local_blocks)
    candidates: n < qb and not forced;  top_k rounds of  n* = min{n : s_n = max s},  s_{n*} <- -inf

(one reduction a round: the max of the 64-bit key (order-preserving int of s_n) · 2^32 + (BN - 1 - n)),
so among equal scores the LOWER block index is taken first (blocks.select_blocks' torch path follows the
same rule: a stable descending sort). The selected set (forced ∪ chosen) is written ascending through an
exclusive prefix sum, -1 padded to S, with its count: block_ids int32 [B, Hkv, M, S], block_counts int32
[B, Hkv, M], the layout the attention kernels read. Not differentiated (as in NSA).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

TILE = 8192  # elements of the [BG, BN, DC] product tile (what blocks.triton_select_supported allows: BG·BN <= 16384)
PREFILL_SPLIT_MIN = 128  # prefill: query blocks [0, 128) in one launch, then [128, 256), [256, 512), ... (see below)


@triton.jit
def block_select_kernel(
    Q, KB, QB, IDS, CNT,
    stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_pb, stride_pm,
    m0, M, N, HKV, G, S, top_k, sink_blocks, local_blocks, scale,
    SOFTMAX: tl.constexpr, BG: tl.constexpr, BN: tl.constexpr, BSO: tl.constexpr, DC: tl.constexpr,
    D: tl.constexpr, BD: tl.constexpr,
):
    m = m0 + tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)
    hk = bh % HKV
    qb = tl.load(QB + b * stride_pb + m * stride_pm).to(tl.int32)
    offs_g = tl.arange(0, BG)
    offs_n = tl.arange(0, BN)
    gmask = offs_g < G
    complete = (offs_n < qb) & (offs_n < N)  # scored blocks: complete and before the query's block
    qbase = Q + b * stride_qb + m * stride_qm + (hk * G + offs_g) * stride_qh
    kbase = KB + b * stride_kb + hk * stride_kh + offs_n * stride_kn
    acc = tl.zeros([BG, BN], tl.float32)
    for d0 in tl.static_range(0, BD, DC):
        offs_d = d0 + tl.arange(0, DC)
        dm = offs_d < D
        q = tl.load(qbase[:, None] + offs_d[None, :], mask=gmask[:, None] & dm[None, :], other=0.0).to(tl.float32)
        k = tl.load(kbase[:, None] + offs_d[None, :], mask=complete[:, None] & dm[None, :], other=0.0)
        acc += tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], 2)
    logits = acc * scale
    valid = gmask[:, None] & complete[None, :]
    if SOFTMAX:
        x = tl.where(valid, logits, float("-inf"))
        mx = tl.max(x, 1)
        mx = tl.where(mx == float("-inf"), 0.0, mx)
        p = tl.exp(x - mx[:, None])
        den = tl.sum(p, 1)
        p = p / tl.where(den == 0.0, 1.0, den)[:, None]
        s = tl.sum(p, 0) / G
    else:
        s = tl.sum(tl.where(valid, logits, 0.0), 0) / G
    forced = (offs_n <= qb) & (offs_n < N) & ((offs_n < sink_blocks) | (offs_n > qb - local_blocks))
    cand = complete & (forced == 0)
    s = tl.where(cand, s + 0.0, float("-inf"))  # + 0.0 turns -0.0 into +0.0: equal scores have equal bits
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)  # ordered as the floats are
    key = key * 4294967296 + (BN - 1 - offs_n).to(tl.int64)  # equal scores: the lower block has the larger key
    rounds = tl.minimum(top_k, tl.sum(cand.to(tl.int32), 0))
    sel = forced.to(tl.int32)
    for _ in range(rounds):  # top-k by repeated max; ties: the lowest block index first
        best = tl.max(key, 0)
        hit = offs_n == (BN - 1 - (best & 4294967295))
        sel = tl.where(hit, 1, sel)
        key = tl.where(hit, -9223372036854775807, key)
    rank = tl.cumsum(sel, 0) - sel  # exclusive prefix sum: the slot of each selected block (ascending)
    count = tl.sum(sel, 0)
    row = (b * HKV + hk) * M + m
    tl.store(IDS + row * S + rank, offs_n, mask=sel > 0)
    offs_s = tl.arange(0, BSO)
    tl.store(IDS + row * S + offs_s, tl.full([BSO], -1, tl.int32), mask=(offs_s >= count) & (offs_s < S))
    tl.store(CNT + row, count)


def triton_select_blocks(qrep, kbar, *, top_k: int, sink_blocks: int, local_blocks: int, score: str, scale: float,
                         q_block: torch.Tensor | None):
    """Same arguments and result as blocks.select_blocks (checked there): (block_ids, block_counts) int32."""
    B, M, Hq, D = qrep.shape
    N, Hkv = kbar.shape[1], kbar.shape[2]
    G = Hq // Hkv
    S = min(N, sink_blocks + min(top_k, N) + local_blocks)
    ids = torch.empty(B, Hkv, M, S, dtype=torch.int32, device=qrep.device)
    cnt = torch.zeros(B, Hkv, M, dtype=torch.int32, device=qrep.device)
    if B * M * Hkv == 0 or S == 0:
        return ids, cnt
    prefill = q_block is None
    if prefill:
        q_block = torch.arange(M, device=qrep.device, dtype=torch.int32).expand(B, M)
    if qrep.stride(-1) != 1:
        qrep = qrep.contiguous()
    if kbar.stride(-1) != 1:
        kbar = kbar.contiguous()
    # Prefill: query block m reads blocks <= m only, so the query blocks go in ranges [lo, hi) of doubling
    # length, each launched with lanes for min(hi, N) blocks (about 2/3 of the lanes of one launch for all).
    ranges, lo = [], 0
    while lo < M:
        hi = M if not prefill else min(M, max(PREFILL_SPLIT_MIN, 2 * lo))
        ranges.append((lo, hi, N if not prefill else min(hi, N)))
        lo = hi
    BG, BD = triton.next_power_of_2(G), triton.next_power_of_2(D)
    for lo, hi, lanes in ranges:
        BN = triton.next_power_of_2(lanes)
        block_select_kernel[(hi - lo, B * Hkv)](
            qrep, kbar, q_block, ids, cnt,
            qrep.stride(0), qrep.stride(1), qrep.stride(2), kbar.stride(0), kbar.stride(1), kbar.stride(2),
            q_block.stride(0), q_block.stride(1),
            lo, M, N, Hkv, G, S, top_k, sink_blocks, local_blocks, float(scale),
            SOFTMAX=score == "softmax", BG=BG, BN=BN, BSO=triton.next_power_of_2(S),
            DC=max(1, min(BD, TILE // (BG * BN))), D=D, BD=BD, num_warps=4 if BG * BN <= 2048 else 8,
        )
    return ids, cnt
