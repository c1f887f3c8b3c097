"""KDA and the DPLR delta rule under it: the chunked torch path against the float64 loops (forward, state,
gradients, strong and no forgetting, lengths around the chunk), the scalar-gate case against the existing
gated delta rule, and the mixer's two paths (the contract itself is in tests/conformance)."""

import pytest
import torch

import attnzoo
from attnzoo.ops.delta import delta_rule
from attnzoo.ops.delta.dplr import dplr_delta_rule
from attnzoo.ops.delta.kda import kimi_delta_rule
from tests.mixers._mixer_checks import assert_paths_agree, grads_with_random_cotangents as _grads

F64 = torch.float64


def _inputs(B=2, T=13, H=2, K=5, V=4, strength=1.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    q, v = r(B, T, H, K), r(B, T, H, V)
    k = torch.nn.functional.normalize(r(B, T, H, K), dim=-1)
    beta = torch.rand(B, T, H, generator=g, dtype=F64)
    gate = -torch.rand(B, T, H, K, generator=g, dtype=F64) * strength
    S0 = r(B, H, K, V)
    return [t.to(dtype) for t in (q, k, v, beta, gate, S0)]


def _kda(impl, chunk_size=16):
    return lambda q, k, v, beta, gate, S0: kimi_delta_rule(
        q, k, v, beta, gate, initial_state=S0, output_final_state=True, impl=impl, chunk_size=chunk_size)


@pytest.mark.parametrize("T", [1, 7, 16, 17, 40])
@pytest.mark.parametrize("strength", [0.0, 1.0, 30.0])
def test_chunked_kda_matches_the_paper_loop(T, strength):
    ins = _inputs(T=T, strength=strength)
    got, want = _grads(_kda("torch"), ins), _grads(_kda("reference"), ins)
    for name, a, b in zip(["o", "S", "dq", "dk", "dv", "dbeta", "dg", "dS0"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda s, n=name: f"{n}: {s}")


def test_chunked_kda_float32_and_bfloat16_inputs():
    ins = _inputs(T=37, strength=2.0)
    want = _kda("reference")(*ins)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        q, k, v, beta, gate, S0 = (t.to(dtype) for t in ins)
        o, S = _kda("torch")(q, k, v, beta, gate, S0.float())
        assert o.dtype == dtype and S.dtype == torch.float32
        err = (o.double() - want[0]).abs().max() / want[0].abs().max()
        assert err < tol, (dtype, err.item())


def test_a_gate_equal_across_channels_is_the_gated_delta_rule():
    q, k, v, beta, gate, S0 = _inputs(T=30)
    scalar = gate[..., 0]
    o, S = kimi_delta_rule(q, k, v, beta, scalar[..., None].expand_as(gate).contiguous(), initial_state=S0,
                           output_final_state=True)
    o2, S2 = delta_rule(q, k, v, beta, scalar, initial_state=S0, output_final_state=True, impl="reference")
    torch.testing.assert_close(o, o2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [5, 33])
def test_general_dplr_chunked_matches_its_loop(T):
    q, k, v, _, gate, S0 = _inputs(T=T, strength=3.0)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(q.shape, generator=g, dtype=F64) * 0.3
    b = torch.randn(q.shape, generator=g, dtype=F64) * 0.3
    fn = lambda impl: lambda q, k, v, a, b, gate, S0: dplr_delta_rule(  # noqa: E731
        q, k, v, a, b, gate, initial_state=S0, output_final_state=True, impl=impl, chunk_size=8)
    got, want = _grads(fn("torch"), [q, k, v, a, b, gate, S0]), _grads(fn("reference"), [q, k, v, a, b, gate, S0])
    for a_, b_ in zip(got, want):
        torch.testing.assert_close(a_, b_, rtol=1e-9, atol=1e-9)


def test_bad_inputs_are_refused():
    q, k, v, beta, gate, S0 = _inputs()
    with pytest.raises(ValueError, match="beta"):
        kimi_delta_rule(q, k, v, beta[..., None], gate)
    with pytest.raises(ValueError, match="g must be"):
        kimi_delta_rule(q, k, v, beta, gate[..., 0])
    with pytest.raises(ValueError, match="initial_state"):
        kimi_delta_rule(q, k, v, beta, gate, initial_state=S0[:, :1])
    with pytest.raises(ValueError, match="impl"):
        kimi_delta_rule(q, k, v, beta, gate, impl="triton")
    with pytest.raises(ValueError, match="chunk_size"):
        kimi_delta_rule(q, k, v, beta, gate, chunk_size=0)


def _mixer(impl, **kw):
    torch.manual_seed(0)
    return attnzoo.build("kda", d_model=16, n_heads=2, impl=impl, **kw).double().train()


def test_mixer_paths_agree_forward_state_and_gradients():
    assert_paths_agree(_mixer, 37, 1e-9)


def test_mixer_decay_is_per_channel_and_in_range():
    m = _mixer("torch")
    g = m.log_gate(torch.randn(1, 6, 16, dtype=F64) * 4)
    assert g.shape == (1, 6, 2, 8) and (g <= 0).all()
    assert g.std(-1).min() > 0  # the channels of a head decay at different rates


def test_long_inputs_run_in_checkpointed_segments(monkeypatch):
    import attnzoo.ops.delta.dplr_chunk as dplr_chunk

    ins = _inputs(T=45, strength=2.0)
    monkeypatch.setattr(dplr_chunk, "SEGMENT_PAIR_ELEMENTS", 2 * 2 * 2 * 4 * 4 * 5)  # 2 chunks of 4 per segment
    calls = []
    real = dplr_chunk._segment
    monkeypatch.setattr(dplr_chunk, "_segment", lambda *a: calls.append(1) or real(*a))
    got = _grads(_kda("torch", chunk_size=4), ins)
    assert len(calls) >= 12  # 6 segments, each run again in the backward
    for a, b in zip(got, _grads(_kda("reference"), ins)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_shapes_past_the_small_slice_fast_paths_keep_gradients():
    # B·H·N·K >= 2048: the size at which ops/common/gate_sums switches to in-place / out= loops
    ins = _inputs(B=2, T=128, H=2, K=16, V=2, strength=1.0)
    for a, b in zip(_grads(_kda("torch", chunk_size=4), ins), _grads(_kda("reference"), ins)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
