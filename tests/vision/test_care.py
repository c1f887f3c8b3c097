import pytest
import torch

from attnzoo.vision.care import CAREBlock, linear_attention, linear_attention_quadratic

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_linear_attention_equals_its_quadratic_form():
    q, k, v = rand(2, 20, 3, 4, seed=1), rand(2, 20, 3, 4, seed=2), rand(2, 20, 3, 5, seed=3)
    torch.testing.assert_close(linear_attention(q, k, v), linear_attention_quadratic(q, k, v))
    # the quadratic form written out: rows of phi(Q)phi(K)^T normalised to sum 1
    phi = lambda t: torch.where(t > 0, t + 1, t.exp())  # elu + 1
    a = torch.einsum("ihd,jhd->hij", phi(q[0]), phi(k[0]))
    want = torch.einsum("hij,jhe->ihe", a / a.sum(-1, keepdim=True), v[0])
    torch.testing.assert_close(linear_attention(q, k, v)[0], want, rtol=1e-5, atol=1e-6)


def test_global_branch_is_global_and_local_branch_is_local():
    torch.manual_seed(0)
    m = CAREBlock(8, global_ratio=0.5, n_heads=2, kernel_size=3).double()
    x = rand(1, 8, 8, 8, seed=4)
    # channel split: the first C_l channels feed the local conv, the rest the linear attention
    xl, xg = m.norm(x).split([4, 4], -1)
    g = m.global_branch(xg)
    xg2 = xg.clone()
    xg2[0, 0, 0] += 1.0
    assert bool(((m.global_branch(xg2) - g).abs().sum(-1) > 0).all())  # every token sees token (0, 0)
    l = m.local(xl.permute(0, 3, 1, 2))
    xl2 = xl.clone()
    xl2[0, 0, 0] += 1.0
    changed = (m.local(xl2.permute(0, 3, 1, 2)) - l).abs().sum(1)[0] > 0
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[:2, :2] = True  # 3x3 depthwise conv
    assert torch.equal(changed, want)


def test_memory_flows_across_blocks():
    torch.manual_seed(0)
    b1, b2 = CAREBlock(8, memory_dim=6).double(), CAREBlock(8, memory_dim=6).double()
    x = rand(2, 4, 4, 8, seed=5)
    x1, m1 = b1(x)
    assert x1.shape == x.shape and m1.shape == (2, 4, 4, 6)
    x2, m2 = b2(x1, m1)
    x2_without, _ = b2(x1, torch.zeros_like(m1))
    assert (x2 - x2_without).abs().max() > 1e-6  # block 2 reads block 1's memory
    # gradient reaches block 1's memory parameters only through the memory handed to block 2
    g_direct = torch.autograd.grad(b2(x1.detach(), m1)[0].sum(), b1.memory_proj.weight)[0]
    assert g_direct.abs().sum() > 0
    # the memory update is a gated mix of the old memory and a tanh candidate
    assert bool((m2.abs() <= torch.maximum(m1.abs(), torch.ones_like(m1)) + 1e-12).all())


def test_shapes_and_bad_inputs():
    m = CAREBlock(8)
    with pytest.raises(ValueError, match=r"\[B, H, W, 8\]"):
        m(torch.randn(1, 4, 4, 7))
    with pytest.raises(ValueError, match="memory"):
        m(torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 5))
    with pytest.raises(ValueError, match="memory"):
        m(torch.randn(1, 4, 4, 8), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="global_ratio"):
        CAREBlock(8, global_ratio=1.0)
    with pytest.raises(ValueError, match="n_heads"):
        CAREBlock(8, global_ratio=0.375, n_heads=2)
