"""Element-wise linear recurrence, real or complex (HGRN, LRU-style diagonal RNNs):

    h_t = a_t ⊙ h_{t-1} + b_t          a, b [B, T, N] real, or [B, T, N, 2] complex as (Re, Im) pairs

`linear_recurrence(a, b, initial_state=h0, complex_pairs=False, impl=...)` returns (h [B, T, N(, 2)],
h_T). impl "reference": a loop over time; "torch" / "auto": a log-depth (Hillis-Steele) scan over the
associative pairs (a, b) ∘ (a', b') = (a' a, a' b + b') in ceil(log2 T) whole-tensor steps, so autograd
needs no custom backward. |a| <= 1 keeps every partial product bounded (they underflow to 0, never
overflow). Computes in float32 (float64 for float64 inputs) and returns that dtype.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.dispatch import resolve_impl


def _mul(x, y, complex_pairs):
    if not complex_pairs:
        return x * y
    return torch.stack([x[..., 0] * y[..., 0] - x[..., 1] * y[..., 1],
                        x[..., 0] * y[..., 1] + x[..., 1] * y[..., 0]], -1)


def _check(a, b, initial_state, complex_pairs):
    if a.shape != b.shape or a.dim() != (4 if complex_pairs else 3) or (complex_pairs and a.shape[-1] != 2):
        want = "[B, T, N, 2]" if complex_pairs else "[B, T, N]"
        raise ValueError(f"a and b must both be {want}, got {tuple(a.shape)} and {tuple(b.shape)}")
    want = (a.shape[0], *a.shape[2:])
    if initial_state is not None and tuple(initial_state.shape) != want:
        raise ValueError(f"initial_state must be {want}, got {tuple(initial_state.shape)}")


def linear_recurrence_reference(a, b, *, initial_state=None, complex_pairs=False):
    """The loop over time (same arguments and returns as `linear_recurrence`)."""
    ct = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.to(ct), b.to(ct)
    h = torch.zeros_like(b[:, 0]) if initial_state is None else initial_state.to(ct)
    hs = []
    for t in range(a.shape[1]):
        h = _mul(a[:, t], h, complex_pairs) + b[:, t]
        hs.append(h)
    return torch.stack(hs, 1), h


def _shift(x, s, fill):
    """x [B, T, ...] moved s steps later along T, the first s steps filled with `fill`."""
    return torch.cat([torch.full_like(x[:, :s], fill), x[:, :-s]], 1)


def linear_recurrence_scan(a, b, *, initial_state=None, complex_pairs=False):
    """Hillis-Steele inclusive scan: after the step with offset s, (A_t, B_t) composes steps t-2s+1 .. t.
    Complex pairs are carried as separate real and imaginary tensors (no stacking per step)."""
    ct = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.to(ct), b.to(ct)
    T = a.shape[1]
    h0 = None if initial_state is None else initial_state.to(ct)
    s = 1
    if not complex_pairs:
        A, Bv = a, b
        while s < T:
            Bv = A * _shift(Bv, s, 0.0) + Bv
            A = A * _shift(A, s, 1.0)
            s *= 2
        h = Bv if h0 is None else Bv + A * h0[:, None]
        return h, h[:, -1]
    Ar, Ai, Br, Bi = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    while s < T:
        pBr, pBi, pAr, pAi = _shift(Br, s, 0.0), _shift(Bi, s, 0.0), _shift(Ar, s, 1.0), _shift(Ai, s, 0.0)
        Br, Bi = Ar * pBr - Ai * pBi + Br, Ar * pBi + Ai * pBr + Bi
        Ar, Ai = Ar * pAr - Ai * pAi, Ar * pAi + Ai * pAr
        s *= 2
    if h0 is not None:
        hr, hi = h0[:, None, ..., 0], h0[:, None, ..., 1]
        Br, Bi = Br + Ar * hr - Ai * hi, Bi + Ar * hi + Ai * hr
    h = torch.stack([Br, Bi], -1)
    return h, h[:, -1]


def linear_recurrence(a, b, *, initial_state=None, complex_pairs=False, impl="auto"):
    """h_t = a_t ⊙ h_{t-1} + b_t, element-wise (complex products when complex_pairs).

    Args:
        a, b: [B, T, N] real, or [B, T, N, 2] (Re, Im) with complex_pairs=True. |a| <= 1 for the scan's
            partial products to stay bounded.
        initial_state: h_{-1} [B, N] ([B, N, 2]) or None (zeros). impl: "auto" | "reference" | "torch".
    Returns:
        (h [B, T, N(, 2)], h_T [B, N(, 2)]), float32 (float64 for float64 inputs).

    Example:
        >>> a, b = torch.rand(2, 30, 5), torch.randn(2, 30, 5)
        >>> h, hT = linear_recurrence(a, b)
        >>> torch.allclose(h, linear_recurrence(a, b, impl="reference")[0], atol=1e-5), torch.equal(hT, h[:, -1])
        (True, True)
    """
    _check(a, b, initial_state, complex_pairs)
    impl = resolve_impl(impl, a)
    kw = {"initial_state": initial_state, "complex_pairs": complex_pairs}
    if impl == "reference":
        return linear_recurrence_reference(a, b, **kw)
    if impl == "torch":
        return linear_recurrence_scan(a, b, **kw)
    raise ValueError('linear_recurrence has no Triton kernel yet; use impl="torch" or "reference"')
