"""TTT-Linear on torch: the paper's mini-batch TTT in its dual form, one mini-batch of b tokens at a time
(a loop over T / b mini-batches, each a few batched products over B·H; plain autograd).

Inside a mini-batch every gradient is taken at the weights W' it starts from, so with K~ = [K, 1],
Q~ = [Q, 1] ([b, D + 1]), W_s the weights after its token s and η_s the tokens' learning rates

    Gz = ∂ℓ/∂z at Z = K~ W'ᵀ  (inner.py, all b tokens at once)
    W_t Q~_t = W_0 Q~_t − Σ_{s<=t} η_s Gz_s (K~_s · Q~_t)   ->   Z_q = Q~ W_0ᵀ − (tril(Q~ K~ᵀ) · η) Gz
    o = Q + LN(Z_q),   W_b = W_0 − (η Gz)ᵀ K~

which is exactly the reference's token loop (W_0 = W' except in a first mini-batch continued from a state).
Mini-batches count real tokens only: each row's real tokens are gathered into a buffer at positions
seen mod b + (their rank among the row's real tokens), so rows padded differently, or continued from states
that stopped at different points of a mini-batch, share the same boundaries; the slots no real token fills
get η = 0 and change nothing. The buffer's length is static (T + b − 1 rounded up to b when a mask or state
is given), so nothing is read on the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.ttt.inner import layer_norm, loss_grad_z, with_one


def _scatter(x, dest, L: int):
    """x [B, T, ...] -> [B, L, ...] with x[:, t] at dest[:, t] (dest == L: dropped)."""
    B, T = dest.shape
    idx = dest.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    out = x.new_zeros(B, L + 1, *x.shape[2:]).scatter(1, idx, x)
    return out[:, :L]


def minibatch_ttt_linear(q, k, v, eta, ln_weight, ln_bias, *, mini_batch=16, initial_state=None, mask=None,
                         output_final_state=False):
    B, T, H, D = q.shape
    b = mini_batch
    ct = compute_dtype(q, k, v, eta, ln_weight, ln_bias, *(initial_state or (None, None))[:2])
    dev = q.device
    if initial_state is None:
        base = W = torch.zeros(B, H, D, D + 1, dtype=ct, device=dev)
        seen = torch.zeros(B, dtype=torch.long, device=dev)
    else:
        base, W, seen = initial_state[0].to(ct), initial_state[1].to(ct), initial_state[2]
    xs = [q.to(ct), k.to(ct), v.to(ct), eta.to(ct)[..., None]]
    if mask is None and initial_state is None:  # rows aligned from position 0: pad the tail
        L = -(-T // b) * b
        bufs = [F.pad(x, [0, 0, 0, 0, 0, L - T]) for x in xs]
        n = torch.full((B,), T, dtype=torch.long, device=dev)
        dest = None
    else:
        L = -(-(T + b - 1) // b) * b
        real = torch.ones(B, T, dtype=torch.bool, device=dev) if mask is None else mask
        rank = real.long().cumsum(1) - 1
        dest = torch.where(real, (seen % b)[:, None] + rank, torch.full_like(rank, L))
        bufs = [_scatter(torch.where(real[:, :, None, None], x, torch.zeros((), dtype=ct)), dest, L) for x in xs]
        n = real.long().sum(1)
    M = L // b
    Qc, Kc, Vc, Ec = (x.transpose(1, 2).reshape(B, H, M, b, x.shape[-1]) for x in bufs)
    w, lb = ln_weight.to(ct)[:, None, :], ln_bias.to(ct)[:, None, :]  # [H, 1, D] against [B, H, b, D]
    causal = torch.ones(b, b, dtype=torch.bool, device=dev).tril()
    outs, bases = [], []
    for m in range(M):
        Qm, Km, Vm, Em = Qc[:, :, m], Kc[:, :, m], Vc[:, :, m], Ec[:, :, m]
        Kt, Qt = with_one(Km), with_one(Qm)  # [B, H, b, D + 1]
        gz = loss_grad_z(Km, Vm, Kt @ base.transpose(-1, -2), w, lb)  # [B, H, b, D], all at W'
        eg = Em * gz
        A = torch.where(causal, Qt @ Kt.transpose(-1, -2), torch.zeros((), dtype=ct))
        Zq = Qt @ W.transpose(-1, -2) - A @ eg
        outs.append(Qm + layer_norm(Zq, w, lb)[0])
        bases.append(base)
        W = W - eg.transpose(-1, -2) @ Kt
        base = W
    o = torch.stack(outs, 2).reshape(B, H, L, D).transpose(1, 2)  # [B, L, H, D]
    if dest is None:
        o = o[:, :T]
    else:
        o = o.gather(1, dest.clamp_max(L - 1)[:, :, None, None].expand(B, T, H, D))
        o = torch.where(dest[:, :, None, None] < L, o, torch.zeros((), dtype=ct))
    if not output_final_state:
        return o.to(q.dtype), None
    end = (0 if dest is None else seen % b) + n  # each row's buffer position after its last real token
    mid = torch.stack(bases, 1)  # [B, M, H, D, D + 1]: W' of each mini-batch
    open_base = mid.gather(1, (end // b).clamp_max(M - 1)[:, None, None, None, None].expand(B, 1, *mid.shape[2:]))
    base = torch.where((end % b == 0)[:, None, None, None], W, open_base[:, 0])
    if initial_state is not None:  # a row without real tokens keeps its W' (as the loop does)
        base = torch.where((n == 0)[:, None, None, None], initial_state[0].to(ct), base)
    return o.to(q.dtype), (base, W, seen + n)
