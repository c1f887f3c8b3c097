"""Block top-k selection: which key blocks each query block attends to (NSA's selection branch, Yuan et
al. 2025, arXiv:2502.11089; SSA, Shen et al. 2025, arXiv:2511.20102; Kinetics, Sadhukhan et al. 2025,
arXiv:2506.05333).

Positions are cut into blocks of `block_size`; query block m holds positions [m·bs, (m+1)·bs) and is
represented by its FIRST query q_{m·bs} (so the selection is causal: it is fixed when the block's first
token arrives; a mean over the block's queries would let a token's keys depend on later queries).

    k̄_b = mean_{j in block b} k_j                                            (pooled key, complete blocks)
    s_{m,b} = mean_{g in GQA group} softmax_{b < m}(q_{m·bs, g} · k̄_b · scale)   score="softmax" (SSA)
            = mean_{g in GQA group} q_{m·bs, g} · k̄_b · scale                    score="logits"  (Kinetics)
    S_m = {b < sink_blocks} ∪ {m - local_blocks < b <= m} ∪ topk_b(s_{m,b} : b < m, not forced)

Only complete blocks before the query block are scored (b < m), so a pooled key never contains a token
after the block's first query. Ties: among equal scores the lower block index is chosen first (a stable
descending sort here; the same rule in the Triton kernel, triton/block_select.py). The selection is per
KV head (GQA groups share it) and is not differentiated (as in NSA). The result is the block-sparse
layout every implementation takes:

    block_ids    int32 [B, Hkv, M, S]   selected key blocks of query block m, ascending, -1 padded
    block_counts int32 [B, Hkv, M]      how many entries of block_ids[..., m, :] are real

so the own block m, always selected, is the last real entry (the kernels mask only that one causally).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.dispatch import resolve_impl, triton_interpret
from attnzoo.ops.common.precision import without_autocast


def pooled_block_keys(k: torch.Tensor, valid: torch.Tensor | None, block_size: int) -> torch.Tensor:
    """Mean key per block over valid slots: k [B, L, H, D] -> [B, ceil(L / bs), H, D] (valid [B, L] or None)."""
    B, L, H, D = k.shape
    nb = -(-L // block_size)
    pad = nb * block_size - L
    kz = k if valid is None else torch.where(valid[..., None, None], k, k.new_zeros(()))
    kz = F.pad(kz, (0, 0, 0, 0, 0, pad)).view(B, nb, block_size, H, D).sum(2)
    if valid is None and nb > 0:
        cnt = torch.full((nb,), float(block_size), dtype=k.dtype, device=k.device)
        cnt[-1] = L - (nb - 1) * block_size
        return kz / cnt[None, :, None, None]
    if valid is None:
        return kz
    cnt = F.pad(valid.to(k.dtype), (0, pad)).view(B, nb, block_size).sum(2).clamp_min(1)
    return kz / cnt[..., None, None]


def update_pooled_keys(kbar: torch.Tensor, K: torch.Tensor, total: torch.Tensor, completed: torch.Tensor,
                       block_size: int) -> torch.Tensor:
    """The pooled keys after one decode step, pooling only the block the step completed.

    kbar [B, n, H, D] the pooled keys before the step (n complete-block slots), K [B, L, H, D] the timeline
    after it, total [B] each row's token count after it, completed bool [B]: the row's new token ended block
    total // bs - 1. Returns [B, L // bs, H, D] (a new tensor; kbar is not modified): kbar grown with
    placeholder zeros, the completed rows' block set to the mean of its bs keys."""
    B, L, H, D = K.shape
    bs = block_size
    n = L // bs
    grow = n - kbar.shape[1]
    out = torch.cat([kbar.to(K.dtype), K.new_zeros(B, grow, H, D)], 1) if grow > 0 else kbar.to(K.dtype).clone()
    if n == 0:
        return out
    slot = (total // bs - 1).clamp(0, n - 1)  # [B]
    idx = (slot[:, None] * bs + torch.arange(bs, device=K.device)).clamp_max(L - 1)  # [B, bs]
    new = K.gather(1, idx[..., None, None].expand(B, bs, H, D)).sum(1) / float(bs)  # [B, H, D]
    rows = torch.arange(B, device=K.device)
    out[rows, slot] = torch.where(completed[:, None, None], new, out[rows, slot])
    return out


def block_queries(q: torch.Tensor, block_size: int) -> torch.Tensor:
    """The representative (first) query of each query block: q [B, T, H, D] -> [B, ceil(T / bs), H, D]."""
    return q[:, ::block_size]


SELECT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SELECT_MAX_LANES = 16384  # next_pow2(G) * next_pow2(N): the score rows one Triton program holds
# impl="auto" takes the Triton selection on CUDA where it was measured faster than the torch one (one H100,
# bf16, H=16, D=128, 2026-12-07, benchmarks/results/sparse_selection_h100/: every selected set equal to the
# torch selection's but one row of 16384, an exact tie). Its cost grows with rows · rounds · lanes
# (B·Hkv·M programs, each min(top_k, N) max-reductions over next_pow2(N) lanes): at 1.0e9 (64k tokens,
# blocks of 64, Hkv=16, top_k 61) it took 2.79 ms against torch's 1.55; at 2.6e8 and below (GQA at 64k,
# blocks of 128, 2k-16k, decode at 128k) it was 1.3x-33x faster. Above SELECT_TRITON_MAX_WORK "auto" keeps
# torch. impl="triton" runs it at any size.
SELECT_TRITON_AUTO = True
SELECT_TRITON_MAX_WORK = 5e8


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def triton_select_preferred(qrep: torch.Tensor, kbar: torch.Tensor, top_k: int, q_block) -> bool:
    """impl="auto"'s choice of the Triton selection: on, supported, and rows · rounds · lanes within
    SELECT_TRITON_MAX_WORK (the comment above SELECT_TRITON_AUTO has the measurements)."""
    if not (SELECT_TRITON_AUTO and triton_select_supported(qrep, kbar)):
        return False
    B, M, N, Hkv = qrep.shape[0], qrep.shape[1], kbar.shape[1], kbar.shape[2]
    lanes = _pow2(N if q_block is not None else min(M, N))
    return B * Hkv * M * min(top_k, N) * lanes <= SELECT_TRITON_MAX_WORK


def triton_select_supported(qrep: torch.Tensor, kbar: torch.Tensor) -> bool:
    """Inputs the Triton selection takes: float16/bfloat16/float32, D <= 256, next_pow2(G)·next_pow2(N) <= 16384
    (e.g. G = 1 up to 16384 blocks: 1M tokens in blocks of 64)."""
    G = qrep.shape[2] // max(1, kbar.shape[2])
    return (qrep.dtype in SELECT_DTYPES and kbar.dtype in SELECT_DTYPES and qrep.shape[-1] <= 256
            and _pow2(G) * _pow2(kbar.shape[1]) <= SELECT_MAX_LANES)


@without_autocast  # scores in float32 whatever the caller's autocast
def select_blocks(
    qrep: torch.Tensor, kbar: torch.Tensor, *, top_k: int, sink_blocks: int = 0, local_blocks: int = 1,
    score: str = "softmax", scale: float | None = None, q_block: torch.Tensor | None = None, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k key blocks per query block (see the module docstring).

    qrep [B, M, Hq, D] representative queries; kbar [B, N, Hkv, D] pooled keys; q_block [B, M] the
    query block index of each representative (default m: prefill; decode passes (len - 1) // bs).
    Returns block_ids int32 [B, Hkv, M, S] (ascending, -1 padded), block_counts int32 [B, Hkv, M],
    S = min(N, sink_blocks + min(top_k, N) + local_blocks). Scores in float32 (float64 for float64 inputs).
    impl: "torch" / "reference" (this file: the reference), "triton" (one fused kernel,
    triton/block_select.py: same rule, same ties; scores may differ from torch's in the last bits, so two
    blocks whose scores are within rounding of each other may swap), "auto" (Triton on CUDA where supported
    and measured faster: triton_select_preferred).
    """
    if score not in ("softmax", "logits"):
        raise ValueError(f'score must be "softmax" (SSA) or "logits" (Kinetics), got {score!r}')
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if sink_blocks < 0 or local_blocks < 1:
        raise ValueError(f"need sink_blocks >= 0 and local_blocks >= 1 (the own block), got {sink_blocks}, "
                         f"{local_blocks}")
    if qrep.dim() != 4 or kbar.dim() != 4 or qrep.shape[-1] != kbar.shape[-1] or qrep.shape[2] % kbar.shape[2]:
        raise ValueError(f"qrep [B, M, Hq, D] and kbar [B, N, Hkv, D] with Hq % Hkv == 0, got "
                         f"{tuple(qrep.shape)} and {tuple(kbar.shape)}")
    B, M, Hq, D = qrep.shape
    if q_block is not None and (q_block.shape != (B, M) or q_block.is_floating_point()):
        raise ValueError(f"q_block must be an integer tensor [B, M] = [{B}, {M}], got {q_block.dtype} "
                         f"{tuple(q_block.shape)}")
    scale = D**-0.5 if scale is None else float(scale)
    kw = {"top_k": top_k, "sink_blocks": sink_blocks, "local_blocks": local_blocks, "score": score, "scale": scale,
          "q_block": q_block}
    impl = resolve_impl(impl, qrep, kbar, q_block, triton_supported=triton_select_preferred(qrep, kbar, top_k, q_block))
    if impl != "triton":
        return _select_blocks_torch(qrep, kbar, **kw)
    if not triton_select_supported(qrep, kbar):
        raise ValueError(f"the Triton selection takes float16/bfloat16/float32 inputs, head dim <= 256 and "
                         f"next_pow2(G) * next_pow2(N) <= 16384; got {qrep.dtype}/{kbar.dtype}, D={D}, "
                         f"G={Hq // kbar.shape[2]}, N={kbar.shape[1]} (impl='torch' takes any)")
    if not (qrep.is_cuda or triton_interpret()):
        raise ValueError("the Triton selection needs CUDA tensors (or TRITON_INTERPRET=1)")
    from attnzoo.ops.sparse.triton.block_select import triton_select_blocks

    return triton_select_blocks(qrep, kbar, **kw)


@without_autocast
def candidate_scores(qrep, kbar, *, sink_blocks: int = 0, local_blocks: int = 1, score: str = "softmax",
                     scale: float | None = None, q_block: torch.Tensor | None = None) -> torch.Tensor:
    """The scores the top-k ranks: s [B, Hkv, M, N] float32 (float64 for float64 inputs), -inf where a block is
    no candidate (not complete before the query block, or forced as sink/local). Same arguments as select_blocks."""
    B, M, Hq, D = qrep.shape
    N, Hkv = kbar.shape[1], kbar.shape[2]
    G = Hq // Hkv
    dev = qrep.device
    ct = torch.float64 if qrep.dtype == torch.float64 else torch.float32
    scale = D**-0.5 if scale is None else scale
    if q_block is None:
        q_block = torch.arange(M, device=dev).expand(B, M)
    qb = q_block.to(torch.long)[:, None, :, None]  # [B, 1, M, 1]
    blocks = torch.arange(N, device=dev)
    forced = (blocks <= qb) & ((blocks < sink_blocks) | (blocks > qb - local_blocks))  # [B, 1, M, N]
    logits = torch.einsum("bmkgd,bnkd->bkgmn", qrep.to(ct).view(B, M, Hkv, G, D), kbar.to(ct)) * scale
    complete = (blocks < qb)[:, :, None]  # [B, 1, 1, M, N]
    if score == "softmax":
        p = torch.softmax(logits.masked_fill(~complete, float("-inf")), dim=-1)
        s = torch.where(complete, p, p.new_zeros(())).mean(2)
    else:
        s = logits.mean(2)
    return s.masked_fill(~(complete[:, :, 0] & ~forced), float("-inf"))  # [B, Hkv, M, N]


def _select_blocks_torch(qrep, kbar, *, top_k, sink_blocks, local_blocks, score, scale, q_block):
    """The reference selection (select_blocks' torch path)."""
    B, M = qrep.shape[:2]
    N, Hkv = kbar.shape[1], kbar.shape[2]
    dev = qrep.device
    if q_block is None:
        q_block = torch.arange(M, device=dev).expand(B, M)
    qb = q_block.to(torch.long)[:, None, :, None]  # [B, 1, M, 1]
    kk = min(top_k, N)
    parts = []
    if kk > 0:
        s = candidate_scores(qrep, kbar, sink_blocks=sink_blocks, local_blocks=local_blocks, score=score,
                             scale=scale, q_block=q_block)
        vals, top = torch.sort(s, dim=-1, descending=True, stable=True)  # equal scores: lower block first
        vals, top = vals[..., :kk], top[..., :kk]
        parts.append(torch.where(vals > float("-inf"), top, torch.full_like(top, -1)))
    sink = torch.arange(sink_blocks, device=dev).expand(B, 1, M, sink_blocks)
    sink = torch.where((sink <= qb) & (sink <= qb - local_blocks), sink, torch.full_like(sink, -1))
    local = qb - local_blocks + 1 + torch.arange(local_blocks, device=dev)
    local = torch.where(local >= 0, local, torch.full_like(local, -1))
    parts += [sink.expand(B, Hkv, M, -1), local.expand(B, Hkv, M, -1)]
    ids = torch.cat(parts, -1)
    S = min(N, ids.shape[-1])
    ids = torch.sort(torch.where(ids >= 0, ids, torch.full_like(ids, N)), dim=-1).values[..., :S]
    counts = (ids < N).sum(-1)
    ids = torch.where(ids < N, ids, torch.full_like(ids, -1))
    return ids.to(torch.int32).contiguous(), counts.to(torch.int32).contiguous()


def selected_block_mask(block_ids: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """bool [B, Hkv, M, n_blocks]: True where query block m selected key block n."""
    B, Hkv, M, _ = block_ids.shape
    sel = torch.zeros(B, Hkv, M, n_blocks + 1, dtype=torch.bool, device=block_ids.device)
    ids = block_ids.long()
    sel.scatter_(3, torch.where(ids >= 0, ids, torch.full_like(ids, n_blocks)), True)
    return sel[..., :n_blocks]


def allowed_keys(block_ids: torch.Tensor, T: int, block_size: int) -> torch.Tensor:
    """Dense mask of a block selection: bool [B, Hkv, T, T], query i sees key j iff j <= i and block(j) in
    S_{block(i)}. For references and for building other libraries' masks; O(T^2) memory."""
    n = -(-T // block_size)
    sel = selected_block_mask(block_ids, n)
    blk = torch.arange(T, device=block_ids.device) // block_size
    allowed = sel[:, :, blk][:, :, :, blk]
    return allowed & torch.ones(T, T, dtype=torch.bool, device=block_ids.device).tril()
