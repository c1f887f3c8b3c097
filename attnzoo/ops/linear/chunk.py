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
- scalar gate: A = (Q Kᵀ) ⊙ exp(b_i − b_j), the exponent (Σ_{j<l<=i} g_l) set to −inf above
  the diagonal *before* exp;
- vector gate: nested sub-chunks (C -> 16 -> 4 tokens). At each level, the queries of sub-chunk I
  meet the keys of the earlier sub-chunks J < I of the same parent block through
  e^{b_i − b_j} = e^{b_i − b_end(I−1)} · e^{b_end(I−1) − b_end(J)} · e^{b_end(J) − b_j}
  (three factors <= 1: per query, per pair of sub-chunks, per key), i.e. a matrix product of
  decayed queries and keys; inside the 4-token blocks the pairs are walked along the band j = i − d
  with the decay built as a product of per-step factors e^{g} <= 1.
Exponents are sums of gates taken directly (never b_i − b_j of two large cumulative sums), and
are exactly 0 where the decay is 1, so float32 gate gradients stay accurate under strong decay.
Arithmetic is in float32 for bf16/fp16/fp32 inputs and float64 for float64 inputs.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from attnzoo.ops.linear.api import check_gla_inputs
from attnzoo.ops.linear.reference import compute_dtype

SUB_CHUNK = 16  # chunks shorter than this are not padded
# nested sub-chunk lengths of a vector gate; the last one's diagonal blocks are pairwise (cost s·K per token)
SUB_CHUNKS = (16, 4)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous. The gradient of o arrives as
    a transposed view; batched matmuls on it would otherwise copy matrix by matrix."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


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
    return x.reshape(*x.shape[:2], N, C, *x.shape[3:]).contiguous()  # strided batches make bmm slow


def _pair_exponent_fill(n: int, dtype, device) -> torch.Tensor:
    """[n, n]: 0 on the diagonal (a constant, so no gradient that would have to cancel), −inf above."""
    return torch.zeros(n, n, dtype=dtype, device=device).masked_fill(
        torch.ones(n, n, dtype=torch.bool, device=device).triu(1), float("-inf"))


def _pairwise_decay(g, dim: int):
    """exp(b_i − b_j) for i > j, 1 for i = j, 0 for i < j, where b = cumsum(g) along `dim` (size n).

    The exponent is the segment sum Σ_{j<l<=i} g_l, summed directly (a cumsum down each column of
    a masked copy of g) rather than as b_i − b_j: no cancellation of large cumulative gates.
    g [..., n] -> [..., n, n] (scalar gate); g [..., n, K] -> [..., n, n, K] (vector gate)."""
    n = g.shape[dim]
    strict = torch.ones(n, n, dtype=torch.bool, device=g.device).tril(-1)
    fill = _pair_exponent_fill(n, g.dtype, g.device)
    if dim == -1:  # scalar gate
        seg = g[..., :, None].expand(*g.shape, n).masked_fill(~strict, 0.0).cumsum(-2)
        return torch.where(strict, seg, fill).exp()
    seg = g[..., :, None, :].expand(*g.shape[:-1], n, g.shape[-1]).masked_fill(~strict[..., None], 0.0).cumsum(-3)
    return torch.where(strict[..., None], seg, fill[..., None]).exp()


def _sum_after(g, dim: int):
    """Σ_{l > j} g_l along `dim` (= b_last − b_j, summed directly: exact 0 at the last position)."""
    suffix = g.flip(dim).cumsum(dim).flip(dim)
    n = g.shape[dim]
    return torch.cat([suffix.narrow(dim, 1, n - 1), torch.zeros_like(suffix.narrow(dim, 0, 1))], dim)


def _diagonal_blocks(q, k, v, g, s: int):
    """The part of Σ_{j<=i} A_ij v_j with j in i's own block of s tokens (q, k, g [..., C, K];
    v [..., C, V]), walked along the band j = i − d, d < s. The decay e^{b_i − b_j} is built as a
    product of per-step factors e^{g_l} <= 1 (no exp of a difference, nothing to overflow)."""
    C = q.shape[-2]
    a = g.exp()
    o = (q * k).sum(-1, keepdim=True) * v  # d = 0: no decay
    decay = None  # decay[i - d] = Π_{i-d < l <= i} a_l for i = d..C-1
    for d in range(1, s):
        decay = a[..., 1:, :] if decay is None else decay[..., 1:, :] * a[..., 1:C - d + 1, :]
        same_block = (torch.arange(d, C, device=q.device) % s >= d).to(q.dtype)  # j = i - d in i's block
        A_d = (q[..., d:, :] * k[..., :C - d, :] * decay).sum(-1) * same_block  # [..., C-d]
        o = o + F.pad(A_d[..., None] * v[..., :C - d, :], (0, 0, d, 0))
    return o


