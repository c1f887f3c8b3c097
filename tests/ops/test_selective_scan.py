"""Selective scan: the chunked torch scan == the loop over time (forward and gradients)."""

import pytest
import torch

from attnzoo.ops.scan import selective_scan
from attnzoo.ops.scan.chunk import chunk_selective_scan


def make(Bsz=2, T=21, D=6, N=4, dtype=torch.float64, seed=0, strength=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    u = r(Bsz, T, D)
    delta = torch.nn.functional.softplus(r(Bsz, T, D) - 1) * strength
    A = -torch.exp(r(D, N))
    B, C = r(Bsz, T, N), r(Bsz, T, N)
    Dskip = r(D)
    h0 = r(Bsz, D, N)
    return [t.to(dtype) for t in (u, delta, A, B, C, Dskip, h0)]


@pytest.mark.parametrize("T", [1, 7, 8, 9, 63, 65])
@pytest.mark.parametrize("strength", [0.01, 1.0, 20.0])
def test_chunked_equals_reference_fp64(T, strength):
    u, delta, A, B, C, D, h0 = make(T=T, strength=strength, seed=T)
    y1, s1 = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, impl="reference")
    y2, s2 = chunk_selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, chunk_size=8)
    assert torch.allclose(y1, y2, rtol=1e-10, atol=1e-10)
    assert torch.allclose(s1, s2, rtol=1e-10, atol=1e-10)
    y3, s3 = chunk_selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True)  # sqrt(T)
    assert torch.allclose(y1, y3, rtol=1e-10, atol=1e-10) and torch.allclose(s1, s3, rtol=1e-10, atol=1e-10)


def test_gradients_agree_including_initial_state():
    ins = [t.requires_grad_() for t in make(T=19, seed=3)]
    g = torch.Generator().manual_seed(4)
    wy = torch.randn(2, 19, 6, generator=g, dtype=torch.float64)
    ws = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    grads = []
    for impl in ("reference", "torch"):
        u, delta, A, B, C, D, h0 = ins
        y, s = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, impl=impl)
        grads.append(torch.autograd.grad((y * wy).sum() + (s * ws).sum(), ins))
    for name, ga, gb in zip(("u", "delta", "A", "B", "C", "D", "h0"), *grads):
        assert torch.allclose(ga, gb, rtol=1e-9, atol=1e-9), name


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_low_precision_inputs_keep_fp32_state(dtype, tol):
    u, delta, A, B, C, D, _h0 = make(T=70, seed=5)
    y_ref, _ = selective_scan(u, delta, A, B, C, D, impl="reference")
    lo = [t.to(dtype) for t in (u, delta, A, B, C, D)]
    y, s = selective_scan(*lo, output_final_state=True, impl="torch")
    assert y.dtype == dtype and s.dtype == torch.float32
    rel = ((y.double() - y_ref).norm() / y_ref.norm()).item()
    assert rel < tol, rel


def test_zero_delta_steps_leave_the_state_unchanged():
    u, delta, A, B, C, _D, h0 = make(T=10, seed=6)
    delta[:, 3:6] = 0
    _, s_all = selective_scan(u, delta, A, B, C, initial_state=h0, output_final_state=True)
    keep = [0, 1, 2, 6, 7, 8, 9]
    _, s_sub = selective_scan(u[:, keep], delta[:, keep], A, B[:, keep], C[:, keep], initial_state=h0,
                              output_final_state=True)
    assert torch.allclose(s_all, s_sub, atol=1e-12)


def test_state_split_continues():
    u, delta, A, B, C, D, _h0 = make(T=30, seed=7)
    y, _ = selective_scan(u, delta, A, B, C, D)
    y1, s = selective_scan(u[:, :11], delta[:, :11], A, B[:, :11], C[:, :11], D, output_final_state=True)
    y2, _ = selective_scan(u[:, 11:], delta[:, 11:], A, B[:, 11:], C[:, 11:], D, initial_state=s)
    assert torch.allclose(torch.cat([y1, y2], 1), y, atol=1e-12)


def test_bad_shapes_raise():
    u, delta, A, B, C, _, h0 = make()
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:-1], B, C)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[:, :-1], C)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(u, delta, A, B, C, initial_state=h0[:1])
    with pytest.raises(ValueError, match="impl"):
        selective_scan(u, delta, A, B, C, impl="cuda-magic")
