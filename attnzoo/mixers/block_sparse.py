"""Block-sparse causal attention: per-query-block top-k key blocks (NSA selection branch, Yuan et al. 2025,
arXiv:2502.11089; SSA, Shen et al. 2025, arXiv:2511.20102; Kinetics, Sadhukhan et al. 2025,
arXiv:2506.05333).

    k̄_b = mean(k_j : j in block b)                                   (block_size tokens, real tokens only)
    S_m = topk_{b < m}( mean_group softmax_b(q_{m·bs} · k̄_b / sqrt(d)) ) ∪ sink blocks ∪ local blocks
    y_i = W_o softmax_j(q_i · k_j / sqrt(d) | j <= i, block(j) in S_{block(i)}) v_j

x [B, T, d_model] -> y [B, T, d_model]. Query block m (positions [m·bs, (m+1)·bs)) chooses once, with
its first query q_{m·bs}, among the complete blocks before it, so the selection is causal and every
query of the block reads the same blocks (what a FlashAttention-style kernel needs: ops/sparse).
Scores: `score="softmax"` is SSA's (softmax over block scores, averaged over the GQA group);
`score="logits"` is Kinetics' (raw logits averaged over the group). The own block is always read;
`n_sink` first tokens and the last `window` tokens are rounded up to whole blocks (sink blocks
ceil(n_sink / bs), local blocks 1 + ceil((window - 1) / bs)), so those tokens are always visible;
`top_k` more blocks are chosen. Blocks are counted over real tokens (positions skip padding), so
padding changes neither the selection nor the outputs.

Training modes (`mode`, a plain attribute like `top_k`):
- "sparse" / "full": always the block-sparse / dense causal output.
- "mixed" (SSA): in training each forward computes both, picks one with probability 0.5 to feed
  o_proj, and sets `aux_loss = 10 * (SmoothL1(o_f, sg(o_s)) + SmoothL1(sg(o_f), o_s))` over real
  tokens; in eval "mixed" uses the sparse output (SSA's default inference mode).
The state is a KV cache on the position timeline (index = position), so decoding reads blocks directly,
plus the first query of the current block (`block_q`), which made that block's selection, and the pooled
keys of the complete blocks (`kbar`): a decode step pools only the block its token completes
(`update_pooled_keys`), a longer continuation only the blocks after those complete in every row, not the
whole cache.
On CUDA (impl="auto") the selection is one fused Triton kernel (ops/sparse/triton/block_select.py) and the
selected blocks are read by the Triton kernels (forward, backward, decode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnzoo.mixers.layers import apply_rope, token_positions
from attnzoo.mixers.softmax import KVCacheState, SoftmaxAttention, kv_cache_bytes
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.softmax import softmax_attention
from attnzoo.ops.sparse import (
    block_sparse_attention,
    block_sparse_decode,
    pooled_block_keys,
    select_blocks,
    update_pooled_keys,
)
from attnzoo.registry import Card, Paper, register

MODES = ("sparse", "full", "mixed")


@dataclass
class BlockKVState(KVCacheState):
    """KV cache where slot j holds the key/value at real position j (valid = j < seen); block_q [B, Hq, D]
    is the first query of the block holding position `seen` (it chose that block's keys; unused, zero,
    when `seen` starts a new block); kbar [B, L // bs, Hkv, D] the pooled (mean) keys of the blocks complete
    in the timeline (entry j of a row is exact when j < seen // bs; later entries are placeholders)."""

    block_q: torch.Tensor | None = None
    kbar: torch.Tensor | None = None


class BlockSparseAttention(SoftmaxAttention):
    state_class = BlockKVState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None, head_dim: int | None = None,
        block_size: int = 16, top_k: int = 16, n_sink: int = 0, window: int | None = None,
        mode: str = "sparse", score: str = "softmax", rope: bool = True, qk_norm: bool = False,
        impl: str = "auto",
    ):
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=True,
                         rope=rope, qk_norm=qk_norm, impl=impl)
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if n_sink < 0:
            raise ValueError(f"n_sink must be >= 0, got {n_sink}")
        if score not in ("softmax", "logits"):
            raise ValueError(f'score must be "softmax" or "logits", got {score!r}')
        self.window = None  # the parent's window means "sliding window only"; ours is added to the blocks
        self.local_window = window
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.block_size, self.top_k, self.n_sink, self.mode, self.score = block_size, top_k, n_sink, mode, score

    def block_budget(self) -> tuple[int, int]:
        """(sink_blocks, local_blocks): n_sink and window rounded up to whole blocks."""
        bs = self.block_size
        local = 1 if self.local_window is None else 1 + -(-(self.local_window - 1) // bs)
        return -(-self.n_sink // bs), local

    def _check_attrs(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {self.top_k!r}")

    def check_state(self, state: BlockKVState):
        super().check_state(state)
        want = (state.k.shape[0], state.k.shape[1] // self.block_size, self.n_kv_heads, self.head_dim)
        if state.kbar is not None and tuple(state.kbar.shape) != want:
            raise ValueError(f"block_sparse state's pooled keys must be [B, L // block_size, Hkv, head_dim] = "
                             f"{list(want)}, got {tuple(state.kbar.shape)}")

    def _timeline(self, t, pos, real, seen0, total, old):
        """Place the new real tokens' t [B, T, H, D] at their positions after the cached ones."""
        B, T, H, D = t.shape
        L = int(total.max())
        buf = t.new_zeros(B, L + 1, H, D)
        if old is not None and old.shape[1] > 0:
            buf[:, : old.shape[1]] = old.to(t.dtype)
        idx = torch.where(real, pos, torch.full_like(pos, L))  # padded tokens go to a dropped slot
        buf = buf.scatter(1, idx[..., None, None].expand(B, T, H, D), t)
        return buf[:, :L]

    def _forward(self, x, mask, state, return_state):
        self._check_attrs()
        B, T, _ = x.shape
        hd = self.head_dim
        q, _ = self.split_q(self.q_proj(x))
        k = self.k_proj(x).view(B, T, self.n_kv_heads, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        seen0 = torch.zeros(B, dtype=torch.long, device=x.device) if state is None else state.seen
        pos = token_positions(mask, B, T, seen0, x.device)
        if self.rope:
            q, k = apply_rope(q, pos, self.rope_theta), apply_rope(k, pos, self.rope_theta)
        total = seen0 + real.long().sum(1)
        plain = state is None and mask is None  # positions 0..T-1: the inputs are the timeline
        K = k if plain else self._timeline(k, pos, real, seen0, total, None if state is None else state.k)
        V = v if plain else self._timeline(v, pos, real, seen0, total, None if state is None else state.v)
        L = K.shape[1]
        kpos = torch.arange(L, device=x.device).expand(B, L)
        valid = kpos < total[:, None]

        mode = self.mode
        if mode == "mixed" and not self.training:
            mode = "sparse"
        o_f = o_s = None
        block_q = q.new_zeros(B, self.n_heads, hd)
        kbar = None
        if mode in ("full", "mixed"):
            o_f = softmax_attention(q, K, V, causal=True, q_pos=None if plain else pos, k_pos=None if plain else kpos,
                                    key_mask=None if plain else valid, impl=self.impl)
        if mode in ("sparse", "mixed"):
            o_s, block_q, kbar = self.sparse_attention(q, K, V, pos, real, valid, seen0, total, state, plain)
        self.aux_loss = None
        if mode == "mixed":
            w = real[..., None, None]
            n = (real.sum() * o_f.shape[2] * o_f.shape[3]).clamp_min(1)
            o_fr, o_sr = (torch.where(w, o, o.new_zeros(())) for o in (o_f, o_s))
            la = F.smooth_l1_loss(o_fr, o_sr.detach(), reduction="sum") / n
            lb = F.smooth_l1_loss(o_fr.detach(), o_sr, reduction="sum") / n
            self.aux_loss = 10.0 * (la + lb)
            o = o_f if bool(torch.rand(()) < 0.5) else o_s
        else:
            o = o_f if mode == "full" else o_s
        y = self.o_proj(o.reshape(B, T, self.n_heads * hd))
        new_state = None
        if return_state:
            if kbar is None:  # mode "full": pooled keys kept all the same, so a later sparse step finds them
                kbar = pooled_block_keys(K, valid, self.block_size)[:, : L // self.block_size]
            new_state = BlockKVState(k=K, v=V, valid=valid, kpos=kpos, seen=total, block_q=block_q.detach(),
                                     kbar=kbar.detach())
        return y, new_state

    def _select(self, qrep, kbar, q_block=None):
        sink, local = self.block_budget()
        with torch.no_grad():
            return select_blocks(qrep.detach(), kbar.detach(), top_k=self.top_k, sink_blocks=sink,
                                 local_blocks=local, score=self.score, q_block=q_block,
                                 impl="torch" if self.impl == "reference" else self.impl)

    def sparse_attention(self, q, K, V, pos, real, valid, seen0, total, state, plain):
        """Block-sparse output o [B, T, Hq, D] at the new tokens, the next state's block_q and the pooled keys
        of the complete blocks [B, L // bs, Hkv, D]."""
        B, T, Hq, D = q.shape
        bs = self.block_size
        L = K.shape[1]
        old_q = None if state is None or state.block_q is None else state.block_q.to(q.dtype)
        if T == 1 and state is not None and state.kbar is not None:  # one token: pool only the block it completes
            kdone = update_pooled_keys(state.kbar, K, total, real[:, 0] & (total % bs == 0), bs)
            kbar = F.pad(kdone, (0, 0, 0, 0, 0, -(-L // bs) - kdone.shape[1]))  # + the open block (never scored)
        elif state is not None and state.kbar is not None and state.kbar.shape[1] > 0 and not compiling():
            i0 = min(int(seen0.min()) // bs, state.kbar.shape[1])  # blocks complete in every row before the call
            tail = pooled_block_keys(K[:, i0 * bs:], valid[:, i0 * bs:], bs)
            kbar = torch.cat([state.kbar[:, :i0].to(K.dtype), tail], 1)
            kdone = kbar[:, : L // bs]
        else:  # no state (or compiled: no host read): pool the whole timeline
            kbar = pooled_block_keys(K, valid, bs)
            kdone = kbar[:, : L // bs]
        if T == 1 and old_q is not None and bool(real.all()):  # decoding one token: the decode kernel
            starts = (seen0 % bs == 0)[:, None, None]
            qrep = torch.where(starts, q[:, 0], old_q)
            ids, cnt = self._select(qrep[:, None], kbar, q_block=(seen0 // bs)[:, None])
            o = block_sparse_decode(q[:, 0], K, V, ids[:, :, 0], cnt[:, :, 0], total, block_size=bs,
                                    impl=self.impl)
            return o[:, None], qrep, kdone
        Qt = q if plain else self._timeline(q, pos, real, seen0, total, None)  # [B, L, Hq, D]
        M = -(-L // bs)
        qrep = Qt[:, ::bs].detach().clone()  # [B, M, Hq, D]: the first query of every block
        rows = torch.arange(B, device=q.device)
        if old_q is not None:  # the block holding position seen0 started in an earlier call
            started = seen0 % bs != 0
            mb = (seen0 // bs).clamp_max(M - 1)
            qrep[rows, mb] = torch.where(started[:, None, None], old_q, qrep[rows, mb])
        ids, cnt = self._select(qrep, kbar)
        o = block_sparse_attention(Qt, K, V, ids, cnt, block_size=bs, impl=self.impl)
        if not plain:
            o = torch.gather(o, 1, pos.clamp_max(L - 1)[..., None, None].expand(B, T, Hq, o.shape[-1]))
        nb = total // bs
        block_q = torch.where((total % bs != 0)[:, None, None], qrep[rows, nb.clamp_max(M - 1)],
                              q.new_zeros(()))
        return o, block_q, kdone

    def extra_repr(self):
        return (f"{super().extra_repr()}, block_size={self.block_size}, top_k={self.top_k}, "
                f"n_sink={self.n_sink}, window={self.local_window}, mode={self.mode!r}, score={self.score!r}")


def block_sparse_state_bytes(d_model: int, n_heads: int, seq_len: int, n_kv_heads: int | None = None,
                             head_dim: int | None = None, block_size: int = 16) -> int:
    """The whole KV cache (kv_cache_bytes), block_q [H, head_dim] fp32 (the open block's first query) and the
    pooled keys of the complete blocks [seq_len // block_size, Hkv, head_dim] fp32."""
    hd = d_model // n_heads if head_dim is None else head_dim
    hkv = n_heads if n_kv_heads is None else n_kv_heads
    return kv_cache_bytes(d_model, n_heads, seq_len, n_kv_heads, hd) + n_heads * hd * 4 + \
        (seq_len // block_size) * hkv * hd * 4


def tokens_read_per_step(seq_len: int, block_size: int = 16, top_k: int = 16, n_sink: int = 0,
                         window: int | None = None) -> int:
    """Cached tokens one decode step reads (cost model): whole blocks, the top_k chosen ones plus the sink
    blocks ceil(n_sink / bs) and the local blocks 1 + ceil((window - 1) / bs) (the own block among them),
    at most L."""
    local = 1 if window is None else 1 + -(-(window - 1) // block_size)
    return min(seq_len, block_size * (top_k + -(-n_sink // block_size) + local))


@register(
    "block_sparse",
    card=Card(
        title="Block top-k sparse attention (NSA selection / SSA / Kinetics)",
        paper=Paper("SSA: Sparse Sparse Attention by Aligning Full and Sparse Attention Outputs in Feature Space",
                    "Shen et al.", 2025, "2511.20102"),
        family="sparse",
        complexity="O(T (k·bs + T/bs) d)",
        state_bytes=block_sparse_state_bytes,
        tokens_read_per_step=tokens_read_per_step,
        causal=True,
        example_kwargs={"n_heads": 4, "n_kv_heads": 2, "block_size": 4, "top_k": 2, "n_sink": 1, "window": 2},
    ),
)
class BlockSparse(BlockSparseAttention):
    """Block top-k sparse attention; see the module docstring."""
