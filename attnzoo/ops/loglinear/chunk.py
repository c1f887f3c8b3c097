"""Chunked log-linear attention on torch: the intra-chunk part in parallel, the levels carried from chunk
to chunk (Guo et al. 2025, arXiv:2506.04761, section 3.2, derived here for both base models).

Per chunk of C tokens (cumulative log decays G within the chunk, gamma = exp(G)) the base model is
four matrices, computed for all chunks at once:

    P [C, C]   the intra-chunk attention: o_t = sum_s P[t, s] v_s from the chunk's own tokens
    E [C, K]   the read-out of a state S at the chunk start: o_t = (E S)_t
    F [K, K]   the transition over the chunk: S -> F S
    W [C, K]   the chunk's tokens in the state at its end: S_end = F S + sum_s W_s v_sᵀ

Mamba-2: P = QKᵀ ⊙ exp(G_t - G_s), E = diag(gamma) Q, F = gamma_C I, W = diag(gamma_C / gamma) K.
Gated DeltaNet (UT transform, U = Tm (diag(beta) V - diag(beta gamma) K S), Tm = (I + A)^-1 with
A[t, r] = beta_t (gamma_t / gamma_r) k_tᵀ k_r for r < t): with D = QKᵀ ⊙ exp(G_t - G_s) (s <= t),
P = D Tm diag(beta), E = diag(gamma) Q - D Tm diag(beta gamma) K, F = gamma_C I - Kᵀ diag(gamma_C /
gamma) Tm diag(beta gamma) K, W = diag(beta) Tmᵀ diag(gamma_C / gamma) K: column s of P is q_tᵀ A_t
... A_{s+1} beta_s k_s, the product form the hierarchical mask multiplies.

The hierarchy: P is weighted by lambda_t^(level(t, s)) inside the chunk; the level states at the
chunk start are read by E, each with the weight of its level as seen from t; at the chunk end all
level states take F, move to their new levels (one bucket -> one level, fenwick.py) and the chunk's
tokens join the level they belong to. Positions count real tokens (padding is a no-op) and continue
from the state's count, so any start and any padding work without re-alignment. The chunk loop is
sequential (T / C steps of [B, H, levels, K, V] work): O(T log T) as the paper's algorithm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.loglinear.fenwick import (
    LevelState,
    bucket_representatives,
    capped_bit_length,
    real_positions,
    stored_levels,
)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: the chunk layout's permutes would otherwise
    reach the caller's gradients as permuted strides, on which AOTAutograd's traced backward of a caller's
    `view` fails (seen under torch.compile: Gated DeltaNet's gate projection)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _chunked(x, B, N, C):
    """[B, T, H, ...] zero-padded to N * C steps -> [B, H, N, C, ...]."""
    T = x.shape[1]
    if N * C != T:
        x = F.pad(x, [0, 0] * (x.dim() - 2) + [0, N * C - T])
    x = x.reshape(B, N, C, *x.shape[2:])
    return x.movedim(3, 1)


def _chunk_pieces(q, k, G, beta):
    """(P, E, F, W) of every chunk (module docstring); F is [B, H, N, 1, 1] (a scalar) without beta."""
    C = q.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    GC = G[..., -1:]                                                              # [B, H, N, 1]
    D = (q @ k.transpose(-1, -2)) * torch.exp(torch.where(causal, G[..., :, None] - G[..., None, :], -torch.inf))
    gam = torch.exp(G)[..., None]
    kd = k * torch.exp(GC - G)[..., None]                                          # diag(gamma_C / gamma) K
    if beta is None:
        return D, q * gam, torch.exp(GC)[..., None], kd
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    A = beta[..., :, None] * (k @ k.transpose(-1, -2)) * torch.exp(
        torch.where(strict, G[..., :, None] - G[..., None, :], -torch.inf))
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    Tm = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    DT = D @ Tm
    kbg = k * (beta[..., None] * gam)                                              # diag(beta gamma) K
    E = q * gam - DT @ kbg
    Fm = torch.exp(GC)[..., None] * torch.eye(k.shape[-1], dtype=q.dtype, device=q.device) \
        - kd.transpose(-1, -2) @ (Tm @ kbg)
    W = beta[..., None] * (Tm.transpose(-1, -2) @ kd)
    return DT * beta[..., None, :], E, Fm, W


def chunk_log_linear(q, k, v, g, level_weights, beta=None, *, mask=None, scale=None, initial_state=None,
                     output_final_state=False, chunk_size=16):
    """Chunked log-linear attention (arguments as `log_linear_attention`)."""
    B, T, H, K = q.shape
    V, L = v.shape[-1], level_weights.shape[-1]
    S0 = None if initial_state is None else initial_state.S
    ct = compute_dtype(q, k, v, g, level_weights, S0)
    dev = q.device
    scale = K ** -0.5 if scale is None else scale
    n0 = torch.zeros(B, dtype=torch.long, device=dev) if initial_state is None else initial_state.count.long()
    real = torch.ones(B, T, dtype=torch.bool, device=dev) if mask is None else mask
    seen = real.long().cumsum(1)                                                  # real tokens up to t
    pos = real_positions(mask, n0, B, T, dev)
    if initial_state is None:
        levels = stored_levels(T, L)       # shape-static (no host read): mask only lowers the count
    else:
        levels = max(stored_levels(int((n0 + seen[:, -1]).max()), L), S0.shape[2])
    C = max(1, min(chunk_size, T))
    N = -(-T // C)

    def prep(x):
        x = _ContiguousGrad.apply(x) if x.requires_grad else x
        return _chunked(torch.where(real.view(B, T, *[1] * (x.dim() - 2)), x.to(ct), 0), B, N, C)

    qc, kc, vc, lam = prep(q) * scale, prep(k), prep(v), prep(level_weights)    # lam [B, H, N, C, L]
    G = prep(g).cumsum(-1)
    P, E, Fm, W = _chunk_pieces(qc, kc, G, None if beta is None else prep(beta))
    posc = F.pad(pos, [0, N * C - T]).view(B, N, C)
    lv = capped_bit_length(posc[..., :, None] ^ posc[..., None, :], L)             # [B, N, C, C]
    Wt = torch.gather(lam, -1, lv[:, None].expand(B, H, N, C, C))
    o_intra = (P * Wt) @ vc                                                       # P is 0 above the diagonal
    seen_pad = F.pad(seen, [0, N * C - T], value=0) if N * C != T else seen
    if N * C != T:
        seen_pad[:, T:] = seen[:, -1:]
    ends = n0[:, None] + seen_pad.view(B, N, C)[..., -1]                          # count after each chunk [B, N]
    starts = torch.cat([n0[:, None], ends[:, :-1]], 1)

    S = torch.zeros(B, H, levels, K, V, dtype=ct, device=dev)
    if S0 is not None and S0.shape[2]:
        S = torch.cat([S0.to(ct), S[:, :, S0.shape[2]:]], 2)
    outs = []
    for n in range(N):
        rep = bucket_representatives(starts[:, n], levels, L)                       # [B, levels]
        lq = capped_bit_length(posc[:, n, :, None] ^ rep[:, None, :], L)           # [B, C, levels]
        wq = torch.gather(lam[:, :, n], -1, lq[:, None].expand(B, H, C, levels))    # [B, H, C, levels]
        read = torch.einsum("bhck,bhlkv->bhclv", E[:, :, n], S)
        outs.append(o_intra[:, :, n] + torch.einsum("bhcl,bhclv->bhcv", wq, read))
        if n == N - 1 and not output_final_state:
            break
        if beta is None:
            S = Fm[:, :, n, :, None] * S
        else:
            S = torch.einsum("bhij,bhljv->bhliv", Fm[:, :, n], S)
        moved = (capped_bit_length(ends[:, n, None] ^ rep, L) - 1).clamp(0, levels - 1)
        S = torch.einsum("bij,bhikv->bhjkv", F.one_hot(moved, levels).to(ct), S)
        joins = (capped_bit_length(ends[:, n, None] ^ posc[:, n], L) - 1).clamp(0, levels - 1)   # [B, C]
        S = S + torch.einsum("bcl,bhck,bhcv->bhlkv", F.one_hot(joins, levels).to(ct), W[:, :, n], vc[:, :, n])
    o = torch.stack(outs, 2).movedim(1, 3).reshape(B, N * C, H, V)[:, :T]
    o = torch.where(real[..., None, None], o, 0).to(q.dtype).contiguous()   # where keeps the permuted strides
    return o, (LevelState(S, n0 + seen[:, -1]) if output_final_state else None)
