"""Chunked (gated) delta rule on torch: the WY / UT-transform form, fast on CPU.

Papers: Yang, Wang, Zhang, Shen, Kim, "Parallelizing Linear Transformers with the Delta Rule
over Sequence Length", 2024, arXiv:2406.06484 (DeltaNet, WY form); Yang, Kautz, Hatamizadeh,
"Gated Delta Networks: Improving Mamba2 with Delta Rule", 2024, arXiv:2412.06464 (the gate).

Shapes: q, k [B, T, H, K] (keys L2-normalised), v [B, T, H, V], beta [B, T, H] in (0, 1),
g [B, T, H] log-space scalar gate (<= 0) or None; initial_state [B, H, K, V].
Returns (o [B, T, H, V] in q's dtype, final_state [B, H, K, V] or None); state and all
arithmetic in float32 (float64 when any input is float64).

    S_t = exp(g_t) (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

Per chunk of C tokens, with b_i the cumulative log gate from the chunk start and
D_ij = exp(b_i - b_j) for i >= j (CHUNKED.md section 2):

    A  = StrictLower(diag(β) (K Kᵀ) ⊙ D),   T = (I + A)^{-1} diag(β)
    W  = T (K ⊙ e^b),   U = T V,   V' = U - W S_0
    O  = (Q ⊙ e^b) S_0 + ((Q Kᵀ) ⊙ D ⊙ Lower) V'
    S_c = e^{b_c} S_0 + (K ⊙ e^{b_c - b})ᵀ V'

Every exponent is <= 0 as written (the upper triangle of b_i - b_j is masked to -inf before
exp), so strong forgetting underflows to 0 instead of overflowing. Everything except the
state passing is batched over all chunks; the state passes through a loop over T / C chunks
(two small matmuls per chunk), so time is linear in T. The backward is torch autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.delta.api import check_delta_inputs
from attnzoo.ops.linear.reference import compute_dtype


def _to_chunks(x: torch.Tensor, ct: torch.dtype, n_chunks: int, chunk: int) -> torch.Tensor:
    """[B, T, H, ...] -> [B, H, N, C, ...] in dtype ct, zero-padded at the end of T."""
    x = x.to(ct).transpose(1, 2)
    pad = n_chunks * chunk - x.shape[2]
    if pad:
        x = F.pad(x, (0, 0, 0, pad) if x.dim() == 4 else (0, pad))
    return x.reshape(x.shape[0], x.shape[1], n_chunks, chunk, *x.shape[3:])


def chunk_delta_rule(
    q, k, v, beta, g=None, *, scale, initial_state=None, output_final_state=False, chunk_size=64,
):
    check_delta_inputs(q, k, v, beta, g, initial_state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, beta, g, initial_state)
    dev = q.device
    if T == 0:  # an empty sequence: nothing to output, the state passes through
        S = torch.zeros(B, H, K, V, dtype=ct, device=dev) if initial_state is None else initial_state.to(ct)
        return v.new_zeros(B, 0, H, V, dtype=q.dtype), (S if output_final_state else None)
    C = min(chunk_size, T)
    N = -(-T // C)  # the padded tail has beta = g = k = v = 0: it leaves the state untouched

    qc = _to_chunks(q, ct, N, C) * scale
    kc = _to_chunks(k, ct, N, C)
    vc = _to_chunks(v, ct, N, C)
    bc = _to_chunks(beta, ct, N, C)  # [B, H, N, C]
    lower = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
    strict = lower.tril(-1)

    if g is None:
        D = lower.to(ct)
        k_beta = kc * bc[..., None]
        q_dec, k_dec, chunk_decay = qc, kc, None
    else:
        gc = _to_chunks(g, ct, N, C)  # [B, H, N, C]
        b = gc.cumsum(-1)  # <= 0, relative to the chunk start
        # seg[i, j] = b_i - b_j = sum of g over (j, i], summed directly rather than subtracted, so
        # no cancellation: the gate gradients stay accurate under strong forgetting in fp32.
        seg = gc[..., :, None].expand(*gc.shape, C).masked_fill(~strict, 0.0).cumsum(-2)
        D = torch.exp(seg.masked_fill(~lower, float("-inf")))
        eb = torch.exp(b)
        k_beta = kc * (bc * eb)[..., None]
        q_dec = qc * eb[..., None]
        k_dec = kc * torch.exp(seg[..., -1, :])[..., None]  # exp(b_c - b_j)
        chunk_decay = eb[..., -1]  # [B, H, N]

    # UT transform: (I + A) [W U] = [diag(β) (K ⊙ e^b), diag(β) V], a unit-lower-triangular solve.
    A = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * D).tril(-1)
    eye = torch.eye(C, dtype=ct, device=dev)
    WU = torch.linalg.solve_triangular(eye + A, torch.cat([k_beta, vc * bc[..., None]], -1),
                                       upper=False, unitriangular=True)
    W, U = WU[..., :K], WU[..., K:]
    qk = (qc @ kc.transpose(-1, -2)) * D  # D is zero above the diagonal

    S = torch.zeros(B, H, K, V, dtype=ct, device=dev) if initial_state is None else initial_state.to(ct)
    # unbind, not U[:, :, n]: each indexing op's backward would fill a zero tensor of the whole
    # sequence (quadratic in T); unbind's backward is one stack.
    Us, Ws, Ks = U.unbind(2), W.unbind(2), k_dec.transpose(-1, -2).unbind(2)
    decays = None if chunk_decay is None else chunk_decay[..., None, None].unbind(2)
    entering, corrected = [], []
    for n in range(N):
        entering.append(S)
        vn = Us[n] - Ws[n] @ S
        corrected.append(vn)
        S = Ks[n] @ vn + (S if decays is None else decays[n] * S)
    S0 = torch.stack(entering, 2)  # [B, H, N, K, V]
    Vp = torch.stack(corrected, 2)  # [B, H, N, C, V]
    o = q_dec @ S0 + qk @ Vp
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).to(q.dtype)
    return o, (S if output_final_state else None)
