"""The affine map of one shard of the (gated) delta rule, from the WY / UT chunk form (CHUNKED.md §2).

Over a shard of L tokens, S_t = exp(g_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ gives

    S_L = A S_in + B,       A = Π_{t=L..1} exp(g_t)(I - β_t k_t k_tᵀ)   (dense K x K)
    q_tᵀ S_t = q_tᵀ S_t^local + Q̃_t S_in,     Q̃_t = q_tᵀ Π_{s=t..1} exp(g_s)(I - β_s k_s k_sᵀ)

In a chunk of c tokens with cumulative log gate b (from the chunk start), D_ij = exp(b_i - b_j)
(i >= j), T = (I + StrictLower(diag(β) K Kᵀ ⊙ D))^{-1} diag(β), W = T (K ⊙ e^b), U = T V and
K_d = K ⊙ e^{b_c - b}, the chunk's map and output rows are

    A_c = e^{b_c} I - K_dᵀ W,     B_c = K_dᵀ U,     Q_c = Q ⊙ e^b - ((Q Kᵀ) ⊙ D ⊙ Lower) W,

all chunks at once (batched triangular solves). The chunk maps compose as X_n = A_c^(n) X_{n-1} +
[0 | B_c^(n)] from X_0 = [I | 0]; the prefixes are taken in two levels (√N sequential steps inside
groups of √N chunks, batched over the groups, then √N over the groups), and Q̃ of chunk n is
Q_c^(n) P_{n-1} with P the prefix of the A_c. Every exponent is <= 0 as written.
"""

from __future__ import annotations

import math

import torch

from attnzoo.ops.common.precision import compute_dtype


def affine_prefix(A: torch.Tensor, Bm: torch.Tensor):
    """Inclusive prefixes of the maps S -> A_n S + B_n (n along dim -3, applied in order).

    A [..., N, K, K], Bm [..., N, K, V] -> (P [..., N, K, K], R [..., N, K, V]) with P_n = A_n P_{n-1},
    R_n = A_n R_{n-1} + B_n (P_0 = I, R_0 = 0)."""
    *lead, N, K, _ = A.shape
    V = Bm.shape[-1]
    G = math.isqrt(N - 1) + 1  # ceil(sqrt(N))
    n_groups = -(-N // G)
    pad = n_groups * G - N
    if pad:
        eye = torch.eye(K, dtype=A.dtype, device=A.device).expand(*lead, pad, K, K)
        A = torch.cat([A, eye], -3)
        Bm = torch.cat([Bm, Bm.new_zeros(*lead, pad, K, V)], -3)
    A = A.reshape(*lead, n_groups, G, K, K)
    Bm = Bm.reshape(*lead, n_groups, G, K, V)
    Ps, Rs = [A[..., 0, :, :]], [Bm[..., 0, :, :]]
    for i in range(1, G):  # inside every group at once
        Ps.append(A[..., i, :, :] @ Ps[-1])
        Rs.append(A[..., i, :, :] @ Rs[-1] + Bm[..., i, :, :])
    P_loc, R_loc = torch.stack(Ps, -3), torch.stack(Rs, -3)  # [..., groups, G, K, *]
    eye = torch.eye(K, dtype=A.dtype, device=A.device).expand(*lead, K, K)
    EP, ER = [eye], [Bm.new_zeros(*lead, K, V)]
    for j in range(n_groups - 1):  # exclusive prefix over the group totals
        EP.append(P_loc[..., j, -1, :, :] @ EP[-1])
        ER.append(P_loc[..., j, -1, :, :] @ ER[-1] + R_loc[..., j, -1, :, :])
    EP, ER = torch.stack(EP, -3)[..., None, :, :], torch.stack(ER, -3)[..., None, :, :]
    P = (P_loc @ EP).reshape(*lead, n_groups * G, K, K)[..., :N, :, :]
    R = (P_loc @ ER + R_loc).reshape(*lead, n_groups * G, K, V)[..., :N, :, :]
    return P, R


def _chunks(x, C, N, dtype):
    """[B, T, H, ...] -> [B, H, N, C, ...] in dtype, zero-padded at the end."""
    x = x.to(dtype).movedim(1, 2)
    pad = N * C - x.shape[2]
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], 2)
    return x.reshape(*x.shape[:2], N, C, *x.shape[3:])


