"""Measured decode cost of one attention layer at context L: the side of Kinetics' model that a clock reads.

Kinetics (Sadhukhan et al. 2025, arXiv:2506.05333) prices a generated token in eFLOPs = C_comp + E·C_mem
(attnzoo.bench.cost). This module times what those formulas describe, one decode step of a batch of B
sequences whose caches already hold L tokens:

- dense:        o = softmax(q·K^T·scale)·V over all L cached keys (attnzoo.ops.softmax, SDPA on GPU);
- block top-k:  s_b = mean_{g in GQA group} q_g·k̄_b (Kinetics' logits score over the pooled key of each
                complete block, kept beside the KV cache as a decoder keeps it), the top_k best blocks and
                the most recent one per kv head attended (attnzoo.ops.sparse: select_blocks,
                block_sparse_decode);
- parameters:   the layer's linear maps for the B new tokens (q/k/v/o projections, SwiGLU MLP): 2P FLOPs
                per token, P weights read once per step for the whole batch.

`device_rates` measures the machine's matmul FLOP/s and copy bandwidth, whose ratio is the E of this
machine (Kinetics sets E = 562.5 for its B200 target).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from attnzoo.ops.sparse import block_sparse_decode, select_blocks


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, *, device, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall seconds of fn() over `repeats` calls after `warmup` (device synchronised around each)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def cache_pooled_keys(k: torch.Tensor, block_size: int) -> torch.Tensor:
    """Pooled keys of a full cache, k [B, L, Hkv, D] (L a multiple of block_size) -> [B, L // bs, Hkv, D]:
    ops.sparse.pooled_block_keys without a validity mask, read from a view (no copy of a 128k cache)."""
    B, L, H, D = k.shape
    if L % block_size:
        raise ValueError(f"the cache length {L} must be a multiple of block_size={block_size}")
    return k.view(B, L // block_size, block_size, H, D).mean(2)


def block_topk_decode(q, k, v, kbar, *, block_size: int, top_k: int, local_blocks: int = 1, score: str = "logits",
                      impl: str = "auto"):
    """One decode step of block top-k attention with the library's ops: q [B, Hq, D] is the newest token's
    query, at position L - 1 (its key is the cache's last; L = k.shape[1] a multiple of block_size), k, v
    [B, L, Hkv, D] the cache, kbar [B, L // bs, Hkv, D] its pooled keys (attnzoo.ops.sparse.pooled_block_keys, kept
    beside the cache). ops.sparse.select_blocks picks top_k blocks plus `local_blocks` most recent ones,
    block_sparse_decode attends to them (Triton split-K on CUDA). Returns o [B, Hq, D]."""
    B, L = k.shape[0], k.shape[1]
    if L % block_size:
        raise ValueError(f"the cache length {L} must be a multiple of block_size={block_size}")
    q_block = torch.full((B, 1), L // block_size - 1, dtype=torch.long, device=q.device)
    ids, cnt = select_blocks(q[:, None], kbar, top_k=top_k, local_blocks=local_blocks, score=score, q_block=q_block)
    lens = torch.full((B,), L, dtype=torch.long, device=q.device)
    return block_sparse_decode(q, k, v, ids[:, :, 0], cnt[:, :, 0], lens, block_size=block_size, impl=impl)


class DecoderLayerParams(torch.nn.Module):
    """The linear maps of one decoder layer (no attention): fused q/k/v, o, SwiGLU MLP."""

    def __init__(self, d_model: int, *, n_heads: int, n_kv_heads: int, head_dim: int, mlp_hidden: int):
        super().__init__()
        self.qkv = torch.nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=False)
        self.o = torch.nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.w13 = torch.nn.Linear(d_model, 2 * mlp_hidden, bias=False)
        self.w2 = torch.nn.Linear(mlp_hidden, d_model, bias=False)
        self.attn_width = n_heads * head_dim

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x):
        qkv = self.qkv(x)
        h = x + self.o(qkv[..., : self.attn_width])
        a, b = self.w13(h).chunk(2, dim=-1)
        return h + self.w2(F.silu(a) * b)


def device_rates(device, dtype, *, n: int | None = None, copy_bytes: int | None = None) -> tuple[float, float]:
    """(matmul FLOP/s, copy bytes/s) achieved on `device` in `dtype`: an n x n matmul, and a clone of
    copy_bytes (read + write counted)."""
    cuda = torch.device(device).type == "cuda"
    n = n or (8192 if cuda else 1024)
    copy_bytes = copy_bytes or ((1 << 30) if cuda else (64 << 20))
    a = torch.randn(n, n, device=device, dtype=dtype)
    t = time_call(lambda: a @ a, device=device, repeats=5)
    flops = 2 * n**3 / t
    x = torch.empty(copy_bytes // (torch.finfo(dtype).bits // 8), device=device, dtype=dtype)
    t = time_call(lambda: x.clone(), device=device, repeats=5)
    return flops, 2 * x.numel() * x.element_size() / t
