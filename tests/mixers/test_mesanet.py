"""MesaNet: the mesa op's CG path against the exact-solve loop (forward, state, gradients; converging as the
CG steps grow), the loop against the paper's argmin definition, and the mixer's two paths (the contract
itself is in tests/conformance)."""

import pytest
import torch

import attnzoo
from attnzoo.ops.mesa import mesa_attention
from tests.mixers._mixer_checks import assert_paths_agree, grads_with_random_cotangents as _grads

F64 = torch.float64


def _inputs(B=2, T=13, H=2, K=5, V=4, strength=1.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    q, v = r(B, T, H, K), r(B, T, H, V)
    k = torch.nn.functional.normalize(r(B, T, H, K), dim=-1)
    beta = torch.rand(B, T, H, generator=g, dtype=F64)
    gate = -torch.rand(B, T, H, generator=g, dtype=F64) * strength
    lam = 0.2 + torch.rand(H, K, generator=g, dtype=F64)
    A = r(B, H, K, K)
    S0 = torch.cat([r(B, H, K, V), 0.1 * A @ A.transpose(-1, -2)], -1)  # H0 symmetric positive semi-definite
    return [t.to(dtype) for t in (q, k, v, beta, gate, lam, S0)]


def _mesa(impl, cg_steps=30, chunk_size=8):
    return lambda q, k, v, beta, gate, lam, S0: mesa_attention(
        q, k, v, beta, gate, lam, initial_state=S0, output_final_state=True, impl=impl, cg_steps=cg_steps,
        chunk_size=chunk_size)


NAMES = ["o", "S", "dq", "dk", "dv", "dbeta", "dg", "dlam", "dS0"]


@pytest.mark.parametrize("T", [1, 7, 8, 9, 30])
@pytest.mark.parametrize("strength", [0.0, 1.0, 20.0])
def test_cg_path_matches_the_exact_solve_loop(T, strength):
    ins = _inputs(T=T, strength=strength)
    got, want = _grads(_mesa("torch", cg_steps=12), ins), _grads(_mesa("reference"), ins)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda s, n=name: f"{n}: {s}")


def test_cg_converges_to_the_solve_as_steps_grow():
    ins = _inputs(T=40, K=12, strength=0.3)
    want = _mesa("reference")(*ins)[0]
    errs = [(_mesa("torch", cg_steps=s)(*ins)[0] - want).abs().max().item() for s in (1, 2, 4, 8, 12)]
    assert errs[0] > 1e-2, errs  # one step is a (scaled) gradient step, far from the optimum
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-10, errs  # K steps: CG is exact (up to rounding) on K x K systems


def test_the_loop_is_the_regularised_least_squares_optimum():
    """o_t = Φ_t q_t with Φ_t the argmin of the paper's discounted, regularised squared error (no state)."""
    q, k, v, beta, gate, lam, _ = _inputs(B=1, T=9, H=1, K=4, V=3, strength=0.7)
    o, _ = mesa_attention(q, k, v, beta, gate, lam, impl="reference")
    for t in range(9):
        cs = gate[0, : t + 1, 0].cumsum(0)
        w = beta[0, : t + 1, 0] * torch.exp(cs[t] - cs)  # β_s Π_{s<r<=t} γ_r
        ks, vs = k[0, : t + 1, 0], v[0, : t + 1, 0]
        Phi = torch.linalg.solve(ks.T @ (w[:, None] * ks) + torch.diag(lam[0]), ks.T @ (w[:, None] * vs)).T
        # Φ is a stationary point of ½ Σ w_s |v_s − Φ k_s|² + ½ Tr(Φ Λ Φᵀ) ...
        grad = -((vs - ks @ Phi.T) * w[:, None]).T @ ks + Phi @ torch.diag(lam[0])
        assert grad.abs().max() < 1e-12
        torch.testing.assert_close(o[0, t, 0], Phi @ q[0, t, 0], rtol=1e-12, atol=1e-12)  # ... and o_t = Φ_t q_t


