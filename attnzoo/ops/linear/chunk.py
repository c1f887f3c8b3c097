"""Chunked gated linear attention in plain torch: fast on CPU, differentiated by autograd.

Papers: Yang, Wang, Shen, Panda, Kim (2023), "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635 (the chunkwise form and the secondary chunking of
a vector gate); Katharopoulos, Vyas, Pappas, Fleuret (2020), "Transformers are RNNs",
arXiv:2006.16236 (no gate); Sun et al. (2023), "Retentive Network", arXiv:2307.08621 (constant
per-head decay g_gamma).

    o, S = chunk_gated_linear_attention(q, k, v, g=None, *, g_gamma=None, scale,
                                        initial_state=None, output_final_state=False, chunk_size=64)

q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H] (scalar gate) or [B, T, H, K] (vector gate), in
log space (<= 0), or None; g_gamma [H] or None; initial_state [B, H, K, V]. Returns o [B, T, H, V]
in q's dtype and the final state [B, H, K, V] in float32 (float64 for float64 inputs) or None.
Same semantics as the reference loop (reference.py):

    S_t = diag(exp(g_t + g_gamma)) S_{t-1} + k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

Algorithm (CHUNKED.md section 1). T is cut into chunks of C tokens (the last one zero-padded: a
step with g = 0, k = v = 0 leaves the state as it is). Inside a chunk, b_i = Σ_{j<=i} g_j is the
cumulative log gate from the chunk start, and with S_0 the state entering the chunk

    o_i = (q_i ⊙ e^{b_i})ᵀ S_0 + Σ_{j<=i} A_ij v_j,   A_ij = Σ_k q_ik k_jk e^{b_ik − b_jk}
    S_C = diag(e^{b_C}) S_0 + Σ_j (k_j ⊙ e^{b_C − b_j}) v_jᵀ

All chunks' local terms are batched matrix products; the states are then passed by a short loop
over chunks (T / C steps, not T). Every exponent is <= 0 as computed, so nothing overflows however
strongly the gate forgets:
- scalar gate: A = (Q Kᵀ) ⊙ exp(b_i − b_j), the exponent masked to −inf above the diagonal
  *before* exp;
- vector gate: sub-chunks of s <= 16 tokens. Diagonal s x s blocks are pairwise per channel;
  the block of sub-chunk I against all earlier keys is factorised around the reference row
  r = the last token before sub-chunk I, as (q_i ⊙ e^{b_i − b_r}) · (k_j ⊙ e^{b_r − b_j}),
  where both exponents are <= 0 because j <= r < i.
Arithmetic is in float32 for bf16/fp16/fp32 inputs and float64 for float64 inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.linear.api import check_gla_inputs
from attnzoo.ops.linear.reference import compute_dtype

SUB_CHUNK = 16  # longest sub-chunk of a vector gate (pairwise diagonal blocks cost s·K per token)


def _largest_divisor_at_most(n: int, cap: int) -> int:
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def _chunk_length(T: int, chunk_size: int) -> int:
    """Chunk length actually used: chunk_size, or less when the whole sequence is shorter."""
    if T >= chunk_size:
        return chunk_size
    if T <= SUB_CHUNK:
        return T
    return min(chunk_size, -(-T // SUB_CHUNK) * SUB_CHUNK)


def _combined_log_gate(g, g_gamma, shape, ct):
    """Log gate g + g_gamma in dtype ct: [B, T, H] (scalar), [B, T, H, K] (vector) or None."""
    B, T, H, _ = shape
    if g is None and g_gamma is None:
        return None
    if g is None:
        return g_gamma.to(ct).expand(B, T, H)
    gl = g.to(ct)
    if g_gamma is not None:
        gam = g_gamma.to(ct)
        gl = gl + (gam[:, None] if gl.dim() == 4 else gam)
    return gl


def _to_chunks(x, N: int, C: int):
    """[B, T, H, ...] -> [B, H, N, C, ...], zero-padded along T to N·C."""
    x = x.transpose(1, 2)
    pad = N * C - x.shape[2]
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(*x.shape[:2], N, C, *x.shape[3:])


def _causal(n: int, device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def _vector_gate_intra(q, k, v, b, sub: int):
    """Σ_{j<=i} A_ij v_j inside each chunk for a vector gate. q, k, b [..., C, K]; v [..., C, V]."""
    *lead, C, K = q.shape
    V = v.shape[-1]
    nS = C // sub
    qs, ks, bs = (x.reshape(*lead, nS, sub, K) for x in (q, k, b))
    vs = v.reshape(*lead, nS, sub, V)
    # diagonal sub-blocks, pairwise per channel: exponent b_i − b_j (i >= j) masked before exp
    tri = _causal(sub, q.device)[..., None]
    decay = (bs[..., :, None, :] - bs[..., None, :, :]).masked_fill(~tri, float("-inf")).exp()
    A_diag = (qs[..., :, None, :] * ks[..., None, :, :] * decay).sum(-1)  # [..., nS, s, s]
    o = (A_diag @ vs).reshape(*lead, C, V)
    if nS == 1:
        return o
    # sub-chunk I >= 1 against keys j < I·s, factorised around r = I·s − 1
    b_ref = bs[..., :-1, -1, :]  # [..., nS-1, K]
    q_ref = qs[..., 1:, :, :] * (bs[..., 1:, :, :] - b_ref[..., None, :]).exp()  # [..., nS-1, s, K]
    n_keys = C - sub
    j = torch.arange(n_keys, device=q.device)
    before = j[None, :] < (torch.arange(1, nS, device=q.device) * sub)[:, None]  # [nS-1, C-s]
    expo = (b_ref[..., :, None, :] - b[..., None, :n_keys, :]).masked_fill(~before[..., None], float("-inf"))
    k_ref = k[..., None, :n_keys, :] * expo.exp()  # [..., nS-1, C-s, K]
    A_off = q_ref @ k_ref.transpose(-1, -2)  # [..., nS-1, s, C-s]
    o_off = (A_off @ v[..., None, :n_keys, :]).reshape(*lead, C - sub, V)
    return o + F.pad(o_off, (0, 0, sub, 0))


def chunk_gated_linear_attention(
    q, k, v, g=None, *, g_gamma=None, scale, initial_state=None, output_final_state=False, chunk_size=64,
):
    check_gla_inputs(q, k, v, g, g_gamma, initial_state, normalize=False)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, g, initial_state)
    C = _chunk_length(T, chunk_size)
    N = -(-T // C)
    qc = _to_chunks(q.to(ct) * scale, N, C)  # [B, H, N, C, K]
    kc = _to_chunks(k.to(ct), N, C)
    vc = _to_chunks(v.to(ct), N, C)  # [B, H, N, C, V]
    gate = _combined_log_gate(g, g_gamma, q.shape, ct)
    causal = _causal(C, q.device)

    if gate is None:  # plain linear attention
        o = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0) @ vc
        k_out, q_in, chunk_decay = kc, qc, None
    elif gate.dim() == 3:  # scalar gate per head
        b = _to_chunks(gate, N, C).cumsum(-1)  # [B, H, N, C]
        pair = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        o = ((qc @ kc.transpose(-1, -2)) * pair) @ vc
        k_out = kc * (b[..., -1:] - b).exp()[..., None]
        q_in = qc * b.exp()[..., None]
        chunk_decay = b[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
    else:  # vector gate per key channel
        b = _to_chunks(gate, N, C).cumsum(-2)  # [B, H, N, C, K]
        o = _vector_gate_intra(qc, kc, vc, b, _largest_divisor_at_most(C, SUB_CHUNK))
        k_out = kc * (b[..., -1:, :] - b).exp()
        q_in = qc * b.exp()
        chunk_decay = b[..., -1, :].exp()[..., None]  # [B, H, N, K, 1]

    S_local = k_out.transpose(-1, -2) @ vc  # [B, H, N, K, V]: each chunk's own contribution
    S = torch.zeros(B, H, K, V, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    entering = []
    for n in range(N):
        entering.append(S)
        S = (S if chunk_decay is None else chunk_decay[:, :, n] * S) + S_local[:, :, n]
    o = o + q_in @ torch.stack(entering, 2)
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).contiguous().to(q.dtype)
    return o, (S if output_final_state else None)
