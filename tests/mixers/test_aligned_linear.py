"""AlignedLinear (mixers/layers.py): with NARROW["pad"] on, the zero-padded product gives nn.Linear's outputs and
gradients exactly in value (the padding adds zeros), under torch.func.vmap too (the zoo's model groups), and its
state_dict is nn.Linear's; the mixers that use it give the same outputs with padding on and off."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.mixers import layers
from attnzoo.mixers.layers import AlignedLinear


@pytest.fixture
def pad(monkeypatch):
    monkeypatch.setitem(layers.NARROW, "pad", "always")


@pytest.mark.parametrize("fan_in,fan_out,bias",
                         [(64, 2, True), (64, 4, False), (4, 32, True), (5, 3, True), (16, 8, False)])
def test_padded_product_equals_linear(pad, fan_in, fan_out, bias):
    torch.manual_seed(0)
    m = AlignedLinear(fan_in, fan_out, bias=bias).double()
    ref = torch.nn.Linear(fan_in, fan_out, bias=bias).double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 7, fan_in, dtype=torch.float64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y, yr = m(x), ref(xr)
    assert y.shape == yr.shape == (3, 7, fan_out)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(m.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)
    assert list(m.state_dict()) == list(ref.state_dict())


def test_padded_product_under_vmap(pad):
    torch.manual_seed(1)
    ms = [AlignedLinear(16, 2) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(ms)
    x = torch.randn(3, 5, 16)

    def call(p, b, xi):
        return torch.func.functional_call(ms[0], (p, b), (xi,))

    got = torch.func.vmap(call)(params, buffers, x)
    layers.NARROW["pad"] = "off"
    want = torch.stack([m(xi) for m, xi in zip(ms, x)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_modes(monkeypatch):
    m = AlignedLinear(8, 2)
    x = torch.randn(4, 8)
    for mode in ("off", "cuda", "always"):      # "cuda" leaves CPU inputs to nn.Linear
        monkeypatch.setitem(layers.NARROW, "pad", mode)
        torch.testing.assert_close(m(x), torch.nn.functional.linear(x, m.weight, m.bias))


@pytest.mark.parametrize("name", ["gla", "gated_deltanet", "deltanet"])
def test_mixers_same_with_padding(monkeypatch, name):
    torch.manual_seed(2)
    mixer = attnzoo.build(name, d_model=32, **attnzoo.get_card(name).example_kwargs)
    x = torch.randn(2, 9, 32)
    want = mixer(x)
    monkeypatch.setitem(layers.NARROW, "pad", "always")
    torch.testing.assert_close(mixer(x), want, rtol=1e-5, atol=1e-6)