def delta_shard_map(q, k, v, beta, g=None, *, chunk: int = 64):
    """(A [B, H, K, K], B [B, H, K, V], Q̃ [B, T, H, K]) of one shard (module docstring); q unscaled."""
    ct = compute_dtype(q, k, v, beta, g)
    Bsz, T, H, K = q.shape
    C = max(1, min(chunk, T))
    N = -(-T // C)
    qc, kc, vc = _chunks(q, C, N, ct), _chunks(k, C, N, ct), _chunks(v, C, N, ct)
    bc = _chunks(beta, C, N, ct)
    gc = torch.zeros_like(bc) if g is None else _chunks(g, C, N, ct)
    b = gc.cumsum(-1)  # [B, H, N, C]
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    D = torch.exp(torch.where(lower, b[..., :, None] - b[..., None, :], float("-inf")))
    strict = torch.where(lower.tril(-1), bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * D, 0.0)
    eye_c = torch.eye(C, dtype=ct, device=q.device)
    Tm = torch.linalg.solve_triangular(eye_c + strict, torch.diag_embed(bc), upper=False, unitriangular=True)
    eb = torch.exp(b)[..., None]
    W, U = Tm @ (kc * eb), Tm @ vc
    kd = kc * torch.exp(b[..., -1:] - b)[..., None]
    eye_k = torch.eye(K, dtype=ct, device=q.device)
    A_c = torch.exp(b[..., -1])[..., None, None] * eye_k - kd.transpose(-1, -2) @ W
    B_c = kd.transpose(-1, -2) @ U
    Q_c = qc * eb - ((qc @ kc.transpose(-1, -2)) * D) @ W
    P, R = affine_prefix(A_c, B_c)
    P_prev = torch.cat([eye_k.expand(*P.shape[:2], 1, K, K), P[:, :, :-1]], 2)
    Qt = (Q_c @ P_prev).reshape(Bsz, H, N * C, K)[:, :, :T].movedim(2, 1)
    return P[:, :, -1], R[:, :, -1], Qt


class DeltaBody:
    """Without overlap (the default, also on CUDA), one op call on the values [v | 0] from the state
    [0 | I] gives everything: the state's columns evolve independently, so the output is [o_local |
    scale Q̃] and the final state [B | A] (measured on the CPU: 1.2-2.4x the op, against 2.7-4x for the
    op plus this module's map). With overlap=True the map comes first, from the chunk form above."""

    dense = True
    overlap_pays = False
    name = "All-Scan (delta rule)"

    def __init__(self, scale: float, impl: str, chunk: int = 64):
        self.scale, self.impl, self.chunk = scale, impl, chunk

    def prepare(self, q, k, v, beta, g):
        A, Bm, Qt = delta_shard_map(q, k, v, beta, g, chunk=self.chunk)
        return A, Bm, self.scale * Qt

    def local(self, q, k, v, beta, g):
        from attnzoo.ops.delta import delta_rule

        return delta_rule(q, k, v, beta, g, scale=self.scale, impl=self.impl)[0]

    def fused(self, q, k, v, beta, g):
        from attnzoo.ops.delta import delta_rule

        Bsz, T, H, K = q.shape
        V = v.shape[-1]
        ct = compute_dtype(q, k, v, beta, g)
        eye = torch.eye(K, dtype=ct, device=q.device).expand(Bsz, H, K, K)
        S0 = torch.cat([torch.zeros(Bsz, H, K, V, dtype=ct, device=q.device), eye], -1)
        o, S = delta_rule(q, k, torch.cat([v, v.new_zeros(Bsz, T, H, K)], -1), beta, g, scale=self.scale,
                          initial_state=S0, output_final_state=True, impl=self.impl)
        return o[..., :V], S[..., V:], S[..., :V], o[..., V:].to(ct)


def sp_delta_rule(cfg, q, k, v, beta, g=None, *, scale, initial_state=None, output_final_state=False, impl="auto"):
    """The override of `delta_rule` (inputs already checked, scale resolved). Returns (o, state at the
    end of this rank's shard)."""
    from attnzoo.parallel.scan_op import run_scan_op

    o, S = run_scan_op(DeltaBody(scale, impl), cfg, initial_state, (q, k, v, beta, g))
    return o, (S if output_final_state else None)
