"""Causal sliding-window softmax attention in query blocks: O(T·w) time and memory, not T x T.

    o = banded_window_attention(q, k, v, window=w, scale=s)   # q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D|Dv]

The queries are the newest Tq of Tk tokens (api.py's default positions, Tk >= Tq: a KV cache
before them); query i at position p_i = Tk - Tq + i sees the keys j with 0 <= p_i - j < w
(Beltagy et al. 2020, Longformer, arXiv:2004.05150):

    o_i = Σ_{j = p_i - w + 1 .. p_i} softmax_j(s · q_i · k_j) v_j

The queries are cut into blocks of L = max(64, w rounded up to 16) rows. With the keys padded in
front so that query 0's own key sits at index L of the padded keys, block n's keys all lie in padded
key blocks n and n + 1; one SDPA call over [B·Hq, n_blocks, L, 2L] with the band mask
(row r, column c: 0 <= r + L - c < w, and no front padding) is the exact attention. Every real query
sees at least itself, so no row is empty. api.softmax_attention takes this path for a causal window
with default positions, no key mask and no prefix, when Tq > 2L (below that the dense mask is as cheap).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.softmax.reference import expand_kv
from attnzoo.ops.softmax.sdpa import sdpa

BLOCK_MIN = 64


def band_block(window: int) -> int:
    """Query rows per block L for window w (a multiple of 16, at least w and BLOCK_MIN)."""
    return max(BLOCK_MIN, -(-window // 16) * 16)


def use_banded(Tq: int, Tk: int, window: int) -> bool:
    """Whether the blocked path pays: more than two blocks of queries, the queries the newest tokens."""
    return Tk >= Tq > 2 * band_block(window)


def band_mask(n_blocks: int, L: int, window: int, front: int, device) -> torch.Tensor:
    """Bool [n_blocks, L, 2L]: row r of block n sees column c of its 2L keys (band, not front padding)."""
    r = torch.arange(L, device=device)[:, None]
    c = torch.arange(2 * L, device=device)[None, :]
    rel = r + L - c                                               # query position minus key position
    n = torch.arange(n_blocks, device=device)[:, None, None]
    return ((rel >= 0) & (rel < window))[None] & (n * L + c[None] >= front)


def banded_window_attention(q, k, v, *, window: int, scale: float):
    """q [B, Tq, Hq, D], k [B, Tk, Hkv, D], v [B, Tk, Hkv, Dv] (Tk >= Tq; Hq a multiple of Hkv)
    -> o [B, Tq, Hq, Dv] in q's dtype (module docstring)."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    B, Tq, Hq, D = q.shape
    Tk, Dv = k.shape[1], v.shape[-1]
    if Tk < Tq:
        raise ValueError(f"banded window attention needs Tk >= Tq (queries are the newest tokens), got {Tk} < {Tq}")
    drop = max(0, Tk - Tq - (window - 1))         # keys older than the first query's window: never seen
    k, v = k[:, drop:], v[:, drop:]
    off = Tk - drop - Tq                          # key index of query 0's own key, < window <= L
    L = band_block(window)
    nb = -(-Tq // L)
    front = L - off                               # padded keys: query block n reads key blocks n and n + 1
    back = nb * L - Tq                            # total (nb + 1)·L = front + (off + Tq) + back

    def key_blocks(x):  # [B, Tk', Hkv, E] -> [B·Hq, nb, 2L, E]
        x = F.pad(expand_kv(x, Hq).transpose(1, 2), (0, 0, front, back))   # [B, Hq, (nb + 1) L, E]
        E = x.shape[-1]
        lo = x[:, :, :nb * L].reshape(B * Hq, nb, L, E)
        hi = x[:, :, L:].reshape(B * Hq, nb, L, E)
        return torch.cat([lo, hi], 2)

    qb = F.pad(q.transpose(1, 2), (0, 0, 0, back)).reshape(B * Hq, nb, L, D)
    mask = band_mask(nb, L, window, front, q.device)
    o = sdpa(qb, key_blocks(k), key_blocks(v), attn_mask=mask[None], scale=scale)   # [B·Hq, nb, L, Dv]
    return o.reshape(B, Hq, nb * L, Dv)[:, :, :Tq].transpose(1, 2)
