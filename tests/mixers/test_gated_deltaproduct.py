"""Gated DeltaProduct: the interleaved delta-rule path against the explicit Householder-product loop (forward,
state, gradients), n_h = 1 against Gated DeltaNet's recurrence, negative eigenvalues, and the mixer's two
paths (the contract itself is in tests/conformance)."""

import pytest
import torch

import attnzoo
from attnzoo.ops.delta import delta_rule
from attnzoo.ops.delta.product import delta_product
from tests.mixers._mixer_checks import assert_paths_agree

F64 = torch.float64


def _inputs(B=2, T=11, H=2, n=3, K=5, V=4, beta_max=1.0, strength=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, v = torch.randn(B, T, H, K, generator=g, dtype=F64), torch.randn(B, T, H, n, V, generator=g, dtype=F64)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, n, K, generator=g, dtype=F64), dim=-1)
    beta = torch.rand(B, T, H, n, generator=g, dtype=F64) * beta_max
    gate = -torch.rand(B, T, H, generator=g, dtype=F64) * strength
    return q, k, v, beta, gate, torch.randn(B, H, K, V, generator=g, dtype=F64)


def _run(impl, ins, gated=True):
    ins = [t.detach().clone().requires_grad_(True) for t in ins]
    q, k, v, beta, gate, S0 = ins
    o, S = delta_product(q, k, v, beta, gate if gated else None, initial_state=S0, output_final_state=True,
                         impl=impl)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    grads = torch.autograd.grad((o * w).sum() + S.sum(), ins, allow_unused=True)
    return o, S, *(gr for gr in grads if gr is not None)


@pytest.mark.parametrize("T", [1, 9, 30])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("gated", [True, False])
def test_interleaved_delta_rule_matches_the_product_loop(T, n, gated):
    ins = _inputs(T=T, n=n, strength=5.0)
    for a, b in zip(_run("torch", ins, gated), _run("reference", ins, gated)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_negative_eigenvalues_and_the_householder_spectrum():
    ins = _inputs(T=20, beta_max=2.0)
    for a, b in zip(_run("torch", ins), _run("reference", ins)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    k = ins[1][0, 0, 0, 0]
    Hh = torch.eye(5, dtype=F64) - 1.8 * torch.outer(k, k)  # β = 1.8: eigenvalue 1 - β = -0.8 along k
    assert torch.linalg.eigvalsh(Hh).min() == pytest.approx(-0.8)


def test_one_householder_step_is_the_gated_delta_rule():
    q, k, v, beta, gate, S0 = _inputs(T=15, n=1)
    o, S = delta_product(q, k, v, beta, gate, initial_state=S0, output_final_state=True, impl="reference")
    o2, S2 = delta_rule(q, k[:, :, :, 0], v[:, :, :, 0], beta[..., 0], gate, initial_state=S0,
                        output_final_state=True, impl="reference")
    torch.testing.assert_close(o, o2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, S2, rtol=1e-12, atol=1e-12)


def test_bad_inputs_are_refused():
    q, k, v, beta, gate, S0 = _inputs()
    with pytest.raises(ValueError, match="k \\[B, T, H, n_h, K\\]"):
        delta_product(q, k[:, :, :, 0], v, beta, gate)
    with pytest.raises(ValueError, match="v must be"):
        delta_product(q, k, v[:, :, :, :2], beta, gate)
    with pytest.raises(ValueError, match="beta must be"):
        delta_product(q, k, v, beta[..., 0], gate)
    with pytest.raises(ValueError, match="g must be"):
        delta_product(q, k, v, beta, gate[..., None])
    with pytest.raises(ValueError, match="n_householder"):
        attnzoo.build("gated_deltaproduct", d_model=16, n_householder=0)


def _mixer(impl, **kw):
    torch.manual_seed(0)
    return attnzoo.build("gated_deltaproduct", d_model=16, n_heads=2, impl=impl, **kw).double().train()


@pytest.mark.parametrize("neg", [False, True])
def test_mixer_paths_agree_forward_state_and_gradients(neg):
    assert_paths_agree(lambda impl: _mixer(impl, n_householder=3, allow_neg_eigval=neg), 21, 1e-9)


def test_state_bytes_count_the_extra_keys_and_values():
    m = _mixer("torch", n_householder=3)
    _, s = m(torch.randn(1, 5, 16, dtype=F64), return_state=True)
    assert m.state_bytes(5) == 4 * (s.S[0].numel() + s.conv[0].numel())
