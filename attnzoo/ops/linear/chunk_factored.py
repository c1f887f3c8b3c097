"""Vector-gate chunks of gated linear attention in the factorised form, forward and hand-written
backward (the fast path of chunk.py for chunk lengths nb·2^m, nb <= 4: e.g. 64, 16).

Paper: Yang, Wang, Shen, Panda, Kim (2023), "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635 (§4: the chunkwise form with q ⊙ e^{b} and
k ⊙ e^{-b}). Math: CHUNKED.md section 1.

Per chunk (rows r of [R, C, K]), b the cumulative log gate from the chunk start (b_i <= 0,
decreasing in i):

    A_ij = Σ_k q_ik k_jk e^{b_ik − b_jk} = (q ⊙ e^{b})_i · (k ⊙ e^{−b})_j      (i >= j)

one batched product per chunk instead of chunk_vector.py's halving levels and band. e^{−b_j} grows
as the gate forgets, but row i only meets keys j <= i, where e^{−b_j} <= e^{−b_i}: a row is SAFE
when min_k b_ik >= −SAFE_LOG (its factors stay below e^{SAFE_LOG}; scaling does not change
float32's relative precision). Safety is decided per row from gates up to that row, so the choice
never looks ahead: outputs stay exactly causal. The keys' factor is clamped at e^{SAFE_LOG}, which
only touches keys that no safe row meets. A segment with unsafe rows also builds chunk_vector.py's
assembled A and takes those rows from it (their gradients from its backward). GLA's gate with the
paper's normaliser (logsigmoid(x)/16) gives chunk totals of a few units: every row is safe.

The inter-chunk factors are taken directly whatever the path: q_in = q ⊙ e^{b},
k_out = k ⊙ e^{Σ_{l>j} g_l} (a reverse sum of gates, not b_C − b_j), decay e^{b_C}.

Backward (dA = tril(dO Vᵀ) restricted to safe rows): with k_neg = k ⊙ e^{min(−b, SAFE_LOG)},

    dq_in += dA k_neg,   dk_neg = dAᵀ q_in,   dq = dq_in ⊙ e^{b},
    dk = dk_neg ⊙ e^{min(−b, SAFE_LOG)} + dk_out ⊙ e^{Σ_{l>j} g_l},
    dg_l = rowsum(S_0 ⊙ dS_C) e^{b_C} + Σ_{i>=l} (q_in ⊙ dq_in − k_neg ⊙ dk_neg)_i + Σ_{j<l} (k_out ⊙ dk_out)_j.

The middle sum cancels the pairs (i, j) that both lie at or after l, terms of the size of the
result times the chunk length: float32 keeps ~C·eps relative error there.
"""

from __future__ import annotations

import math

import torch

from attnzoo.ops.common.gate_sums import add_prefix_excl_, add_revcumsum_, suffix_excl
from attnzoo.ops.linear.chunk_vector import vector_backward, vector_forward

SAFE_LOG = 20.0  # largest decay (−log) a row of the factorised form spans


def factored_forward(q, k, g, plan):
    """q, k, g [R, C, K] -> (A [R, C, C] lower-triangular, q_in = q ⊙ e^b, k_out = k ⊙ e^{b_C − b},
    decay e^{b_C} [R, K], saved for factored_backward). plan: chunk_vector.assembled_plan(C), used
    for the rows that are not safe."""
    b = g.cumsum(1)
    safe = b.amin(-1) >= -SAFE_LOG  # [R, C]
    eb = b.exp_()
    q_in = q * eb
    eneg = eb.clamp_min(math.exp(-SAFE_LOG)).reciprocal_()
    k_neg = k * eneg
    ea = suffix_excl(g, 1).exp_()
    k_out = k * ea
    decay = eb[:, -1].clone()
    A = torch.bmm(q_in, k_neg.transpose(1, 2)).tril_()
    vsaved = None
    if not bool(safe.all()):
        A_s, _, _, _, vsaved = vector_forward(q, k, g, plan)
        A = torch.where(safe[..., None], A, A_s)
    return A, q_in, k_out, decay, (eb, eneg, ea, k_neg, safe, vsaved)


def factored_backward(saved, q, k, q_in, k_out, dA, dq_in, dk_out, d_decay):
    """Gradients of q, k, g [R, C, K] from dA [R, C, C] (lower-triangular), the inter-chunk terms
    dq_in, dk_out [R, C, K] (updated in place) and d_decay [R, K] = rowsum(S_0 ⊙ dS_C) e^{b_C}."""
    eb, eneg, ea, k_neg, safe, vsaved = saved
    R, C, K = q_in.shape
    dA_s = None
    if vsaved is not None:  # unsafe rows: the assembled path's backward on their part of dA
        dA_s = dA.masked_fill(safe[..., None], 0.0)
        dA = dA.masked_fill_(~safe[..., None], 0.0)
    dq_in.baddbmm_(dA, k_neg)
    dk_neg = torch.bmm(dA.transpose(1, 2), q_in)
    dq = dq_in * eb
    dk = dk_neg * eneg
    dk.addcmul_(dk_out, ea)
    dg = d_decay[:, None].expand(R, C, K).contiguous()
    add_revcumsum_(dg, dq_in.mul_(q_in).sub_(dk_neg.mul_(k_neg)), 1)
    add_prefix_excl_(dg, dk_out.mul_(k_out), 1)
    if dA_s is not None:
        z = torch.zeros_like(q_in)
        dq2, dk2, dg2 = vector_backward(vsaved, q, k, z, z, dA_s, z.clone(), z.clone(), d_decay.new_zeros(R, K))
        dq += dq2
        dk += dk2
        dg += dg2
    return dq, dk, dg
