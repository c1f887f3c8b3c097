"""Checks shared by the mixer tests: gradients under random cotangents (kda, mesanet, gsa), the mixer's
torch path against its reference path (kda, mesanet, gated_deltaproduct, ttt_linear), and the fast mixer
against its dense reference build (moba, nsa)."""

from __future__ import annotations

import torch

F64 = torch.float64


def grads_with_random_cotangents(fn, ins, seed=5):
    """fn's outputs on fresh leaf copies of ins, then the gradients of the sum of <output, noise> (noise
    from a generator seeded with seed, drawn output by output, float64 cast to each output's dtype)."""
    ins = [t.detach().clone().requires_grad_(True) for t in ins]
    outs = fn(*ins)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype)).sum() for t in outs)
    return (*outs, *torch.autograd.grad(loss, ins))


def assert_paths_agree(build, T, tol, fields=("S",), mask=None, d_model=16):
    """build(impl) -> a float64 mixer (seeded, so both impls hold the same weights); x [2, T, d_model] and
    the cotangent w from generators seeded 1 and 2. impl "torch" and "reference": the output (zeroed
    where mask drops a token, when given), the state's fields and every parameter's gradient agree
    within tol."""
    x = torch.randn(2, T, d_model, generator=torch.Generator().manual_seed(1), dtype=F64)
    w = torch.randn(2, T, d_model, generator=torch.Generator().manual_seed(2), dtype=F64)
    outs = []
    for impl in ("torch", "reference"):
        m = build(impl)
        if mask is None:
            y, s = m(x, return_state=True)
        else:
            y, s = m(x, mask=mask, return_state=True)
            y = y * mask[..., None]
        outs.append((y, *(getattr(s, f) for f in fields), *torch.autograd.grad((y * w).sum(), list(m.parameters()))))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def check_reference_matches_fast(m, r, shape):
    """m: a float64 mixer, r: its impl="reference" build (m's weights are loaded into it); x and the
    cotangent w of shape [B, T, d_model], in that order from the global generator. Outputs agree within
    1e-10, the gradients of x and of every parameter within rtol 1e-9, atol 1e-10. Returns x, the two
    outputs and the two gradient tuples."""
    r.load_state_dict(m.state_dict())
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    w = torch.randn(*shape, dtype=F64)
    ys = [mm(x) for mm in (m, r)]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-10, atol=1e-10)
    g = [torch.autograd.grad((y * w).sum(), [x] + list(mm.parameters())) for y, mm in zip(ys, (m, r))]
    for a, b in zip(*g):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    return x, ys, g
