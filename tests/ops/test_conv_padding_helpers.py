"""ops/conv/padding.py: the padding and state pieces shared by the short and long convs and the mixers."""

import pytest
import torch

from attnzoo.ops.conv.padding import last_real_inputs, previous_inputs, real_tokens_first, restore_token_order


def test_real_tokens_first_keeps_order_and_restores():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    mask = torch.tensor([[False, True, False, True, True], [True, True, True, True, True]])
    xs, ms, perm = real_tokens_first(x, mask)
    assert torch.equal(xs[0, :3], x[0, [1, 3, 4]]) and torch.equal(xs[0, 3:], x[0, [0, 2]])
    assert torch.equal(xs[1], x[1]) and ms[0].tolist() == [True, True, True, False, False]
    assert torch.equal(restore_token_order(xs, perm), x)


def test_previous_inputs_and_last_real_inputs():
    x = torch.randn(2, 4, 3)
    assert torch.equal(previous_inputs(x, None, 2, name="cache must be [B, 2, C]"), torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match=r"cache must be \[B, 2, C\] = \(2, 2, 3\), got \(2, 1, 3\)"):
        previous_inputs(x, torch.zeros(2, 1, 3), 2, name="cache must be [B, 2, C]")
    cache = torch.randn(2, 2, 3)
    xc = torch.cat([cache, x], 1)
    assert torch.equal(last_real_inputs(xc, None, 2), x[:, 2:])
    mask = torch.tensor([[True, False, False, False], [True, True, True, False]])  # already real-first
    out = last_real_inputs(xc, mask, 2)
    assert torch.equal(out[0], torch.stack([cache[0, 1], x[0, 0]])) and torch.equal(out[1], x[1, 1:3])
    assert last_real_inputs(xc, mask, 0).shape == (2, 0, 3)
