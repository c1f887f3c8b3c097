"""Input checks of the op families, below both each family's api.py and its implementations.

Each raises ValueError naming what was expected. Shapes follow the op contract (DESIGN.md):
q, k [B, T, H, K], v [B, T, H, V], gates in log space, states [N, H, K, V] with N = B, or the
number of packed sequences when cu_seqlens is given (then B == 1).
"""

from __future__ import annotations

import torch


def check_chunk_size(chunk_size) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def check_cu_seqlens(cu_seqlens, batch: int) -> int:
    """The number of sequences: batch without cu_seqlens; len(cu_seqlens) - 1 with it (packed, B == 1).

    cu_seqlens: int32/int64 [N + 1], the FlashAttention convention (0, end of sequence 1, ..., T).
    Only shape and dtype are checked here (the values stay on the device)."""
    if cu_seqlens is None:
        return batch
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64):
        desc = (tuple(cu_seqlens.shape), cu_seqlens.dtype) if isinstance(cu_seqlens, torch.Tensor) else cu_seqlens
        raise ValueError(f"cu_seqlens must be a 1-D int32/int64 tensor [N + 1], got {desc}")
    if batch != 1:
        raise ValueError(f"cu_seqlens needs packed inputs with B == 1, got B={batch}")
    return cu_seqlens.shape[0] - 1


def check_qkv(q, k, v) -> None:
    """q, k [B, T, H, K] of one shape and v [B, T, H, V] with the same B, T, H."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k must be [B, T, H, K] and v [B, T, H, V] with the same B, T, H; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def check_cached_qkv(q, k, v, key_mask) -> tuple[int, int, int, int]:
    """Attention over a KV cache followed by the new tokens: q [B, Tq, H, D], k [B, Tk, H, D] and
    v [B, Tk, H, Dv] with Tk >= Tq (cached keys first), key_mask None or bool [B, Tk]. Returns (B, Tq, Tk, H)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    if tuple(k.shape) != (B, Tk, H, D) or tuple(v.shape[:3]) != (B, Tk, H):
        raise ValueError(f"k must be [B, Tk, {H}, {D}] and v [B, Tk, {H}, Dv] for q {tuple(q.shape)}; "
                         f"got {tuple(k.shape)}, {tuple(v.shape)}")
    if Tk < Tq:
        raise ValueError(f"keys (Tk={Tk}) must include the Tq={Tq} new tokens (cached keys first)")
    if key_mask is not None and (key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, Tk)):
        raise ValueError(f"key_mask must be bool [B, Tk] = {(B, Tk)}, got {key_mask.dtype} {tuple(key_mask.shape)}")
    return B, Tq, Tk, H


def check_state(initial_state, shape: tuple, words: str) -> None:
    """initial_state None or of `shape`; `words` names the dims in the error, e.g. "[B, H, K, V]"."""
    if initial_state is not None and tuple(initial_state.shape) != tuple(shape):
        raise ValueError(f"initial_state must be {words} = {tuple(shape)}, got {tuple(initial_state.shape)}")


def _state_words(cu_seqlens, words: str) -> str:
    return words if cu_seqlens is None else words.replace("[B,", "[N,", 1)


def check_gla_inputs(q, k, v, g, g_gamma, initial_state, normalize=False, cu_seqlens=None) -> None:
    """Gated linear attention: g [B, T, H] or [B, T, H, K]; g_gamma [H]; state [N, H, K, V(+1)]."""
    check_qkv(q, k, v)
    B, T, H, K = q.shape
    V = v.shape[-1] + (1 if normalize else 0)
    if g is not None and tuple(g.shape) not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"g must be [B, T, H] = {(B, T, H)} or [B, T, H, K] = {(B, T, H, K)}, got {tuple(g.shape)}")
    if g_gamma is not None and tuple(g_gamma.shape) != (H,):
        raise ValueError(f"g_gamma must be [H] = [{H}], got {tuple(g_gamma.shape)}")
    n = check_cu_seqlens(cu_seqlens, B)
    check_state(initial_state, (n, H, K, V), _state_words(cu_seqlens, "[B, H, K, V]"))


def check_delta_inputs(q, k, v, beta, g, initial_state, cu_seqlens=None) -> None:
    """The (gated) delta rule: beta [B, T, H]; g [B, T, H] (scalar gate) or None; state [N, H, K, V]."""
    check_qkv(q, k, v)
    B, T, H, K = q.shape
    if tuple(beta.shape) != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    if g is not None and tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be a scalar gate per head [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    n = check_cu_seqlens(cu_seqlens, B)
    check_state(initial_state, (n, H, K, v.shape[-1]), _state_words(cu_seqlens, "[B, H, K, V]"))


def check_scan_inputs(u, delta, A, B, C, D, initial_state, cu_seqlens=None) -> None:
    """The selective scan: u, delta [B, T, D]; A [D, N]; B, C [B, T, N]; D [D]; state [B, D, N]."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be [B, T, D], got {tuple(u.shape)} and {tuple(delta.shape)}")
    Bsz, T, Dm = u.shape
    if A.dim() != 2 or A.shape[0] != Dm:
        raise ValueError(f"A must be [D, N] = [{Dm}, N], got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (Bsz, T, N):
            raise ValueError(f"{name} must be [B, T, N] = {(Bsz, T, N)}, got {tuple(t.shape)}")
    if D is not None and tuple(D.shape) != (Dm,):
        raise ValueError(f"D must be [D] = [{Dm}], got {tuple(D.shape)}")
    n = check_cu_seqlens(cu_seqlens, Bsz)
    check_state(initial_state, (n, Dm, N), _state_words(cu_seqlens, "[B, D, N]"))
