"""The chunked (WY/UT) delta rule against the loop over time: forward, every gradient, padding, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops.delta import delta_rule
from attnzoo.ops.delta.chunk import chunk_delta_rule
from attnzoo.ops.delta.reference import delta_rule_reference

# Relative error (||a - b|| / ||b||) allowed against the reference, per input dtype.
FP64_RTOL = 1e-9
FP32_RTOL = 1e-5  # measured <= 5e-7 (gate gradients included, also under g ~ -10)
BF16_RTOL = 5e-3  # bf16 inputs, fp32 arithmetic and state in both; measured <= 3e-4 (bf16 rounding of o, grads)

B, H, K, V = 2, 2, 16, 8
SCALE = 0.3
GRAD_NAMES = ("q", "k", "v", "beta", "g", "initial_state")


def make_inputs(T, *, gate, init, dtype, seed=0):
    """Leaf tensors q, k (L2-normalised), v, beta, g (or None), initial_state (or None)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q = rnd(B, T, H, K)
    k = F.normalize(rnd(B, T, H, K), dim=-1)
    v = rnd(B, T, H, V)
    beta = torch.sigmoid(rnd(B, T, H))
    if gate is None:
        g = None
    elif gate == "weak":
        g = F.logsigmoid(rnd(B, T, H) + 4.0)  # about -0.02 per step
    elif gate == "strong":
        g = -8.0 - 4.0 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)  # -12 .. -8 per step
    elif gate == "mixed":
        g = -10.0 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)  # anything in -10 .. 0
    else:
        raise AssertionError(gate)
    s0 = rnd(B, H, K, V) if init else None
    return {
        name: (t.to(dtype).requires_grad_() if t is not None else None)
        for name, t in zip(GRAD_NAMES, (q, k, v, beta, g, s0))
    }


def run_with_grads(fn, inp, *, seed=1, **kw):
    """Forward, then backward of random upstream gradients on o and on the final state."""
    o, S = fn(inp["q"], inp["k"], inp["v"], inp["beta"], inp["g"], scale=SCALE,
              initial_state=inp["initial_state"], output_final_state=True, **kw)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    leaves = [n for n in GRAD_NAMES if inp[n] is not None]
    grads = torch.autograd.grad((o.float() * do.float()).sum() + (S * dS).sum(), [inp[n] for n in leaves])
    return o, S, dict(zip(leaves, grads))


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_matches_reference(T, gate, init, dtype, rtol, **kw):
    inp = make_inputs(T, gate=gate, init=init, dtype=dtype)
    o_ref, S_ref, g_ref = run_with_grads(delta_rule_reference, inp)
    o, S, grads = run_with_grads(chunk_delta_rule, inp, **kw)
    assert o.dtype == dtype and o.shape == (B, T, H, V)
    assert S.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(o, o_ref) < rtol, ("o", rel_err(o, o_ref))
    assert rel_err(S, S_ref) < rtol, ("final_state", rel_err(S, S_ref))
    assert set(grads) == set(g_ref)
    for name in grads:
        assert torch.isfinite(grads[name]).all(), name
        assert rel_err(grads[name], g_ref[name]) < rtol, (name, rel_err(grads[name], g_ref[name]))


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("gate", [None, "weak", "strong"])
@pytest.mark.parametrize("T", [1, 7, 63, 64, 65, 200])
def test_float64_matches_reference(T, gate, init):
    assert_matches_reference(T, gate, init, torch.float64, FP64_RTOL)


@pytest.mark.parametrize("gate", [None, "weak", "strong", "mixed"])
@pytest.mark.parametrize("T", [7, 65, 200])
def test_float32_matches_reference(T, gate):
    assert_matches_reference(T, gate, True, torch.float32, FP32_RTOL)


@pytest.mark.parametrize("gate", [None, "mixed"])
@pytest.mark.parametrize("T", [7, 130])
def test_bfloat16_matches_reference(T, gate):
    assert_matches_reference(T, gate, True, torch.bfloat16, BF16_RTOL)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 200])
