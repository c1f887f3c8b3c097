"""Native Sparse Attention (NSA; Yuan et al. 2025, "Native Sparse Attention: Hardware-Aligned and Natively
Trainable Sparse Attention", arXiv:2502.11089): three attention branches per query, mixed by gates.

    k̃_i, ṽ_i = φ_K(k_{i·d : i·d+l}), φ_V(v_{i·d : i·d+l})       compression blocks, length l, stride d
    o_cmp = Σ_i softmax_i(q_t·k̃_i / sqrt(D) | i·d + l - 1 <= t) ṽ_i                (complete blocks only)
    o_slc = attention over the selection blocks I_t (length l'): the own block and the n_local - 1 before it,
            the first n_init blocks, and the top_n others ranked by p_cmp summed onto the blocks and over
            the GQA group (ops/sparse/token_select.py; not differentiated, as in the paper)
    o_win = attention over the last `window` tokens
    y_t = W_o Σ_c sigmoid(x_t W_g)_c ⊙ o_c                               c in (cmp, slc, win), per head

x [B, T, d_model] -> y [B, T, d_model]; q [B, T, Hq, D] is shared, each branch has its own keys and
values [B, T, Hkv, D] (GQA: Hkv divides Hq), RoPE on q and on the keys before compression. The paper's
defaults: l = 32, d = 16, l' = 64, n = 16 selected blocks (here top_n = 13 + n_init 1 + n_local 2),
window 512. φ is a two-layer MLP over the block's l keys plus a learned intra-block position embedding,
with the block mean added (so it starts near mean pooling). Every query token selects its own blocks
(the paper's per-token selection), so the query-block layout of ops/sparse/blocks.py and its Triton
kernels does not apply: the selected branch runs on ops/sparse/token_select.py (a masked SDPA call while
the [T, L] scores are small, else each query gathers its blocks; torch only, no Triton kernel yet).

Left out of the paper: its Triton kernel (group-centric loading), the exact index weighting of its Eq. 9
(we give each compression block's probability to the selection blocks it overlaps, by the share of its
tokens; the same as the paper's when l = d = l'), and its MLP's exact shape (unspecified there).
State: the selection branch's keys/values on the position timeline (slot j = real position j), the last
`window` window keys/values and the last l compression keys/values of each row (all a later token can
still read), and the compressed k̃, ṽ of the completed blocks, recomputed only for newly completed ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.mixers.layers import apply_rope, token_positions
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.softmax import softmax_attention
from attnzoo.ops.sparse.token_select import (
    compressed_attention,
    compression_windows,
    n_compressed,
    select_token_blocks,
    token_sparse_attention,
)
from attnzoo.registry import Card, Paper, register

BRANCHES = ("cmp", "slc", "win")


@dataclass
class NSAState(MixerState):
    """k_slc, v_slc [B, L, Hkv, D] (slot j = real position j, valid = j < seen, L = max(seen)); the tails
    k_cmp, v_cmp [B, min(l, L), Hkv, D] and k_win, v_win [B, min(window, L), Hkv, D]: a row's last real
    tokens, the newest in the last slot (zeros before position 0); seen [B]; the compressed kc, vc
    [B, Nc, Hkv, D] of the blocks complete in L slots (a row's blocks past its own seen are placeholders,
    recomputed by the next call)."""

    k_cmp: torch.Tensor
    v_cmp: torch.Tensor
    k_slc: torch.Tensor
    v_slc: torch.Tensor
    k_win: torch.Tensor
    v_win: torch.Tensor
    seen: torch.Tensor
    kc: torch.Tensor
    vc: torch.Tensor


class BlockCompressor(nn.Module):
    """φ: the l vectors of a block [..., l, H, D] -> one [..., H, D]: mean + W2 silu(W1 vec(x + pe))."""

    def __init__(self, block_len: int, head_dim: int, hidden: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(block_len, head_dim) * 0.02)  # intra-block position embedding
        self.fc1 = nn.Linear(block_len * head_dim, hidden)
        self.fc2 = nn.Linear(hidden, head_dim)

    def forward(self, blocks):  # [B, N, l, H, D]
        B, N, ln, H, D = blocks.shape
        z = (blocks + self.pos[:, None, :].to(blocks.dtype)).permute(0, 1, 3, 2, 4).reshape(B, N, H, ln * D)
        return blocks.mean(2) + self.fc2(F.silu(self.fc1(z)))


def _timeline(t, pos, real, L, old, seen0=None):
    """This call's t [B, T, H, D] placed at its real positions after the cached `old`, on L slots: old is the
    timeline's start [B, L0, H, D], or with seen0 [B] given a tail (row b's last old.shape[1] tokens, ending
    at position seen0[b] - 1; the slots before the tail stay zero)."""
    B, T, H, D = t.shape
    buf = t.new_zeros(B, L + 1, H, D)
    if old is not None and old.shape[1] > 0 and seen0 is None:
        buf[:, : old.shape[1]] = old.to(t.dtype)
    elif old is not None and old.shape[1] > 0:
        at = seen0[:, None] - old.shape[1] + torch.arange(old.shape[1], device=t.device)
        at = torch.where(at >= 0, at, torch.full_like(at, L))
        buf = buf.scatter(1, at[..., None, None].expand(-1, -1, H, D), old.to(t.dtype))
    idx = torch.where(real, pos, torch.full_like(pos, L))  # padded tokens go to a dropped slot
    return buf.scatter(1, idx[..., None, None].expand(B, T, H, D), t)[:, :L]


def _tail(t, total, keep):
    """Row b's last `keep` slots before total[b] of the timeline t [B, L, H, D] (zeros before slot 0)."""
    at = total[:, None] - keep + torch.arange(keep, device=t.device)
    got = torch.gather(t, 1, at.clamp_min(0)[..., None, None].expand(-1, -1, t.shape[2], t.shape[3]))
    return torch.where((at >= 0)[..., None, None], got, got.new_zeros(()))


