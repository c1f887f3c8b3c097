"""The chunked ops' autograd node must be freed after backward (no reference cycle keeping the
saved tensors alive: the quick zoo ran out of memory when it did)."""

import weakref

import pytest
import torch

from attnzoo.ops.delta import delta_rule
from attnzoo.ops.linear import gated_linear_attention


@pytest.mark.parametrize("op", ["gla_vector", "delta"])
def test_graph_is_freed_after_backward(op):
    g_ = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 70, 2, 8, generator=g_, requires_grad=True) for _ in range(3))
    if op == "gla_vector":
        g = (-torch.rand(1, 70, 2, 8, generator=g_)).requires_grad_(True)
        o, _ = gated_linear_attention(q, k, v, g, impl="torch")
    else:
        beta = torch.rand(1, 70, 2, generator=g_).requires_grad_(True)
        o, _ = delta_rule(q, torch.nn.functional.normalize(k, dim=-1), v, beta, impl="torch")
    node = weakref.ref(o.grad_fn)
    o.sum().backward()
    del o
    assert node() is None, "the autograd node (and what it saved) outlived the backward"