def test_chunk_size_does_not_change_the_result(chunk_size):
    assert_matches_reference(37, "mixed", True, torch.float64, FP64_RTOL, chunk_size=chunk_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_forgetting_stays_finite(dtype):
    """g = -60 per step: exp(b) underflows over a chunk; nothing may overflow to inf or NaN."""
    inp = make_inputs(70, gate=None, init=True, dtype=dtype)
    inp["g"] = torch.full((B, 70, H), -60.0, dtype=dtype, requires_grad=True)
    o, S, grads = run_with_grads(chunk_delta_rule, inp)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert all(torch.isfinite(gr).all() for gr in grads.values())
    o_ref, S_ref, g_ref = run_with_grads(delta_rule_reference, inp)
    rtol = BF16_RTOL if dtype == torch.bfloat16 else FP32_RTOL
    assert rel_err(o, o_ref) < rtol and rel_err(S, S_ref) < rtol
    for name in ("q", "k", "v", "beta"):
        assert rel_err(grads[name], g_ref[name]) < rtol, name


@pytest.mark.parametrize("init", [False, True])
def test_padded_steps_leave_state_untouched(init):
    """Steps with beta = 0, g = 0, k = v = 0 are no-ops: real outputs and final state equal the unpadded run."""
    T_real = 19
    inp = make_inputs(T_real, gate="mixed", init=init, dtype=torch.float64)
    real = {n: (t.detach() if t is not None else None) for n, t in inp.items()}
    o_c, S_c = chunk_delta_rule(real["q"], real["k"], real["v"], real["beta"], real["g"], scale=SCALE,
                                initial_state=real["initial_state"], output_final_state=True, chunk_size=8)
    # Interleave pads at the start, in the middle (across the chunk boundary 8) and at the end.
    pads_before = {0: 3, 5: 4, 12: 1, T_real: 6}
    layout = []
    for t in range(T_real + 1):
        layout += [None] * pads_before.get(t, 0)
        if t < T_real:
            layout.append(t)
    idx = torch.tensor([-1 if s is None else s for s in layout])
    is_real = idx >= 0
    gather = idx.clamp_min(0)

    def pad(x):
        y = x[:, gather].clone()
        y[:, ~is_real] = 0
        return y

    q_p = pad(real["q"]) + (~is_real)[None, :, None, None] * 5.0  # queries at pads are free
    o_p, S_p = chunk_delta_rule(q_p, pad(real["k"]), pad(real["v"]), pad(real["beta"]), pad(real["g"]),
                                scale=SCALE, initial_state=real["initial_state"], output_final_state=True,
                                chunk_size=8)
    assert torch.allclose(o_p[:, is_real], o_c, rtol=0, atol=1e-12)
    assert torch.allclose(S_p, S_c, rtol=0, atol=1e-12)


def test_public_op_dispatches_to_the_chunked_path():
    inp = {n: (t.detach() if t is not None else None)
           for n, t in make_inputs(70, gate="weak", init=True, dtype=torch.float64).items()}
    args = (inp["q"], inp["k"], inp["v"], inp["beta"], inp["g"])
    o_t, S_t = delta_rule(*args, scale=SCALE, initial_state=inp["initial_state"], output_final_state=True,
                          impl="torch")
    o_r, S_r = delta_rule(*args, scale=SCALE, initial_state=inp["initial_state"], output_final_state=True,
                          impl="reference")
    assert rel_err(o_t, o_r) < FP64_RTOL and rel_err(S_t, S_r) < FP64_RTOL
    o_n, S_n = delta_rule(*args, impl="torch")  # default scale K ** -0.5, no final state asked
    o_d, _ = delta_rule_reference(*args, scale=K ** -0.5)
    assert S_n is None and rel_err(o_n, o_d) < FP64_RTOL


def test_empty_sequence_passes_the_state_through():
    inp = {n: (t.detach() if t is not None else None)
           for n, t in make_inputs(0, gate="weak", init=True, dtype=torch.float32).items()}
    o, S = chunk_delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"], inp["g"], scale=SCALE,
                            initial_state=inp["initial_state"], output_final_state=True)
    assert o.shape == (B, 0, H, V) and torch.equal(S, inp["initial_state"])


def _good():
    return {n: (t.detach() if t is not None else None)
            for n, t in make_inputs(9, gate="weak", init=True, dtype=torch.float32).items()}


@pytest.mark.parametrize(
    "field, bad, match",
    [
        ("q", torch.zeros(B, 9, H * K), r"\[B, T, H, K\]"),
        ("k", torch.zeros(B, 9, H, K + 1), r"\[B, T, H, K\]"),
        ("v", torch.zeros(B, 8, H, V), r"\[B, T, H, V\]"),
        ("beta", torch.zeros(B, 9, H, 1), r"beta must be \[B, T, H\]"),
        ("g", torch.zeros(B, 9, H, K), r"g must be a scalar gate per head"),
        ("initial_state", torch.zeros(B, H, V, K), r"initial_state must be \[B, H, K, V\]"),
    ],
)
def test_bad_shapes_raise(field, bad, match):
    inp = _good()
    inp[field] = bad
    with pytest.raises(ValueError, match=match):
        chunk_delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"], inp["g"], scale=SCALE,
                         initial_state=inp["initial_state"])
    with pytest.raises(ValueError, match=match):
        delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"], inp["g"], initial_state=inp["initial_state"])


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True])
def test_bad_chunk_size_raises(chunk_size):
    inp = _good()
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunk_delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"], inp["g"], scale=SCALE, chunk_size=chunk_size)
