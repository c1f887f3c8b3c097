"""The fused sigmoid output gate (G1) against its float64 reference: Triton through the interpreter
(TRITON_INTERPRET=1 before triton is imported) and the torch form, headwise and elementwise, on
strided views like the mixer's (q and the gate are slices of one projection output)."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from attnzoo.ops.gate import sigmoid_output_gate  # noqa: E402


def views(B, T, H, D, W, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qx = torch.randn(B, T, H, D + W, generator=gen).to(dtype)  # one projection: [q | gate] per head
    o = torch.randn(B, T + 1, H, D, generator=gen).to(dtype)[:, 1:]  # a non-contiguous attention output
    return o, qx[..., D:]


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3)])
@pytest.mark.parametrize("W", [1, 8], ids=["headwise", "elementwise"])
def test_gate_forward_and_backward_match_reference(impl, dtype, tol, W):
    B, T, H, D = 2, 5, 3, 8
    o, gate = views(B, T, H, D, W, dtype)
    dy = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(1))
    outs = []
    for im, dt in ((impl, dtype), ("reference", torch.float64)):
        oo, gg = (t.detach().to(dt).requires_grad_(True) for t in (o, gate))
        y = sigmoid_output_gate(oo, gg, impl=im)
        y.backward(dy.to(dt))
        outs.append((y, oo.grad, gg.grad))
    (y, do, dg), (yr, dor, dgr) = outs
    assert y.dtype == dtype and y.shape == (B, T, H, D) and y.is_contiguous() and dg.shape == gate.shape
    for a, b in ((y, yr), (do, dor), (dg, dgr)):
        assert ((a.double() - b).abs().max() / b.abs().max()).item() < tol


def test_gate_refuses_bad_shapes():
    o, gate = views(1, 2, 2, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="gate"):
        sigmoid_output_gate(o, gate)
    with pytest.raises(ValueError, match="floating"):
        sigmoid_output_gate(o, gate[..., :1].long())
