"""Mechanism tests for the softmax family (the contract itself is in tests/conformance)."""

import pytest
import torch

import attnzoo
from attnzoo.mixers.layers import apply_rope
from attnzoo.ops.softmax import softmax_attention


def x_(B=2, T=12, D=32, seed=0):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_g1_gate_is_sigmoid_of_input_applied_per_head_before_o_proj(gate):
    torch.manual_seed(0)
    gm = attnzoo.build("gated_softmax", d_model=32, n_heads=4, n_kv_heads=2, gate=gate).double().eval()
    x = x_()
    # recompute by hand from the fused q_proj layout: per KV group [q heads of the group | their gates]
    B, T, _ = x.shape
    w = 8 if gate == "elementwise" else 1
    qx = gm.q_proj(x).view(B, T, 2, 2 * 8 + 2 * w)
    q = qx[..., :16].reshape(B, T, 4, 8)
    g = qx[..., 16:].reshape(B, T, 4, w)
    k, v = gm.k_proj(x).view(B, T, 2, 8), gm.v_proj(x).view(B, T, 2, 8)
    pos = torch.arange(T).expand(B, T)
    o = softmax_attention(apply_rope(q, pos), apply_rope(k, pos), v, causal=True, impl="reference")
    y = gm.o_proj((o * torch.sigmoid(g)).reshape(B, T, 32))
    assert torch.allclose(gm(x), y, atol=1e-12)


def test_gated_with_zero_gate_weights_is_half_of_plain_softmax():
    torch.manual_seed(0)
    plain = attnzoo.build("softmax", d_model=32, n_heads=4).double().eval()
    gated = attnzoo.build("gated_softmax", d_model=32, n_heads=4, gate="headwise").double().eval()
    with torch.no_grad():
        gated.q_proj.weight.zero_()
        qw = gated.q_proj.weight.view(4, 9, 32)  # n_kv = n_heads: each group = 8 q dims + 1 gate
        qw[:, :8] = plain.q_proj.weight.view(4, 8, 32)
        for n in ("k_proj", "v_proj", "o_proj"):
            getattr(gated, n).weight.copy_(getattr(plain, n).weight)
    x = x_()
    assert torch.allclose(gated(x), 0.5 * plain(x), atol=1e-12)


def test_sliding_window_state_keeps_only_last_w_and_matches_windowed_attention():
    torch.manual_seed(0)
    m = attnzoo.build("sliding_window", d_model=32, n_heads=4, window=5, rope=False).double().eval()
    x = x_(T=30)
    y, s = m(x, return_state=True)
    assert s.k.shape[1] == 5
    B, T, _ = x.shape
    q, k, v = (p(x).view(B, T, 4, 8) for p in (m.q_proj, m.k_proj, m.v_proj))
    ref = m.o_proj(softmax_attention(q, k, v, causal=True, window=5, impl="reference").reshape(B, T, 32))
    assert torch.allclose(y, ref, atol=1e-12)
    with pytest.raises(ValueError, match="causal"):
        attnzoo.build("sliding_window", d_model=32, causal=False)


def test_bidirectional_softmax_sees_the_future_and_refuses_state():
    m = attnzoo.build("softmax", d_model=32, n_heads=4, causal=False).double().eval()
    x = x_()
    x2 = x.clone()
    x2[:, -1] += 1
    assert not torch.allclose(m(x)[:, 0], m(x2)[:, 0])
    with pytest.raises(ValueError, match="not causal"):
        m(x, return_state=True)


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64)

    def score(i, j):
        return float((apply_rope(q, torch.tensor([[i]])) * apply_rope(k, torch.tensor([[j]]))).sum())

    assert abs(score(5, 2) - score(105, 102)) < 1e-9
    assert abs(score(5, 2) - score(5, 3)) > 1e-6


def test_qk_norm_normalises_per_head():
    m = attnzoo.build("softmax", d_model=32, n_heads=4, qk_norm=True)
    assert m.q_norm is not None and m.q_norm.weight.shape == (8,)
