"""Vector-gate chunks of gated linear attention as one assembled intra-chunk matrix, forward and
hand-written backward (the fast path of chunk.py for chunk lengths b·2^m, b <= 4: e.g. 64, 16, 24).

Paper: Yang, Wang, Shen, Panda, Kim (2023), "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635 (chunkwise form, secondary chunking). Math:
CHUNKED.md section 1.

Per chunk (rows r of [R, C, K]), b the cumulative log gate from the chunk start:

    o_i = Σ_{j<=i} A_ij v_j + (q_i ⊙ e^{b_i})ᵀ S_0,    A_ij = Σ_k q_ik k_jk e^{b_ik − b_jk}.

The chunk is cut into finest blocks of nb tokens (nb <= 4). Every exponent is assembled from sums
of gates taken directly, each factor <= 1:
- inside a finest block, cq_i = Σ_{l<=i} g_l and ck_j = Σ_{l>j} g_l (block-local), giving
  qE = q ⊙ e^{cq} and kE = k ⊙ e^{ck} once for all uses;
- block totals tb; a query's offset from a reference point is a sum of whole-block totals
  (e.g. e^{b_i} = e^{cq_i} · e^{Σ_{blocks before} tb}).
A pair (i, j) in different finest blocks is covered by exactly one halving level: the smallest
block of P = nb·2^m tokens that holds both, with i in its second half and j in its first, where
e^{b_i − b_j} = e^{b_i − b_mid} · e^{b_mid − b_j} (q_ref @ k_endᵀ: one batched product per level).
Pairs inside a finest block go along the band j = i − d with decays multiplied from per-step
factors e^{g}. All of it is written into one lower-triangular A [R, C, C], so the outputs are one
product A @ V (and the backward one dA = dO Vᵀ, dV = Aᵀ dO).

Backward: dA's regions give each level's dq_ref, dk_end; the gradient of each exponent (factor ⊙
its gradient) is summed over the steps it spans: inside a block by a running sum, across blocks
on the small [R, C/nb, K] grid of block totals. No cancellation of large terms.
"""

from __future__ import annotations

from attnzoo.ops.common.gate_sums import add_prefix_excl_, add_revcumsum_, prefix_excl, suffix_excl
from attnzoo.ops.linear.chunk_intra import level_sizes


def assembled_plan(C: int):
    """(halving parents, finest block length) when every level halves, else None."""
    levels, nb = level_sizes(C)
    if any(P != 2 * s for P, s in levels):
        return None
    return [P for P, _ in levels], nb


