"""Gated slot attention: the chunked op (slot scores, softmax, GLA) against the paper's recurrence in float64
(forward, both memories, gradients, strong and weak forgetting, lengths around the chunk), lower precisions,
a one-slot case with a closed form, bad inputs; the mixer against the paper's layer equations token by token
(padding holes, state continuation, decoding one token at a time, gradients) (the contract itself is in
tests/conformance)."""

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.mixers.gsa import SlotState
from attnzoo.ops.slot import gated_slot_attention
from tests.mixers._mixer_checks import grads_with_random_cotangents as _grads

F64 = torch.float64


def _inputs(B=2, T=13, H=2, K=5, V=4, M=6, strength=1.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    gate = -torch.rand(B, T, H, M, generator=g, dtype=F64) * strength
    K0, V0 = r(B, H, M, K), r(B, H, M, V)
    return [t.to(dtype) for t in (q, k, v, gate, K0, V0)]


def _op(impl, chunk_size=16, scale=0.7):
    def fn(q, k, v, gate, K0, V0):
        o, (Ks, Vs) = gated_slot_attention(q, k, v, gate, scale=scale, initial_state=(K0, V0),
                                           output_final_state=True, impl=impl, chunk_size=chunk_size)
        return o, Ks, Vs
    return fn


NAMES = ["o", "K_last", "V_last", "dq", "dk", "dv", "dg", "dK0", "dV0"]


@pytest.mark.parametrize("T", [1, 7, 8, 9, 40])
@pytest.mark.parametrize("strength", [1e-3, 1.0, 30.0])
def test_chunked_op_matches_the_paper_recurrence(T, strength):
    ins = _inputs(T=T, strength=strength)
    got, want = _grads(_op("torch", chunk_size=8), ins), _grads(_op("reference"), ins)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("chunk_size", [1, 2, 12, 64])
def test_chunk_lengths_including_one_rounded_down_to_a_power_of_two(chunk_size):
    ins = _inputs(T=21, strength=3.0)
    got, want = _grads(_op("torch", chunk_size=chunk_size), ins), _grads(_op("reference"), ins)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda s, n=name: f"{n}: {s}")


def test_chunked_op_default_chunk_and_no_initial_state():
    q, k, v, gate, _, _ = _inputs(T=37, M=64, strength=0.5)
    o, (Ks, Vs) = gated_slot_attention(q, k, v, gate, output_final_state=True)
    o2, (Ks2, Vs2) = gated_slot_attention(q, k, v, gate, output_final_state=True, impl="reference")
    for a, b in ((o, o2), (Ks, Ks2), (Vs, Vs2)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_float32_and_bfloat16_inputs():
    ins = _inputs(T=37, strength=2.0)
    want = _op("reference")(*ins)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        q, k, v, gate, K0, V0 = (t.to(dtype) for t in ins)
        o, Ks, Vs = _op("torch")(q, k, v, gate.float(), K0.float(), V0.float())
        assert o.dtype == dtype and Ks.dtype == Vs.dtype == torch.float32
        err = (o.double() - want[0]).abs().max() / want[0].abs().max()
        assert err < tol, (dtype, err.item())


def test_one_slot_is_an_exponential_moving_average_of_the_values():
    # softmax over a single slot is 1: o_t = Ṽ_t = α_t Ṽ_{t-1} + (1 - α_t) v_t, whatever q and k
    q, k, v, gate, _, _ = _inputs(T=20, M=1, strength=2.0)
    o, _ = gated_slot_attention(q, k, v, gate)
    ema, want = torch.zeros_like(v[:, 0]), []
    for t in range(v.shape[1]):
        a = gate[:, t].exp()
        ema = a * ema + (1 - a) * v[:, t]
        want.append(ema)
    torch.testing.assert_close(o, torch.stack(want, 1), rtol=1e-12, atol=1e-12)


def test_a_zero_gate_step_leaves_the_memories_alone():
    q, k, v, gate, K0, V0 = _inputs(T=9)
    gate[:, 3:6] = 0.0
    fn = _op("torch", chunk_size=4)
    _, Ks, Vs = fn(q, k, v, gate, K0, V0)
    keep = torch.ones(9, dtype=torch.bool)
    keep[3:6] = False
    _, Ks2, Vs2 = fn(q[:, keep], k[:, keep], v[:, keep], gate[:, keep], K0, V0)
    torch.testing.assert_close(Ks, Ks2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Vs, Vs2, rtol=1e-12, atol=1e-12)


def test_bad_inputs_are_refused():
    q, k, v, gate, K0, V0 = _inputs()
    with pytest.raises(ValueError, match="g must be"):
        gated_slot_attention(q, k, v, gate[..., 0])
    with pytest.raises(ValueError, match="q, k must be"):
        gated_slot_attention(q, k[..., :-1], v, gate)
    with pytest.raises(ValueError, match="initial_state"):
        gated_slot_attention(q, k, v, gate, initial_state=K0)
    with pytest.raises(ValueError, match="initial_state"):
        gated_slot_attention(q, k, v, gate, initial_state=(K0, V0[..., :-1]))
    with pytest.raises(ValueError, match="impl"):
        gated_slot_attention(q, k, v, gate, impl="triton")
    with pytest.raises(ValueError, match="scale"):
        gated_slot_attention(q, k, v, gate, scale=float("nan"))
    with pytest.raises(ValueError, match="chunk_size"):
        gated_slot_attention(q, k, v, gate, chunk_size=0)


# ---- the mixer -------------------------------------------------------------------------------------------
D, H, M = 16, 2, 8


def _make(impl="torch", seed=0):
    torch.manual_seed(seed)
    m = attnzoo.build("gsa", d_model=D, n_heads=H, n_slots=M, impl=impl).double()
    with torch.no_grad():  # move the norm off its init so that every parameter matters
        m.o_norm.weight.add_(0.2 * torch.randn_like(m.o_norm.weight))
    return m.train()


def _paper_loop(m, x, mask=None):
    """The paper's layer one token at a time: q, k, v = Swish(x W); α = sigmoid(x W_α)^{1/8};
    K̃ = Diag(α) K̃ + (1 - α) kᵀ, Ṽ likewise; o = Ṽᵀ softmax(K̃ q); y = W_o RMSNorm_h(o); padded steps skipped."""
    B, T, _ = x.shape
    dk = dv = D // H
    Ks = torch.zeros(B, H, M, dk, dtype=F64)
    Vs = torch.zeros(B, H, M, dv, dtype=F64)
    ys = []
    for t in range(T):
        xt = x[:, t]
        q = F.silu(m.q_proj(xt)).view(B, H, dk)
        k = F.silu(m.k_proj(xt)).view(B, H, dk)
        v = F.silu(m.v_proj(xt)).view(B, H, dv)
        alpha = torch.sigmoid(m.f_proj(xt)).pow(1 / 8).view(B, H, M, 1)
        newK = alpha * Ks + (1 - alpha) * k[:, :, None]
        newV = alpha * Vs + (1 - alpha) * v[:, :, None]
        real = torch.ones(B, dtype=torch.bool) if mask is None else mask[:, t]
        Ks = torch.where(real[:, None, None, None], newK, Ks)
        Vs = torch.where(real[:, None, None, None], newV, Vs)
        p = torch.softmax((Ks @ q[..., None])[..., 0], -1)                          # over the m slots
        o = (Vs.transpose(-1, -2) @ p[..., None])[..., 0]                           # [B, H, dv]
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * m.o_norm.weight
        ys.append(m.o_proj(o.reshape(B, H * dv)))
    return torch.stack(ys, 1), Ks, Vs


@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("T", [1, 9, 40])
def test_mixer_matches_the_paper_equations(impl, T):
    m = _make(impl)
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        y, s = m(x, return_state=True)
        y_ref, Ks, Vs = _paper_loop(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s.keys, Ks, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s.values, Vs, rtol=1e-10, atol=1e-10)


def test_padding_and_state_match_the_paper_equations():
    m = _make()
    x = torch.randn(2, 30, D, generator=torch.Generator().manual_seed(2), dtype=F64)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 16:21] = False  # a hole across the chunk boundary and the split
    with torch.no_grad():
        y1, s = m(x[:, :18], mask=mask[:, :18], return_state=True)
        y2 = m(x[:, 18:], mask=mask[:, 18:], state=s)
        y_ref, _, _ = _paper_loop(m, x, mask)
    y = torch.cat([y1, y2], 1)
    torch.testing.assert_close(y[mask], y_ref[mask], rtol=1e-10, atol=1e-10)