def _earlier_subchunks(q, k, v, g, sub: int):
    """Inside blocks of P tokens (q, k, g [..., P, K]; v [..., P, V]): the part of Σ_{j<=i} A_ij v_j
    from keys j in earlier sub-chunks (of `sub` tokens) than query i. With b the cumulative gate,
    I the query's sub-chunk, J < I the key's, and end(J) the last token of J:

        e^{b_i − b_j} = e^{b_i − b_end(I−1)} · e^{b_end(I−1) − b_end(J)} · e^{b_end(J) − b_j},

    three factors <= 1 (each exponent a sum of gates, summed directly): one per query, one per
    (I, J) pair of sub-chunks, one per key; then a matrix product. Returns [..., P, V]."""
    *lead, P, K = q.shape
    nS = P // sub
    qs, ks, gs = (x.reshape(*lead, nS, sub, K) for x in (q, k, g))
    q_ref = qs[..., 1:, :, :] * gs.cumsum(-2)[..., 1:, :, :].exp()  # [..., nS-1, sub, K]
    k_end = ks[..., :-1, :, :] * _sum_after(gs, -2)[..., :-1, :, :].exp()  # [..., nS-1, sub, K]
    between = _pairwise_decay(gs[..., :-1, :, :].sum(-2), dim=-2)  # [..., I-1, J, K], 0 for J > I-1
    k_ref = (between[..., :, :, None, :] * k_end[..., None, :, :, :]).reshape(*lead, nS - 1, P - sub, K)
    A = (q_ref @ k_ref.transpose(-1, -2)).reshape(*lead, P - sub, P - sub)  # queries sub.., keys ..P-sub
    return F.pad(A @ v[..., :P - sub, :], (0, 0, sub, 0))


def _vector_gate_intra(q, k, v, g):
    """Σ_{j<=i} A_ij v_j inside each chunk for a vector gate. q, k, g [..., C, K]; v [..., C, V].

    Nested sub-chunks (C -> <=16 -> <=4 tokens): each level adds the earlier sub-chunks of its
    parent block as a matrix product of decayed queries and keys; the smallest blocks are walked
    along their band. Gates are summed within blocks, so exponents stay small and <= 0."""
    *lead, C, _K = q.shape
    V = v.shape[-1]
    sizes = [C]
    for cap in SUB_CHUNKS:
        sizes.append(_largest_divisor_at_most(sizes[-1], cap))
    o = _diagonal_blocks(q, k, v, g, sizes[-1])
    for parent, sub in itertools.pairwise(sizes):
        if parent > sub:
            blocks = [x.reshape(*lead, C // parent, parent, x.shape[-1]) for x in (q, k, v, g)]
            o = o + _earlier_subchunks(*blocks, sub).reshape(*lead, C, V)
    return o


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
    if gate is None:  # plain linear attention
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        o = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0) @ vc
        k_out, q_in, chunk_decay = kc, qc, None
    elif gate.dim() == 3:  # scalar gate per head
        gc = _to_chunks(gate, N, C)  # [B, H, N, C]
        b = gc.cumsum(-1)
        o = ((qc @ kc.transpose(-1, -2)) * _pairwise_decay(gc, dim=-1)) @ vc
        k_out = kc * _sum_after(gc, -1).exp()[..., None]
        q_in = qc * b.exp()[..., None]
        chunk_decay = b[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
    else:  # vector gate per key channel
        gc = _to_chunks(gate, N, C)  # [B, H, N, C, K]
        b = gc.cumsum(-2)
        o = _vector_gate_intra(qc, kc, vc, gc)
        k_out = kc * _sum_after(gc, -2).exp()
        q_in = qc * b.exp()
        chunk_decay = b[..., -1, :].exp()[..., None]  # [B, H, N, K, 1]

    S_local = k_out.transpose(-1, -2) @ vc  # [B, H, N, K, V]: each chunk's own contribution
    S = torch.zeros(B, H, K, V, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    entering = []
    # unbind, not indexing: the backward of N index ops would allocate N full-size zero tensors
    decays = [None] * N if chunk_decay is None else chunk_decay.unbind(2)
    for S_n, decay_n in zip(S_local.unbind(2), decays):
        entering.append(S)
        S = (S if decay_n is None else decay_n * S) + S_n
    o = _ContiguousGrad.apply(o + q_in @ torch.stack(entering, 2))
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).contiguous().to(q.dtype)
    return o, (S if output_final_state else None)
