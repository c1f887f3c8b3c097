"""Intra-chunk part of chunked gated linear attention, forward and hand-written backward.

Paper: Yang, Wang, Shen, Panda, Kim (2023), "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635 (chunkwise form, secondary chunking of a vector
gate). Math: CHUNKED.md section 1.

Inside a chunk (rows r of [R, C, ...]: one chunk of one batch/head each), with b the cumulative
log gate from the chunk start,

    o_i = Σ_{j<=i} A_ij v_j,      A_ij = Σ_k q_ik k_jk exp(b_ik − b_jk)

q, k, g [R, C, K] (vector gate) or g [R, C] (scalar gate); v [R, C, V]. Every exponent is a sum of
gates taken directly (a cumsum of masked gates, never b_i − b_j of two large cumulative sums) and
is <= 0, so nothing overflows however strongly the gate forgets, and float32 stays accurate.

Vector gate: nested levels (C -> <=16 -> <=4 -> 1 tokens). At a level with parent blocks of P
tokens cut into nS sub-chunks of s tokens, the queries of sub-chunk I meet the keys of the
earlier sub-chunks J < I of their parent block through three factors <= 1,

    e^{b_i − b_j} = e^{b_i − b_start(I)} · e^{Σ_{J<M<I} tot_M} · e^{b_end(J) − b_j},

per query (q_ref), per pair of sub-chunks (between), per key (k_end): one batched matrix product
per level. The pair i = j (no decay) is the last level. The backward differentiates each factor
directly (gate gradients are cumsums of products, no cancellation of large terms).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.gate_sums import (
    add_prefix_excl_,
    add_revcumsum_,
    pairwise_decay,
    pairwise_decay_grad,
    prefix_excl,
    revcumsum,
    suffix_excl,
)


def largest_divisor_at_most(n: int, cap: int) -> int:
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def level_sizes(C: int) -> tuple[list[tuple[int, int]], int]:
    """(parent, sub) block lengths of the nested levels of a vector gate, coarse to fine, and the
    length of the finest blocks (<= 4 tokens when C has the factors), whose pairs are walked along
    their band. Halving levels while the block is even (no factor between two halves), then one
    level of sub-chunks of <= 4 tokens for an odd block longer than 4."""
    levels, P = [], C
    while P > 4 and P % 2 == 0:
        levels.append((P, P // 2))
        P //= 2
    if P > 4:
        s = largest_divisor_at_most(P, 4)
        levels.append((P, s))
        P = s
    return levels, P


# ---------------------------------------------------------------- scalar gate (and no gate)

def scalar_intra_forward(q, k, v, g, o=None):
    """g [R, C] or None. Returns (o [R, C, V], A [R, C, C] with the decay, D or None); with o
    given, A @ v is added into it."""
    C = q.shape[-2]
    qk = q @ k.transpose(-1, -2)
    if g is None:
        A = qk.masked_fill_(~torch.ones(C, C, dtype=torch.bool, device=q.device).tril(), 0.0)
        D = None
    else:
        D = pairwise_decay(g, dim=-1)
        A = qk.mul_(D)
    return (A @ v if o is None else o.baddbmm_(A, v)), A, D


def scalar_intra_backward(q, k, v, A, D, do, dq, dk, dv, dg):
    """Adds the intra-chunk gradients into dq, dk, dv [R, C, *] and dg [R, C] (if D is given)."""
    dA = do @ v.transpose(-1, -2)
    dv.baddbmm_(A.transpose(-1, -2), do)
    if D is not None:
        dg.add_(pairwise_decay_grad(dA * A, dim=-1))
        dA.mul_(D)
    else:
        dA = dA.tril_()
    dq.baddbmm_(dA, k)
    dk.baddbmm_(dA.transpose(-1, -2), q)


# ---------------------------------------------------------------- vector gate

def _half_forward(q, k, v, g, P: int, o):
    """A level of two halves: queries of the second half of each block of P tokens against the
    keys of the first, e^{b_i − b_j} = e^{b_i − b_mid} · e^{b_mid − b_j} (no factor in between)."""
    R, C, K = q.shape
    V = v.shape[-1]
    h, L = P // 2, R * (C // P)
    qs, ks, gs = (x.view(L, 2, h, K) for x in (q, k, g))
    eq = gs[:, 1].cumsum(1).exp_()
    q_ref = qs[:, 1] * eq
    ek = suffix_excl(gs[:, 0], 1).exp_()
    k_end = ks[:, 0] * ek
    A = q_ref @ k_end.transpose(-1, -2)  # [L, h, h]
    o.view(L, 2, h, V)[:, 1] += A @ v.view(L, 2, h, V)[:, 0]
    return ("half", P, eq, q_ref, ek, k_end, A)


def _half_backward(saved, v, do, dq, dk, dv, dg):
    _, P, eq, q_ref, ek, k_end, A = saved
    L, h, K = q_ref.shape
    V = v.shape[-1]
    dos, v0 = do.view(L, 2, h, V)[:, 1], v.view(L, 2, h, V)[:, 0]
    dA = dos @ v0.transpose(-1, -2)
    dv.view(L, 2, h, V)[:, 0] += A.transpose(-1, -2) @ dos
    dq_ref = dA @ k_end
    dk_end = dA.transpose(-1, -2) @ q_ref
    dq.view(L, 2, h, K)[:, 1].addcmul_(dq_ref, eq)
    dk.view(L, 2, h, K)[:, 0].addcmul_(dk_end, ek)
    dgs = dg.view(L, 2, h, K)
    add_revcumsum_(dgs[:, 1], dq_ref.mul_(q_ref), 1)  # each query's factor spans the steps up to it
    add_prefix_excl_(dgs[:, 0], dk_end.mul_(k_end), 1)  # each key's factor spans the steps after it


def _level_forward(q, k, v, g, P: int, s: int, o):
    """One level of the vector gate (see module docstring); adds into o [R, C, V]. Returns what
    the backward needs."""
    R, C, K = q.shape
    V = v.shape[-1]
    nS, L = P // s, R * (C // P)
    qs, ks, gs = (x.reshape(L, nS, s, K) for x in (q, k, g))
    eq = gs[:, 1:].cumsum(2).exp()  # e^{b_i − b_start(I)}, queries of sub-chunks 1..nS-1
    q_ref = qs[:, 1:] * eq
    ek = suffix_excl(gs[:, :-1], 2).exp()  # e^{b_end(J) − b_j}, keys of sub-chunks 0..nS-2
    k_end = ks[:, :-1] * ek
    between = pairwise_decay(gs[:, :-1].sum(2), dim=-2)  # [L, I-1, J, K]
    k_ref = (between[:, :, :, None, :] * k_end[:, None]).reshape(L, nS - 1, (nS - 1) * s, K)
    A = (q_ref @ k_ref.transpose(-1, -2)).reshape(L, (nS - 1) * s, (nS - 1) * s)
    vk = v.reshape(L, P, V)[:, :P - s]
    o.view(L, P, V)[:, s:] += A @ vk
    return ("level", P, s, eq, q_ref, ek, k_end, between, k_ref, A)


def _level_backward(saved, v, do, dq, dk, dv, dg):
    _, P, s, eq, q_ref, ek, k_end, between, k_ref, A = saved
    L, nS1, _, K = q_ref.shape
    V = v.shape[-1]
    nS = nS1 + 1
    dos = do.reshape(L, P, V)[:, s:]
    vk = v.reshape(L, P, V)[:, :P - s]
    dA = dos @ vk.transpose(-1, -2)
    dv.view(L, P, V)[:, :P - s] += A.transpose(-1, -2) @ dos
    dA = dA.reshape(L, nS1, s, nS1 * s)
    dq_ref = dA @ k_ref  # [L, nS-1, s, K]
    dk_ref = (dA.transpose(-1, -2) @ q_ref).reshape(L, nS1, nS1, s, K)  # [L, I-1, J, s, K]
    dk_end = (dk_ref * between[:, :, :, None, :]).sum(1)
    dbetween = (dk_ref * k_end[:, None]).sum(3)
    dq.view(L, nS, s, K)[:, 1:] += dq_ref * eq
    dk.view(L, nS, s, K)[:, :-1] += dk_end * ek
    dgs = dg.view(L, nS, s, K)
    dgs[:, 1:] += revcumsum(dq_ref.mul_(q_ref), 2)
    dgs[:, :-1] += prefix_excl(dk_end.mul_(k_end), 2) + pairwise_decay_grad(dbetween.mul_(between), dim=-2)[:, :, None]


def _band_forward(q, k, v, g, P: int, o):
    """Pairs j < i inside blocks of P <= 4 tokens, walked along the band i − j = d: the decay is a
    product of d per-step factors e^{g} <= 1. Adds into o; returns what the backward needs."""
    R, C, K = q.shape
    V = v.shape[-1]
    L = R * (C // P)
    qb, kb, vb, ob = q.reshape(L, P, K), k.reshape(L, P, K), v.reshape(L, P, V), o.view(L, P, V)
    a = g.reshape(L, P, K).exp()
    E, saved = None, []
    for d in range(1, P):
        E = a[:, 1:] if E is None else E[:, 1:] * a[:, 1:P - d + 1]  # E[i] = Π_{i-d<l<=i} a_l, i = d..P-1
        qkE = qb[:, d:] * kb[:, :P - d] * E
        w = qkE.sum(-1, keepdim=True)  # [L, P-d, 1]
        ob[:, d:].addcmul_(w, vb[:, :P - d])
        saved.append((E, qkE, w))
    return P, saved


def _band_backward(band, q, k, v, do, dq, dk, dv, dg):
    P, saved = band
    R, C, K = q.shape
    V = v.shape[-1]
    L = R * (C // P)
    qb, kb, vb, dob = q.reshape(L, P, K), k.reshape(L, P, K), v.reshape(L, P, V), do.reshape(L, P, V)
    dqb, dkb, dvb, dgb = dq.view(L, P, K), dk.view(L, P, K), dv.view(L, P, V), dg.view(L, P, K)
    for d, (E, qkE, w) in enumerate(saved, start=1):
        dw = (dob[:, d:] * vb[:, :P - d]).sum(-1, keepdim=True)
        dvb[:, :P - d].addcmul_(w, dob[:, d:])
        dwE = dw * E
        dqb[:, d:].addcmul_(dwE, kb[:, :P - d])
        dkb[:, :P - d].addcmul_(dwE, qb[:, d:])
        pg = qkE * dw  # dL/d(exponent) of each pair: every step of the window gets it
        for u in range(d):
            dgb[:, d - u:P - u] += pg


def vector_intra_forward(q, k, v, g):
    """q, k, g [R, C, K]; v [R, C, V] -> (o [R, C, V], saved)."""
    levels, P = level_sizes(q.shape[-2])
    o = (q * k).sum(-1, keepdim=True) * v  # i = j: no decay
    band = _band_forward(q, k, v, g, P, o) if P > 1 else (P, [])
    saved = [_half_forward(q, k, v, g, Pl, o) if Pl == 2 * s else _level_forward(q, k, v, g, Pl, s, o)
             for Pl, s in levels]
    return o, (saved, band)


def vector_intra_backward(q, k, v, saved, do, dq, dk, dv, dg):
    """Adds the intra-chunk gradients into dq, dk, dv, dg [R, C, *]."""
    levels, band = saved
    dqk = (do * v).sum(-1, keepdim=True)
    dq.addcmul_(dqk, k)
    dk.addcmul_(dqk, q)
    dv.addcmul_((q * k).sum(-1, keepdim=True), do)
    _band_backward(band, q, k, v, do, dq, dk, dv, dg)
    for lv in levels:
        (_half_backward if lv[0] == "half" else _level_backward)(lv, v, do, dq, dk, dv, dg)
