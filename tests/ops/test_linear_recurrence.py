"""linear_recurrence: the log-depth scan against the loop, real and complex, with an initial state,
forward and gradients, and a check that the partial products stay finite over long strong decays."""

import pytest
import torch

from attnzoo.ops.scan.linear_recurrence import linear_recurrence


def _ab(B=2, T=37, N=5, complex_pairs=False, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, N, 2) if complex_pairs else (B, T, N)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    if complex_pairs:                       # |a| <= 1: a magnitude in [0, 1) times a unit phase
        r, phi = a[..., 0], a[..., 1] * 6.3
        a = torch.stack([r * phi.cos(), r * phi.sin()], -1)
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("complex_pairs", [False, True])
@pytest.mark.parametrize("T", [1, 2, 37, 64])
def test_scan_matches_loop_with_initial_state(complex_pairs, T):
    a, b = _ab(T=T, complex_pairs=complex_pairs)
    h0 = torch.randn(b[:, 0].shape, dtype=torch.float64)
    h_ref, hT_ref = linear_recurrence(a, b, initial_state=h0, complex_pairs=complex_pairs, impl="reference")
    h, hT = linear_recurrence(a, b, initial_state=h0, complex_pairs=complex_pairs, impl="torch")
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hT, hT_ref, rtol=1e-12, atol=1e-12)
    h32, _ = linear_recurrence(a.float(), b.float(), initial_state=h0.float(), complex_pairs=complex_pairs)
    assert h32.dtype == torch.float32 and (h32.double() - h_ref).abs().max() < 1e-5


def test_complex_pairs_are_complex_products():
    a, b = _ab(T=9, complex_pairs=True)
    ac, bc = torch.complex(a[..., 0], a[..., 1]), torch.complex(b[..., 0], b[..., 1])
    h = torch.zeros_like(bc[:, 0])
    for t in range(9):
        h = ac[:, t] * h + bc[:, t]
    _, hT = linear_recurrence(a, b, complex_pairs=True)
    torch.testing.assert_close(torch.complex(hT[..., 0], hT[..., 1]), h)


@pytest.mark.parametrize("complex_pairs", [False, True])
def test_gradients_match_loop(complex_pairs):
    a, b = (t.requires_grad_(True) for t in _ab(T=21, complex_pairs=complex_pairs))
    h0 = torch.randn(b[:, 0].shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(b.shape, dtype=torch.float64)
    kw = {"initial_state": h0, "complex_pairs": complex_pairs}
    g_ref = torch.autograd.grad((linear_recurrence(a, b, impl="reference", **kw)[0] * w).sum(), (a, b, h0))
    g = torch.autograd.grad((linear_recurrence(a, b, impl="torch", **kw)[0] * w).sum(), (a, b, h0))
    for x, y in zip(g, g_ref):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_strong_decay_over_a_long_sequence_stays_finite():
    a = torch.full((1, 4096, 3), 1e-3)
    b = torch.randn(1, 4096, 3)
    h, _ = linear_recurrence(a, b)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h[:, 1:], b[:, 1:] + 1e-3 * b[:, :-1], rtol=1e-4, atol=1e-5)   # + O(a^2 b)


def test_bad_shapes_raise():
    a, b = _ab()
    with pytest.raises(ValueError, match="a and b"):
        linear_recurrence(a, b[..., :2])
    with pytest.raises(ValueError, match="initial_state"):
        linear_recurrence(a, b, initial_state=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\[B, T, N, 2\]"):
        linear_recurrence(a, b, complex_pairs=True)