def test_float32_and_bfloat16_inputs():
    ins = _inputs(T=37, K=8, strength=1.0)
    want = _mesa("reference")(*ins)[0]
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        q, k, v, beta, gate, lam, S0 = (t.to(dtype) for t in ins)
        o, S = _mesa("torch", cg_steps=16)(q, k, v, beta, gate, lam, S0.float())
        assert o.dtype == dtype and S.dtype == torch.float32
        err = (o.double() - want).abs().max() / want.abs().max()
        assert err < tol, (dtype, err.item())


def test_converged_tokens_keep_finite_gradients_in_float32():
    # many more CG steps than K: the residuals reach rounding level, the frozen steps must not blow up
    ins = [t.float() for t in _inputs(T=20, K=4, strength=0.5)]
    for t in _grads(_mesa("torch", cg_steps=40), ins):
        assert torch.isfinite(t).all()


def test_no_forget_gate_and_zero_queries():
    q, k, v, beta, _, lam, S0 = _inputs(T=10)
    q[:, 3] = 0  # a zero query: CG stops at once, o = 0 there
    o, S = mesa_attention(q, k, v, beta, None, lam, initial_state=S0, output_final_state=True)
    o2, S2 = mesa_attention(q, k, v, beta, None, lam, initial_state=S0, output_final_state=True, impl="reference")
    torch.testing.assert_close(o, o2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(S, S2, rtol=1e-12, atol=1e-12)
    assert o[:, 3].abs().max() == 0


def test_bad_inputs_are_refused():
    q, k, v, beta, gate, lam, S0 = _inputs()
    with pytest.raises(ValueError, match="beta"):
        mesa_attention(q, k, v, beta[..., None], gate, lam)
    with pytest.raises(ValueError, match="g must be"):
        mesa_attention(q, k, v, beta, gate[..., None].expand(*gate.shape, 5), lam)
    with pytest.raises(ValueError, match="lam"):
        mesa_attention(q, k, v, beta, gate, lam[:, :2])
    with pytest.raises(ValueError, match="lam"):
        mesa_attention(q, k, v, beta, gate)
    with pytest.raises(ValueError, match="initial_state"):
        mesa_attention(q, k, v, beta, gate, lam, initial_state=S0[..., :4])
    with pytest.raises(ValueError, match="cg_steps"):
        mesa_attention(q, k, v, beta, gate, lam, cg_steps=0)
    with pytest.raises(ValueError, match="impl"):
        mesa_attention(q, k, v, beta, gate, lam, impl="triton")
    with pytest.raises(ValueError, match="chunk_size"):
        mesa_attention(q, k, v, beta, gate, lam, chunk_size=0)


def _mixer(impl, **kw):
    torch.manual_seed(0)
    return attnzoo.build("mesanet", d_model=16, n_heads=2, impl=impl, **kw).double().train()


def test_mixer_paths_agree_forward_state_and_gradients():
    assert_paths_agree(lambda impl: _mixer(impl, cg_steps=10), 37, 1e-8)  # head_dim 8: 8 CG steps are exact


def test_mixer_cg_steps_can_change_after_construction():
    m = _mixer("torch", cg_steps=10)
    x = torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        exact = m(x)
        m.cg_steps = 1
        rough = m(x)
    assert (rough - exact).abs().max() > 1e-3
    with pytest.raises(ValueError, match="lam_min"):
        attnzoo.build("mesanet", d_model=16, n_heads=2, lam_min=0.0)
    with pytest.raises(ValueError, match="cg_steps"):
        attnzoo.build("mesanet", d_model=16, n_heads=2, cg_steps=0)


def test_mixer_gates_and_regulariser_in_range():
    m = _mixer("torch")
    g = m.log_gate(torch.randn(1, 6, 16, dtype=F64) * 4)
    assert g.shape == (1, 6, 2) and (g <= 0).all()
    lam = m.regulariser()
    assert lam.shape == (2, 8) and (lam > m.lam_min).all()
    torch.testing.assert_close(lam, torch.ones_like(lam))