def _blocks_diag(A, n: int):
    """[R, C, C] -> the diagonal blocks of n x n as a strided view [R, C // n, n, n]."""
    R, C, _ = A.shape
    return A.view(R, C // n, n, C // n, n).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)


def vector_forward(q, k, g, plan):
    """q, k, g [R, C, K] -> (A [R, C, C], q_in = q ⊙ e^b, k_out = k ⊙ e^{b_C − b}, decay e^{b_C} [R, K], saved)."""
    parents, nb = plan
    R, C, K = q.shape
    M = C // nb
    gb = g.view(R, M, nb, K)
    cq = gb.cumsum(2)
    tb = cq[:, :, -1].clone()  # block totals [R, M, K]
    E4q = cq.exp_()
    E4k = suffix_excl(gb, 2).exp_()
    qE = q.view(R, M, nb, K) * E4q
    kE = k.view(R, M, nb, K) * E4k
    eoq, eok = prefix_excl(tb, 1).exp_(), suffix_excl(tb, 1).exp_()  # chunk start / end offsets
    q_in = (qE * eoq[:, :, None]).view(R, C, K)
    k_out = (kE * eok[:, :, None]).view(R, C, K)
    decay = tb.sum(1).exp_()
    A = q.new_zeros(R, C, C)
    bd = _blocks_diag(A, nb)
    bd.diagonal(0, -2, -1).copy_((q * k).sum(-1).view(R, M, nb))  # i = j
    qb, kb = q.view(R * M, nb, K), k.view(R * M, nb, K)
    a, E, band = gb.reshape(R * M, nb, K).exp(), None, []
    for d in range(1, nb):  # i − j = d inside a block: decay Π_{j<l<=i} e^{g_l}
        E = a[:, 1:] if E is None else E[:, 1:] * a[:, 1:nb - d + 1]
        qkE = qb[:, d:] * kb[:, :nb - d] * E
        bd.diagonal(-d, -2, -1).copy_(qkE.sum(-1).view(R, M, nb - d))
        band.append((E, qkE))
    levels = []
    for P in parents:
        h, nP, hb = P // 2, C // P, P // 2 // nb
        tbP = tb.view(R, nP, 2, hb, K)
        eq_l = prefix_excl(tbP[:, :, 1], 2).exp_()  # second half: blocks from the midpoint
        ek_l = suffix_excl(tbP[:, :, 0], 2).exp_()  # first half: blocks up to the midpoint
        q_ref = qE.view(R, nP, 2, hb, nb, K)[:, :, 1] * eq_l[..., None, :]
        k_end = kE.view(R, nP, 2, hb, nb, K)[:, :, 0] * ek_l[..., None, :]
        Al = q_ref.view(R * nP, h, K) @ k_end.view(R * nP, h, K).transpose(-1, -2)
        _blocks_diag(A, P)[:, :, h:, :h].copy_(Al.view(R, nP, h, h))
        levels.append((P, eq_l, ek_l, q_ref, k_end))
    return A, q_in, k_out, decay, (plan, qE, kE, E4q, E4k, eoq, eok, band, levels)


def vector_backward(saved, q, k, q_in, k_out, dA, dq_in, dk_out, d_decay):
    """Gradients of q, k, g [R, C, K] from dA [R, C, C], dq_in, dk_out [R, C, K] and the
    gradient of the exponent of the chunk decay, d_decay [R, K] (= rowsum(S_0 ⊙ dS_C) ⊙ e^{b_C})."""
    (parents, nb), qE, kE, E4q, E4k, eoq, eok, band, levels = saved
    R, C, K = q.shape
    M = C // nb
    # inter-chunk factors: q_in = qE ⊙ e^{Σ earlier blocks}, k_out = kE ⊙ e^{Σ later blocks}, decay
    dqE = dq_in.view(R, M, nb, K) * eoq[:, :, None]
    dkE = dk_out.view(R, M, nb, K) * eok[:, :, None]
    dtb = d_decay[:, None].expand(R, M, K).clone()
    dtb += suffix_excl(dq_in.mul_(q_in).view(R, M, nb, K).sum(2), 1)
    dtb += prefix_excl(dk_out.mul_(k_out).view(R, M, nb, K).sum(2), 1)
    for (P, eq_l, ek_l, q_ref, k_end) in levels:
        h, nP, hb = P // 2, C // P, P // 2 // nb
        dAl = _blocks_diag(dA, P)[:, :, h:, :h].reshape(R * nP, h, h)
        dq_ref = (dAl @ k_end.view(R * nP, h, K)).view(R, nP, hb, nb, K)
        dk_end = (dAl.transpose(-1, -2) @ q_ref.view(R * nP, h, K)).view(R, nP, hb, nb, K)
        dqE.view(R, nP, 2, hb, nb, K)[:, :, 1].addcmul_(dq_ref, eq_l[..., None, :])
        dkE.view(R, nP, 2, hb, nb, K)[:, :, 0].addcmul_(dk_end, ek_l[..., None, :])
        dtbP = dtb.view(R, nP, 2, hb, K)
        dtbP[:, :, 1] += suffix_excl(dq_ref.mul_(q_ref).sum(3), 2)
        dtbP[:, :, 0] += prefix_excl(dk_end.mul_(k_end).sum(3), 2)
    dq = (dqE * E4q).view(R, C, K)
    dk = (dkE * E4k).view(R, C, K)
    dg = dtb[:, :, None].expand(R, M, nb, K).contiguous()  # a block total spans all its steps
    add_revcumsum_(dg, dqE.mul_(qE), 2)  # e^{cq_i}: the steps of i's block up to i
    add_prefix_excl_(dg, dkE.mul_(kE), 2)  # e^{ck_j}: the steps of j's block after j
    # the pairs inside a block: i = j, then the band
    bd = _blocks_diag(dA, nb)
    dw0 = bd.diagonal(0, -2, -1).reshape(R, C, 1)
    dq.addcmul_(dw0, k)
    dk.addcmul_(dw0, q)
    qb, kb = q.view(R * M, nb, K), k.view(R * M, nb, K)
    dqb, dkb, dgb = dq.view(R * M, nb, K), dk.view(R * M, nb, K), dg.view(R * M, nb, K)
    for d, (E, qkE) in enumerate(band, start=1):
        dw = bd.diagonal(-d, -2, -1).reshape(R * M, nb - d, 1)
        dwE = dw * E
        dqb[:, d:].addcmul_(dwE, kb[:, :nb - d])
        dkb[:, :nb - d].addcmul_(dwE, qb[:, d:])
        pg = qkE * dw  # gradient of the pair's exponent: every step of its window
        for u in range(d):
            dgb[:, d - u:nb - u] += pg
    return dq, dk, dg.view(R, C, K)