def nsa_state_bytes(d_model: int, n_heads: int, seq_len: int, n_kv_heads: int | None = None,
                    head_dim: int | None = None, cmp_block: int = 32, cmp_stride: int = 16, window: int = 512) -> int:
    """fp32 keys and values: the selection branch's for every token, the last min(window, T) window ones,
    the last min(l, T) compression ones and the (T - l) // d + 1 compressed blocks; the int64 `seen`."""
    hd = d_model // n_heads if head_dim is None else head_dim
    hkv = n_heads if n_kv_heads is None else n_kv_heads
    vecs = seq_len + min(window, seq_len) + min(cmp_block, seq_len) + n_compressed(seq_len, cmp_block, cmp_stride)
    return 2 * vecs * hkv * hd * 4 + 8


def tokens_read_per_step(seq_len: int, cmp_block: int = 32, cmp_stride: int = 16, sel_block: int = 64,
                         top_n: int = 13, n_init: int = 1, n_local: int = 2, window: int = 512) -> int:
    """Vectors one decode step reads: the compressed blocks, the selected blocks' tokens and the window."""
    sel = min(seq_len, sel_block * (top_n + n_init + n_local))
    return n_compressed(seq_len, cmp_block, cmp_stride) + sel + min(seq_len, window)


NSA = Paper("Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse Attention", "Yuan et al.",
            2025, "2502.11089")


