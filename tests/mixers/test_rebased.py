"""ReBased (arXiv:2402.10644): the kernel is (q'ᵀk')² with q' = gamma ⊙ norm(q) + beta, the mixer's linear
branch equals the materialised normalised kernel attention in float64, its paths agree (forward, state,
gradients), and the kernel reaches zero where Based's cannot (the contract itself is in tests/conformance)."""

import pytest
import torch

import attnzoo
from attnzoo.mixers._linear_common import taylor_feature_map
from attnzoo.mixers.rebased import quadratic_feature_map
from attnzoo.ops.linear.api import NORMALIZE_EPS

F64 = torch.float64


def _mixer(impl="auto", seed=0, **kw):
    torch.manual_seed(seed)
    m = attnzoo.build("rebased", d_model=16, **{"n_heads": 2, "feature_dim": 4, "window": 0, **kw}, impl=impl)
    with torch.no_grad():  # away from the init (gamma 1, beta 0), so the affine is exercised
        for norm in (m.q_norm, m.k_norm):
            norm.gamma.add_(torch.randn_like(norm.gamma) * 0.3)
            norm.beta.add_(torch.randn_like(norm.beta) * 0.3)
    return m.double()


def _x(B=2, T=23, seed=1):
    return torch.randn(B, T, 16, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_feature_map_is_the_quadratic_kernel():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g, dtype=F64), torch.randn(7, 5, generator=g, dtype=F64)
    torch.testing.assert_close((quadratic_feature_map(a) * quadratic_feature_map(b)).sum(-1), (a * b).sum(-1) ** 2)


def test_linear_branch_is_the_normalised_kernel_attention():
    m = _mixer()
    x = _x()
    B, T, _ = x.shape
    H, f, hd = 2, 4, 8

    def affine(z, norm):
        z = z.view(B, T, H, f)
        zn = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + norm.eps)
        return norm.gamma * zn + norm.beta

    with torch.no_grad():
        q, k = affine(m.q_proj(x), m.q_norm), affine(m.k_proj(x), m.k_norm)
        v = m.v_proj(x).view(B, T, H, hd)
        sim = torch.einsum("bthf,bshf->bhts", q, k) ** 2 * torch.ones(T, T, dtype=F64).tril()
        o = torch.einsum("bhts,bshv->bthv", sim, v) / (sim.sum(-1).transpose(1, 2)[..., None] + NORMALIZE_EPS)
        want = m.o_proj(o.reshape(B, T, -1))
        torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("window", [0, 8])
def test_paths_agree_forward_state_and_gradients(window):
    x, w = _x(), _x(seed=2)
    outs = []
    for impl in ("torch", "reference"):
        m = _mixer(impl, window=window).train()
        y, s = m(x, return_state=True)
        outs.append((y, s.S, *torch.autograd.grad((y * w).sum(), list(m.parameters()))))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_the_kernel_reaches_zero_where_based_cannot():
    # orthogonal normalised q', k': ReBased's score is 0; Based's Taylor score 1 + qᵀk + (qᵀk)²/2 >= 1/2
    q, k = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 0.0, 1.0, -1.0], dtype=F64)
    assert (quadratic_feature_map(q) @ quadratic_feature_map(k)).item() == 0.0
    lo = min((taylor_feature_map(q * s) @ taylor_feature_map(-q)).item() for s in torch.linspace(-3, 3, 61))
    assert lo >= 0.5 - 1e-12


def test_state_and_bad_config():
    m = _mixer(window=8)
    with torch.no_grad():
        _, s = m(_x(T=5), return_state=True)
    assert s.S.shape == (2, 2, 16, 9)
    assert m.state_bytes(5) == 4 * 2 * 16 * 9 + attnzoo.registry.state_bytes("based", 5, d_model=16, n_heads=2,
                                                                              feature_dim=4, window=8) \
        - 4 * 2 * (1 + 4 + 16) * 9
    with pytest.raises(ValueError, match="feature_dim"):
        attnzoo.build("rebased", d_model=16, feature_dim=0)
