"""softmax_attention: the reference against a hand-written loop, and SDPA against the reference."""

import math

import pytest
import torch

from attnzoo.ops.softmax import attention_allowed, softmax_attention


def rand(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def loop_attention(q, k, v, allowed):
    """Per (batch, head, query) softmax over the allowed keys, written out by hand."""
    B, Tq, Hq, D = q.shape
    Hkv = k.shape[2]
    o = torch.zeros(B, Tq, Hq, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            hk = h // (Hq // Hkv)
            for i in range(Tq):
                js = [j for j in range(k.shape[1]) if allowed[b][i][j]]
                if not js:
                    continue
                s = torch.tensor([float(q[b, i, h] @ k[b, j, hk]) / math.sqrt(D) for j in js], dtype=torch.float64)
                w = torch.softmax(s, 0)
                o[b, i, h] = sum(w[n] * v[b, j, hk] for n, j in enumerate(js))
    return o


def hand_allowed(B, Tq, Tk, *, causal=False, window=None, prefix=None, key_mask=None):
    off = Tk - Tq
    return [[[
        (key_mask is None or bool(key_mask[b, j]))
        and (
            (prefix is not None and j < prefix)
            or ((not causal or j <= i + off) and (window is None or i + off - j < window))
        )
        for j in range(Tk)] for i in range(Tq)] for b in range(B)]


CASES = {
    "bidirectional": dict(),
    "causal": dict(causal=True),
    "window3": dict(causal=True, window=3),
    "prefix4": dict(causal=True, prefix=4),
    "padding": dict(causal=True, key_mask="pad"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("Tq", [9, 3])
def test_reference_and_sdpa_match_hand_loop(case, Tq):
    B, Tk, Hq, Hkv, D = 2, 9, 4, 2, 8
    q, k, v = rand(B, Tq, Hq, D, seed=1), rand(B, Tk, Hkv, D, seed=2), rand(B, Tk, Hkv, D, seed=3)
    kw = dict(CASES[case])
    if kw.get("key_mask") == "pad":
        km = torch.ones(B, Tk, dtype=torch.bool)
        km[0, :2] = False
        km[1, -1] = False
        kw["key_mask"] = km
    prefix = kw.pop("prefix", None)
    expected = loop_attention(q, k, v, hand_allowed(B, Tq, Tk, prefix=prefix, **kw))
    for impl in ("reference", "torch"):
        o = softmax_attention(q, k, v, prefix_len=prefix, impl=impl, **kw)
        assert torch.allclose(o, expected, atol=1e-12), impl


def test_float32_sdpa_close_to_float64_reference():
    q, k, v = rand(2, 16, 4, 8, seed=4), rand(2, 16, 4, 8, seed=5), rand(2, 16, 4, 8, seed=6)
    ref = softmax_attention(q, k, v, causal=True, impl="reference")
    o = softmax_attention(q.float(), k.float(), v.float(), causal=True, impl="torch").double()
    assert (o - ref).norm() / ref.norm() < 1e-5


def test_probs_are_a_distribution_over_allowed_keys():
    q, k, v = rand(1, 6, 2, 4), rand(1, 6, 2, 4, seed=1), rand(1, 6, 2, 4, seed=2)
    o, p = softmax_attention(q, k, v, causal=True, window=2, return_probs=True, impl="reference")
    assert p.shape == (1, 2, 6, 6)
    assert torch.allclose(p.sum(-1), torch.ones(1, 2, 6, dtype=torch.float64))
    allowed = attention_allowed(1, 6, 6, device="cpu", causal=True, window=2)
    assert (p[:, :, ~allowed[0]] == 0).all()
    with pytest.raises(ValueError, match="reference"):
        softmax_attention(q, k, v, return_probs=True, impl="torch")


def test_query_that_sees_nothing_gets_zero_not_nan():
    q, k, v = rand(1, 4, 1, 4), rand(1, 4, 1, 4, seed=1), rand(1, 4, 1, 4, seed=2)
    km = torch.tensor([[False, False, True, True]])
    for impl in ("reference", "torch"):
        o = softmax_attention(q, k, v, causal=True, key_mask=km, impl=impl)
        assert torch.isfinite(o).all()
        assert (o[0, :2] == 0).all() and (o[0, 2:] != 0).any()


def test_gqa_equals_repeated_heads():
    q, k, v = rand(1, 5, 6, 4), rand(1, 5, 2, 4, seed=1), rand(1, 5, 2, 4, seed=2)
    o = softmax_attention(q, k, v, causal=True)
    o_rep = softmax_attention(q, k.repeat_interleave(3, 2), v.repeat_interleave(3, 2), causal=True)
    assert torch.allclose(o, o_rep, atol=1e-12)


def test_bad_shapes_raise():
    q = rand(1, 5, 3, 4)
    with pytest.raises(ValueError, match="multiple"):
        softmax_attention(q, rand(1, 5, 2, 4), rand(1, 5, 2, 4))
    with pytest.raises(ValueError, match=r"\[B, T, H, D\]"):
        softmax_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="impl"):
        softmax_attention(q, q, q, impl="cuda")
    with pytest.raises(ValueError, match="window"):
        softmax_attention(q, q, q, causal=True, window=0)
