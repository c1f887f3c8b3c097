"""The DPLR delta rule in chunks on torch (the vector-gate analogue of CHUNKED.md section 2), via autograd.

    S_t = Diag(exp(g_t)) S_{t-1} + a_t (b_tᵀ S_{t-1}) + k_t v_tᵀ,      o_t = scale · q_tᵀ S_t

Shapes and arguments as dplr.dplr_delta_rule (less impl). Per chunk of C tokens, with G_i = Σ_{l<=i} g_l
the cumulative log gate from the chunk start (a vector over K) and u_i = S_{i-1}ᵀ b_i the value the
rank-one term reads, the recurrence unrolls to S_i = e^{G_i} ⊙ S_0 + Σ_{j<=i} e^{G_i - G_j} ⊙ (a_j u_jᵀ + k_j v_jᵀ)
(⊙ on the rows), so with E_ij = exp(G_i - G_j) per channel for i >= j (0 above), E'_ij = E_{i-1,j}
(strictly below the diagonal) and X_ij(x, y) = Σ_c x_ic y_jc E_ijc:

    (I - X'(b, a)) U = (b ⊙ e^{G_{i-1}}) S_0 + X'(b, k) V          (a unit-lower-triangular solve)
    O = (q ⊙ e^{G}) S_0 + X(q, a) U + X(q, k) V
    S_C = e^{G_C} ⊙ S_0 + (a ⊙ e^{G_C - G})ᵀ U + (k ⊙ e^{G_C - G})ᵀ V

Every exponent is a sum of gates taken directly and <= 0 (ops/common/gate_sums.py), so strong forgetting
underflows instead of overflowing. U = W S_0 + U_0 with [W, U_0] solved for all chunks at once; the state
then passes through a loop over chunks, S_{n+1} = M_n S_n + B_n (M_n = Diag(e^{G_C}) + (a ⊙ e^{G_C - G})ᵀ W_n).
The pairwise decay costs C·C·K per chunk (no factorisation around a reference row: it would overflow).
Autograd differentiates all of it (no hand-written backward). The pairwise decays hold B·H·T·C·K numbers, so a
long input runs as segments of whole chunks (at most SEGMENT_PAIR_ELEMENTS each, the state carried), each
checkpointed when gradients are needed (recomputed in the backward instead of kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from attnzoo.ops.common.checks import check_chunk_size
from attnzoo.ops.common.gate_sums import pairwise_decay, prefix_excl
from attnzoo.ops.common.precision import compute_dtype

# Elements of the pairwise decays [B, H, n, C, C, K] one segment of chunks may hold (64 MiB in float32).
SEGMENT_PAIR_ELEMENTS = 2**24


def _chunks(x, N: int, C: int, dtype):
    """[B, T, H, D] -> [B, H, N, C, D] in dtype, zero-padded along T (differentiable, no out= writes)."""
    B, T, H, D = x.shape
    x = x.to(dtype).transpose(1, 2)
    if N * C > T:
        x = F.pad(x, (0, 0, 0, N * C - T))
    return x.reshape(B, H, N, C, D)


def _suffix_excl(g):
    """Σ_{l > j} g_l along the chunk dim (-2), by a flipped cumsum (gate_sums.suffix_excl writes with out=,
    which autograd cannot differentiate)."""
    return F.pad(g.flip(-2).cumsum(-2)[..., :-1, :], (0, 0, 1, 0)).flip(-2)


def _pair(E, x, y):
    """X_ij = Σ_c x_ic y_jc E_ijc: E [..., C, C, K], x, y [..., C, K] -> [..., C, C]."""
    return ((E * y.unsqueeze(-3)) @ x.unsqueeze(-1)).squeeze(-1)


def _segment(qc, kc, vc, ac, bc, gc, S):
    """Chunks [B, H, n, C, .] (q times scale) from the state S entering the first: (O [B, H, n, C, V], S leaving)."""
    K = qc.shape[-1]
    E = pairwise_decay(gc, dim=-2)  # [B, H, n, C, C, K]: exp(G_i - G_j), i >= j
    E_prev = F.pad(E[..., :-1, :, :], (0, 0, 0, 0, 1, 0))  # row i holds row i - 1: exp(G_{i-1} - G_j), j < i
    L = -_pair(E_prev, bc, ac)  # I - X'(b, a) below the diagonal; the solve takes the diagonal as 1
    rhs = torch.cat([bc * prefix_excl(gc, -2).exp(), _pair(E_prev, bc, kc) @ vc], -1)
    WU = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True)
    W, U0 = WU[..., :K], WU[..., K:]
    tail = _suffix_excl(gc).exp()  # exp(G_C - G_j)
    a_end, k_end = ac * tail, kc * tail
    gamma = gc.sum(-2).exp()  # [B, H, n, K]
    M = torch.diag_embed(gamma) + a_end.transpose(-1, -2) @ W  # [B, H, n, K, K]
    Bn = a_end.transpose(-1, -2) @ U0 + k_end.transpose(-1, -2) @ vc  # [B, H, n, K, V]
    entering = []
    for i in range(qc.shape[2]):
        entering.append(S)
        S = M[:, :, i] @ S + Bn[:, :, i]
    S_in = torch.stack(entering, 2)  # [B, H, n, K, V]: the state entering each chunk
    U = W @ S_in + U0
    O = (qc * gc.cumsum(-2).exp()) @ S_in + _pair(E, qc, ac) @ U + _pair(E, qc, kc) @ vc
    return O, S


def chunk_dplr_delta_rule(q, k, v, a, b, g, *, scale=None, initial_state=None, output_final_state=False,
                          chunk_size=32):
    check_chunk_size(chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, a, b, g, initial_state)
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    if T == 0:
        return v.new_zeros(B, 0, H, V, dtype=q.dtype), (S if output_final_state else None)
    C = min(chunk_size, T)
    N = -(-T // C)  # the padded tail has g = a = b = k = v = 0: it leaves the state untouched
    qc, kc, vc, ac, bc, gc = (_chunks(t, N, C, ct) for t in (q, k, v, a, b, g))
    qc = qc * scale
    per_seg = max(1, SEGMENT_PAIR_ELEMENTS // (B * H * C * C * K))  # chunks per segment
    if per_seg >= N:
        O, S = _segment(qc, kc, vc, ac, bc, gc, S)
    else:  # long: segments of whole chunks, each recomputed in the backward (its pairwise decays not kept)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, a, b, g, S))
        outs = []
        for lo in range(0, N, per_seg):
            seg = [t[:, :, lo:lo + per_seg] for t in (qc, kc, vc, ac, bc, gc)]
            O, S = checkpoint(_segment, *seg, S, use_reentrant=False) if grad else _segment(*seg, S)
            outs.append(O)
        O = torch.cat(outs, 2)
    o = O.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).to(q.dtype)
    return o, (S if output_final_state else None)
