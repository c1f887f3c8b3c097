"""HGRN: the mixer's chunked computation against the paper's recurrence run as a complex128 loop, the
real-valued ablation, the lower bound, padding and state (the contract itself is in tests/conformance)."""

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mixers.hgrn import hgrn_lower_bounds


def _loop(m, x, mask=None, h0=None):
    """h_t = lam_t exp(i theta) h_{t-1} + (1 - lam_t) c_t, one step at a time in complex128, skipping padding;
    then y_t = W_o LN(g_t ⊙ [Re h_t, Im h_t]). Returns (y, final h)."""
    B, T, _ = x.shape
    dh, lb = m.d_hidden, m.lower_bound
    lam = lb + (1 - lb) * torch.sigmoid(m.mu_proj(x))
    c = F.silu(m.c_proj(x))
    if m.complex_valued:
        c = torch.complex(c[..., :dh], c[..., dh:])
        rot = torch.exp(1j * m.theta.double())
    else:
        c, rot = c.to(torch.complex128), 1.0
    h = torch.zeros(B, dh, dtype=torch.complex128) if h0 is None else h0
    hs = []
    for t in range(T):
        step = lam[:, t] * rot * h + (1 - lam[:, t]) * c[:, t]
        h = step if mask is None else torch.where(mask[:, t, None], step, h)
        hs.append(h)
    hs = torch.stack(hs, 1)
    o = torch.cat([hs.real, hs.imag], -1) if m.complex_valued else hs.real
    y = m.o_proj(m.norm(torch.sigmoid(m.g_proj(x)) * o))
    return y, h


def _make(**kw):
    torch.manual_seed(0)
    return attnzoo.build("hgrn", d_model=16, **kw).double().eval()


def _x(B=2, T=13, seed=1):
    return torch.randn(B, T, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("complex_valued", [True, False])
@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("T", [1, 13, 70])   # 70: not a power of two (the scan's last step is partial)
def test_mixer_matches_the_recurrence_loop(complex_valued, impl, T):
    m = _make(complex_valued=complex_valued, lower_bound=0.3, impl=impl)
    x = _x(T=T)
    with torch.no_grad():
        y, s = m(x, return_state=True)
        y_ref, h_ref = _loop(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    h = torch.complex(s.S[..., 0], s.S[..., 1]) if complex_valued else s.S[..., 0].to(h_ref.dtype)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


def test_padding_and_state_match_the_loop():
    m = _make(lower_bound=0.1)
    x = _x(T=12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 5:7] = False       # a hole in the middle: p does not advance over it
    with torch.no_grad():
        y1, s = m(x[:, :8], mask=mask[:, :8], return_state=True)
        y2 = m(x[:, 8:], mask=mask[:, 8:], state=s)
        y_ref, _ = _loop(m, x, mask)
    y = torch.cat([y1, y2], 1)
    torch.testing.assert_close(y[mask], y_ref[mask], rtol=1e-10, atol=1e-10)


def test_gradients_match_the_loop():
    m = _make(lower_bound=0.2).train()
    x = _x(T=9).requires_grad_(True)
    w = torch.randn(2, 9, 16, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    g = torch.autograd.grad((m(x) * w).sum(), [x, *m.parameters()])
    g_ref = torch.autograd.grad((_loop(m, x)[0] * w).sum(), [x, *m.parameters()])
    for n, a, b in zip(["x", *names], g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda s, n=n: f"{n}: {s}")


def test_forget_gate_respects_the_lower_bound():
    m = _make(lower_bound=0.6)
    with torch.no_grad():
        log_lam, k = m.gates(_x() * 50, None)
    lam = log_lam.exp()
    assert lam.min() >= 0.6 - 1e-12 and lam.max() <= 1.0
    torch.testing.assert_close(k, 1 - lam)


def test_lower_bound_schedule_and_bad_arguments():
    assert hgrn_lower_bounds(4) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="n_layers"):
        hgrn_lower_bounds(0)
    with pytest.raises(ValueError, match="lower_bound"):
        attnzoo.build("hgrn", d_model=16, lower_bound=1.0)
    with pytest.raises(ValueError, match="expand"):
        attnzoo.build("hgrn", d_model=16, expand=0)
    s = attnzoo.build("hgrn", d_model=16)(torch.randn(1, 3, 16), return_state=True)[1]
    with pytest.raises(ValueError, match="state"):
        attnzoo.build("hgrn", d_model=16, complex_valued=False)(torch.randn(1, 3, 16), state=s)
