"""What the Triton op tests in tests/ops share: the relative error they compare with, and the check of a
torch.library custom op under a fullgraph compile. No triton here: each test file sets
TRITON_INTERPRET=1 before it imports triton or this module."""

from __future__ import annotations

import torch


def rel(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_compiled_matches_eager(loss, inputs, tol=1e-6, value=True):
    """loss(*leaves) -> a scalar, on leaf copies of inputs: eager, then under torch.compile (aot_eager,
    fullgraph); the gradients (and with value, the loss) agree within tol (relative)."""
    ins = [t.clone().requires_grad_(True) for t in inputs]
    eager = loss(*ins)
    ge = torch.autograd.grad(eager, ins)
    out = torch.compile(loss, backend="aot_eager", fullgraph=True)(*ins)
    gc = torch.autograd.grad(out, ins)
    if value:
        assert rel(out, eager) < tol
    for a, b in zip(gc, ge):
        assert rel(a, b) < tol