def test_decoding_one_token_at_a_time_equals_the_full_forward():
    m = _make().eval()
    x = torch.randn(2, 12, D, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        y_full = m(x)
        y, s = m(x[:, :5], return_state=True)
        steps = [y]
        for t in range(5, 12):
            yt, s = m(x[:, t:t + 1], state=s, return_state=True)
            steps.append(yt)
    torch.testing.assert_close(torch.cat(steps, 1), y_full, rtol=1e-10, atol=1e-10)


def test_gradients_match_the_paper_equations():
    x = torch.randn(2, 20, D, generator=torch.Generator().manual_seed(4), dtype=F64, requires_grad=True)
    w = torch.randn(2, 20, D, generator=torch.Generator().manual_seed(5), dtype=F64)
    m = _make()
    got = torch.autograd.grad((m(x) * w).sum(), [x, *m.parameters()])
    want = torch.autograd.grad((_paper_loop(m, x)[0] * w).sum(), [x, *m.parameters()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_gate_is_damped_sigmoid_per_slot():
    m = _make()
    x = torch.randn(1, 6, D, dtype=F64) * 4
    g = m.log_gate(x)
    assert g.shape == (1, 6, H, M) and (g < 0).all()
    torch.testing.assert_close((8 * g).exp(), torch.sigmoid(m.f_proj(x)).view(1, 6, H, M))


def test_card_defaults_and_bad_kwargs():
    m = attnzoo.build("gsa", d_model=64)
    assert (m.n_heads, m.n_slots, m.gate_tau, m.scale) == (4, 64, 8.0, 1.0)
    assert m.state_bytes(1) == m.state_bytes(4096) == 4 * 64 * (64 + 64)
    for bad in ({"n_slots": 0}, {"n_heads": 3}, {"gate_tau": 0.0}, {"expand_k": 0.3}):
        with pytest.raises(ValueError):
            attnzoo.build("gsa", d_model=64, **bad)
    with pytest.raises(ValueError, match="state.keys"):
        m(torch.randn(1, 3, 64), state=SlotState(torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 64, 16)))


def test_the_op_docstring_example_runs():
    import doctest

    torch.manual_seed(0)
    runner = doctest.DocTestRunner()
    for t in doctest.DocTestFinder().find(gated_slot_attention, "gated_slot_attention",
                                          globs={"torch": torch, "gated_slot_attention": gated_slot_attention}):
        runner.run(t)
    assert runner.tries > 0 and runner.failures == 0
