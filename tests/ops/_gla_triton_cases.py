"""Inputs, the fresh-leaf forward and backward, and the comparisons with the float64 reference loop that
the Triton GLA tests (tests/ops/test_gla_triton*.py) share. No triton here: each test file sets
TRITON_INTERPRET=1 before it imports triton or this module."""

from __future__ import annotations

import torch

from attnzoo.ops.linear.reference import gated_linear_attention_reference as reference
from tests.ops._checks import rel

H = 2
TOL = {torch.float32: 1e-4, torch.float16: 5e-3}
GRAD_NAMES = ("dq", "dk", "dv", "dg", "dg_gamma", "dh0")


def make(B, T, gate, strength, dtype=torch.float32, seed=0, *, K=16, V=16, n_state=None, gamma_strength=None,
         cotangents=False):
    """q, k [B, T, H, K] and v [B, T, H, V] in dtype; g = −strength·U(0, 1), [B, T, H] for gate "scalar",
    [B, T, H, K] for "vector", None otherwise; g_gamma [H] = −gamma_strength·U(0, 1) (default: strength)
    for "gamma" and "scalar+gamma" (which also takes a scalar g, drawn after g_gamma); h0
    [n_state or B, H, K, V] in float32. With cotangents, do [B, T, H, V] and dS [n_state or B, H, K, V]
    follow from the same generator. Both gate shapes are drawn whatever the gate, so a seed gives the
    same q, k, v across gate kinds."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    q, k, v = r(B, T, H, K).to(dtype), r(B, T, H, K).to(dtype), r(B, T, H, V).to(dtype)
    g = {"scalar": -strength * u(B, T, H), "vector": -strength * u(B, T, H, K)}.get(gate)
    gs = strength if gamma_strength is None else gamma_strength
    g_gamma = -gs * u(H) if gate in ("gamma", "scalar+gamma") else None
    if gate == "scalar+gamma":
        g = -strength * u(B, T, H)
    h0 = r(n_state or B, H, K, V)
    if not cotangents:
        return q, k, v, g, g_gamma, h0
    return q, k, v, g, g_gamma, h0, r(B, T, H, V), r(n_state or B, H, K, V)


def fwd_bwd(fn, q, k, v, g, g_gamma, h0, do, dS, scale=None, **kw):
    """fn on fresh leaf copies (scale None: K ** -0.5), the final state returned; backward of o (with do)
    and of the final state (with dS). Returns o, S and the six gradients (None where the input is None)."""
    ins = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, g, g_gamma, h0)]
    o, S = fn(ins[0], ins[1], ins[2], ins[3], g_gamma=ins[4], scale=q.shape[-1] ** -0.5 if scale is None else scale,
              initial_state=ins[5], output_final_state=True, **kw)
    torch.autograd.backward([o, S], [do.to(o.dtype), dS])
    return o, S, [t.grad if t is not None else None for t in ins]


def reference_run(q, k, v, g, g_gamma, h0, do, dS, **kw):
    """fwd_bwd of the float64 reference loop on float64 copies."""
    d = lambda t: t.double() if t is not None else None  # noqa: E731
    return fwd_bwd(reference, *map(d, (q, k, v, g, g_gamma, h0, do, dS)), **kw)


def assert_close(got, want, tol, where=""):
    """Two fwd_bwd results: o, S and every gradient that `want` has (finite in `got`) within tol (relative)."""
    (o, S, grads), (o_r, S_r, grads_r) = got, want
    assert rel(o, o_r) < tol and rel(S, S_r) < tol, (where, rel(o, o_r), rel(S, S_r))
    for name, a, b in zip(GRAD_NAMES, grads, grads_r):
        if b is not None:
            assert a is not None and torch.isfinite(a).all(), (where, name)
            assert rel(a, b) < tol, (where, name, rel(a, b))


def assert_matches_reference(fn, inputs, do, dS, tol, **kw):
    """fn's output (in the inputs' dtype), final state (float32) and gradients against the reference
    loop's; inputs: q, k, v, g, g_gamma, h0; kw (scale) goes to both. Returns fn's fwd_bwd."""
    got = fwd_bwd(fn, *inputs, do, dS, **kw)
    assert got[0].dtype == inputs[0].dtype and got[1].dtype == torch.float32
    assert_close(got, reference_run(*inputs, do, dS, **kw), tol)
    return got


def assert_sequences_match_reference(got, q, k, v, g, h0, do, dS, cu_seqlens, tol=1e-4, outputs=True, scale=None):
    """got: fwd_bwd of packed sequences (B = 1, cu_seqlens, no g_gamma); each sequence's rows of o and
    dq, dk, dv, dg, and its S and dh0 rows, against the reference run on that sequence alone (outputs
    False: the gradients only). Empty sequences are skipped (the caller checks them)."""
    o, S, grads = got
    for n, (a, b) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        if a == b:
            continue
        part = lambda t: t[:, a:b].double()  # noqa: E731
        o_r, S_r, gr = fwd_bwd(reference, part(q), part(k), part(v), part(g), None, h0[n:n + 1].double(),
                               part(do), dS[n:n + 1].double(), scale=scale)
        if outputs:
            assert rel(o[:, a:b], o_r) < tol and rel(S[n:n + 1], S_r) < tol, (n, rel(o[:, a:b], o_r))
        for name, x, y in zip(GRAD_NAMES[:4], grads[:4], gr[:4]):
            assert rel(x[:, a:b], y) < tol, (n, name, rel(x[:, a:b], y))
        assert rel(grads[5][n:n + 1], gr[5]) < tol, n