@register(
    "nsa",
    card=Card(
        title="Native Sparse Attention (gated compressed, selected and sliding-window branches)",
        paper=NSA,
        family="sparse",
        complexity="O(T (T/d + n·l' + w) D)",
        state_bytes=nsa_state_bytes,
        tokens_read_per_step=tokens_read_per_step,
        causal=True,
        example_kwargs={"n_heads": 4, "n_kv_heads": 2, "cmp_block": 4, "cmp_stride": 2, "sel_block": 4,
                        "top_n": 1, "n_init": 1, "n_local": 1, "window": 4},
        claim="Compressed coarse attention, top-n fine-grained blocks chosen from its scores and a sliding "
              "window, gated and trained end to end, match or beat full attention on general, long-context and "
              "reasoning benchmarks with large speedups at 64k tokens.",
    ),
)
class NativeSparseAttention(Mixer):
    state_class = NSAState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None, head_dim: int | None = None,
        cmp_block: int = 32, cmp_stride: int = 16, sel_block: int = 64, top_n: int = 13, n_init: int = 1,
        n_local: int = 2, window: int = 512, cmp_hidden: int | None = None, rope: bool = True,
        rope_theta: float = 10000.0, bias: bool = False, impl: str = "auto",
    ):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = hd = check_heads(d_model, n_heads, head_dim)
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if self.n_kv_heads <= 0 or n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if cmp_stride < 1 or cmp_block < cmp_stride:
            raise ValueError(f"need 1 <= cmp_stride <= cmp_block, got cmp_block={cmp_block}, cmp_stride={cmp_stride}")
        for name, val, low in (("sel_block", sel_block, 1), ("top_n", top_n, 0), ("n_init", n_init, 0),
                               ("n_local", n_local, 1), ("window", window, 1)):
            if not isinstance(val, int) or val < low:
                raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
        if impl not in ("auto", "torch", "reference"):
            raise ValueError(f'impl must be "auto", "torch" or "reference", got {impl!r}')
        self.cmp_block, self.cmp_stride, self.sel_block = cmp_block, cmp_stride, sel_block
        self.top_n, self.n_init, self.n_local, self.window = top_n, n_init, n_local, window
        self.rope, self.rope_theta, self.impl = rope, rope_theta, impl
        kv = self.n_kv_heads * hd
        self.q_proj = nn.Linear(d_model, n_heads * hd, bias=bias)
        self.kv_proj = nn.Linear(d_model, 6 * kv, bias=bias)  # k, v of cmp, slc, win
        self.gate_proj = nn.Linear(d_model, 3 * n_heads)
        self.o_proj = nn.Linear(n_heads * hd, d_model, bias=bias)
        hidden = 2 * hd if cmp_hidden is None else cmp_hidden
        self.compress_k = BlockCompressor(cmp_block, hd, hidden)
        self.compress_v = BlockCompressor(cmp_block, hd, hidden)

    def check_state(self, state: NSAState):
        want = (self.n_kv_heads, self.head_dim)
        if tuple(state.k_slc.shape[2:]) != want or tuple(state.kc.shape[2:]) != want:
            raise ValueError(f"NSA state must hold keys [B, L, {want[0]}, {want[1]}], got "
                             f"{tuple(state.k_slc.shape)} and compressed {tuple(state.kc.shape)}")

    def _compressed(self, kt, vt, state, plain):
        """kc, vc [B, Nc, Hkv, D] for the timeline's complete blocks. Row b keeps its cached blocks
        i < (seen_b - l) // d + 1 (complete before this call; their tokens may be gone from the tail) and
        computes the others from the timeline (they start at or after seen_b - l + 1: inside the tail)."""
        l, d = self.cmp_block, self.cmp_stride
        n_old = 0 if plain or state is None else state.kc.shape[1]
        i0 = 0
        if n_old > 0 and not compiling():  # compiled: recompute every block (no host read), keep the cached
            i0 = min(n_compressed(int(state.seen.min()), l, d), n_old)
        kc = self.compress_k(compression_windows(kt[:, i0 * d:], l, d))
        vc = self.compress_v(compression_windows(vt[:, i0 * d:], l, d))
        if n_old == 0:
            return kc, vc
        done = torch.div(state.seen - l, d, rounding_mode="floor").clamp_min(-1) + 1  # [B] cached complete blocks
        keep = (torch.arange(i0, n_old, device=kc.device) < done[:, None])[..., None, None]  # [B, n_old - i0]
        parts_k = [state.kc[:, :i0].to(kc.dtype), torch.where(keep, state.kc[:, i0:].to(kc.dtype), kc[:, : n_old - i0]),
                   kc[:, n_old - i0:]]
        parts_v = [state.vc[:, :i0].to(vc.dtype), torch.where(keep, state.vc[:, i0:].to(vc.dtype), vc[:, : n_old - i0]),
                   vc[:, n_old - i0:]]
        return torch.cat(parts_k, 1), torch.cat(parts_v, 1)

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, hd)
        kv = self.kv_proj(x).view(B, T, 6, Hkv, hd).unbind(2)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        seen0 = None if state is None else state.seen
        pos = token_positions(mask, B, T, seen0, x.device)
        keys = list(kv)
        if self.rope:
            q = apply_rope(q, pos, self.rope_theta)
            keys = [apply_rope(t, pos, self.rope_theta) if i % 2 == 0 else t for i, t in enumerate(keys)]
        total = real.long().sum(1) + (0 if state is None else state.seen)
        plain = state is None and mask is None  # positions 0..T-1: the inputs are the timeline
        if not plain:
            olds = [None] * 6 if state is None else [state.k_cmp, state.v_cmp, state.k_slc, state.v_slc,
                                                     state.k_win, state.v_win]
            tails = (0, 1, 4, 5)  # the compression and window keys/values are kept as tails
            # L = max(seen) + T when every new token is real (static: no host read under torch.compile)
            L = state.k_slc.shape[1] + T if mask is None else int(total.max())
            keys = [_timeline(t, pos, real, L, o, seen0 if i in tails else None)
                    for i, (t, o) in enumerate(zip(keys, olds))]
        kt_c, vt_c, kt_s, vt_s, kt_w, vt_w = keys
        L = kt_s.shape[1]
        ref = self.impl == "reference"
        kc, vc = self._compressed(kt_c, vt_c, state, plain)
        o_cmp, p_cmp = compressed_attention(q, kc, vc, pos, block_len=self.cmp_block, stride=self.cmp_stride)
        ids, cnt = select_token_blocks(p_cmp.detach(), pos, -(-L // self.sel_block), block_len=self.cmp_block,
                                       stride=self.cmp_stride, sel_block=self.sel_block, top_n=self.top_n,
                                       n_init=self.n_init, n_local=self.n_local)
        o_slc = token_sparse_attention(q, kt_s, vt_s, ids, cnt, pos, block_size=self.sel_block,
                                       impl="reference" if ref else "torch")
        if plain:
            o_win = softmax_attention(q, kt_w, vt_w, causal=True, window=self.window,
                                      impl="reference" if ref else "auto")
        else:
            kpos = torch.arange(L, device=x.device).expand(B, L)
            o_win = softmax_attention(q, kt_w, vt_w, causal=True, window=self.window, q_pos=pos, k_pos=kpos,
                                      key_mask=kpos < total[:, None], impl="reference" if ref else "auto")
        g = torch.sigmoid(self.gate_proj(x)).view(B, T, H, 3, 1)
        o = g[:, :, :, 0] * o_cmp + g[:, :, :, 1] * o_slc + g[:, :, :, 2] * o_win
        y = self.o_proj(o.reshape(B, T, H * hd))
        new_state = None
        if return_state:
            lc, lw = min(self.cmp_block, L), min(self.window, L)
            new_state = NSAState(_tail(kt_c, total, lc), _tail(vt_c, total, lc), kt_s, vt_s, _tail(kt_w, total, lw),
                                 _tail(vt_w, total, lw), seen=total, kc=kc.detach(), vc=vc.detach())
        return y, new_state

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, cmp_block={self.cmp_block}, cmp_stride={self.cmp_stride}, "
                f"sel_block={self.sel_block}, top_n={self.top_n}, n_init={self.n_init}, n_local={self.n_local}, "
                f"window={self.window}")
