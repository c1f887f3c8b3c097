"""ShortConv: the depthwise causal conv module (over ops.conv.causal_conv1d) against a hand loop,
decode with its cache (T < kernel, single steps), padding, gradients and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.mixers.short_conv import ShortConv


def loop_conv(x, w, b=None, act=None):
    """y_t[c] = sum_j w[c, j] x_{t-W+1+j}[c] (+ b[c]), zeros before the start."""
    B, T, C = x.shape
    W = w.shape[1]
    y = torch.zeros_like(x)
    for t in range(T):
        for j in range(W):
            s = t - W + 1 + j
            if s >= 0:
                y[:, t] += w[:, j] * x[:, s]
    if b is not None:
        y = y + b
    return F.silu(y) if act == "silu" else y


def make(C=6, W=4, act=None, bias=False, seed=0):
    torch.manual_seed(seed)
    return ShortConv(C, kernel_size=W, activation=act, bias=bias).double()


@pytest.mark.parametrize("act,bias", [(None, False), ("silu", True)])
@pytest.mark.parametrize("W", [1, 2, 4])
def test_matches_loop(act, bias, W):
    conv = make(W=W, act=act, bias=bias)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    y, _ = conv(x)
    ref = loop_conv(x, conv.weight, conv.bias, act)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2, 3, 11])
def test_decode_with_cache_equals_whole_sequence(T):
    conv = make(act="silu", bias=True)
    x = torch.randn(2, T, 6, dtype=torch.float64)
    full, cache_full = conv(x, output_cache=True)
    ys, cache = [], None
    for t in range(T):
        y, cache = conv(x[:, t : t + 1], cache=cache, output_cache=True)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cache, cache_full, rtol=0, atol=0)
    # the cache holds the last W-1 inputs, zeros where the sequence is shorter than that
    want = torch.cat([torch.zeros(2, 3, 6, dtype=x.dtype), x], 1)[:, -3:]
    torch.testing.assert_close(cache_full, want, rtol=0, atol=0)


def test_prefix_then_rest():
    conv = make()
    x = torch.randn(1, 10, 6, dtype=torch.float64)
    full, _ = conv(x)
    y1, c = conv(x[:, :2], output_cache=True)  # prefix shorter than the kernel
    y2, _ = conv(x[:, 2:], cache=c)
    torch.testing.assert_close(torch.cat([y1, y2], 1), full, rtol=1e-12, atol=1e-12)


def test_padding_is_skipped():
    conv = make(act="silu", bias=True)
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    junk = torch.randn(2, 3, 6, dtype=torch.float64) * 10
    xp = torch.cat([junk[:, :2], x, junk[:, 2:]], 1)  # 2 left, 1 right padded
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, :2] = False
    mask[:, -1] = False
    y, c = conv(x, output_cache=True)
    yp, cp = conv(xp, mask=mask, output_cache=True)
    torch.testing.assert_close(yp[:, 2:9], y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cp, c, rtol=0, atol=0)


def test_gradients_flow_to_weight_bias_input_and_cache():
    conv = make(act="silu", bias=True)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    cache = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: conv(a, cache=c)[0], (x, cache))
    conv(x, cache=cache)[0].sum().backward()
    assert conv.weight.grad is not None and conv.bias.grad is not None


def test_bad_input_raises():
    conv = make()
    with pytest.raises(ValueError, match="6"):
        conv(torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match="cache"):
        conv(torch.randn(2, 5, 6), cache=torch.zeros(2, 2, 6))
    with pytest.raises(ValueError, match="batch"):
        conv(torch.randn(2, 5, 6), cache=torch.zeros(1, 3, 6))
    with pytest.raises(ValueError, match="activation"):
        ShortConv(4, activation="relu")
    with pytest.raises(ValueError, match="kernel_size"):
        ShortConv(4, kernel_size=0)
