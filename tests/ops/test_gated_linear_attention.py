"""Chunked gated linear attention (torch) against the reference loop over time.

Forward outputs, final state and every gradient (q, k, v, g, g_gamma, initial_state) under a
random upstream gradient on o and on the final state; odd lengths around the chunk size; no
gate, constant decay, scalar and vector gates and their combinations, from no forgetting (g = 0)
to strong forgetting (g = -10 and below); float64, float32, bfloat16; normalize=True; padding
steps; bad input. Shapes stay small because the reference is a Python loop.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops.linear import gated_linear_attention
from attnzoo.ops.linear.chunk import chunk_gated_linear_attention
from attnzoo.ops.linear.reference import gated_linear_attention_reference

B, H, K, V = 2, 2, 8, 6
TS = (1, 7, 63, 64, 65, 200)
GATES = ("none", "gamma", "scalar", "vector", "scalar+gamma", "vector+gamma")
# 16: several chunks at small T; 24: nested sub-chunks of 12 then 4 (not powers of two); 64: default
CHUNK_SIZES = (16, 24, 64)

# Tolerances on the relative error ||x - ref|| / ||ref||, per tensor.
FP64_RTOL = 1e-9  # same math in another summation order: float64 rounding only
FP32_RTOL = 2e-6  # float32 accumulation over <= 200 steps, against float64 on the same inputs (seen: <= 4e-7)
BF16_OUT_RTOL = 1.5e-2  # o and gradients pass through bf16 (2^-9 relative per element; seen: <= 4e-3)
BF16_STATE_RTOL = FP32_RTOL  # the state is float32 even for bf16 inputs


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def make_gate(kind, T, gen, dtype=torch.float64):
    """Log gates mixing weak (~ -0.05), none (0 exactly) and strong (-10) forgetting."""
    g = g_gamma = None
    if kind.startswith(("scalar", "vector")):
        shape = (B, T, H) if kind.startswith("scalar") else (B, T, H, K)
        g = F.logsigmoid(3.0 + 2.0 * torch.randn(shape, generator=gen, dtype=torch.float64))
        r = torch.rand(shape, generator=gen, dtype=torch.float64)
        g = torch.where(r < 0.1, torch.full_like(g, -10.0), torch.where(r > 0.9, torch.zeros_like(g), g))
        g = g.to(dtype).requires_grad_()
    if kind.endswith("gamma"):  # RetNet-style per-head decays 1 - 2^-(1 + 3h)
        h = torch.arange(H, dtype=torch.float64)
        g_gamma = torch.log1p(-(2.0 ** (-1.0 - 3.0 * h))).to(dtype).requires_grad_()
    return g, g_gamma


def make_inputs(kind, T, seed, dtype=torch.float64, initial_state=True, v_dim=V):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, v_dim, generator=gen, dtype=torch.float64)
    g, g_gamma = make_gate(kind, T, gen, dtype)
    inp = {"q": q.to(dtype).requires_grad_(), "k": k.to(dtype).requires_grad_(), "v": v.to(dtype).requires_grad_(),
               "g": g, "g_gamma": g_gamma, "initial_state": None}
    if initial_state:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        S0 = torch.randn(B, H, K, v_dim, generator=gen, dtype=torch.float64)
        inp["initial_state"] = S0.to(state_dtype).requires_grad_()
    return inp


def upcast(inp):
    """float64 leaves holding the same values (for a float64 reference of low-precision inputs)."""
    return {n: (None if t is None else t.detach().double().requires_grad_()) for n, t in inp.items()}


def run_with_grads(fn, inp, seed, scale=0.5, **kw):
    """o, final state, and d(loss)/d(leaf) for a random upstream gradient on o and on the state."""
    o, S = fn(inp["q"], inp["k"], inp["v"], inp["g"], g_gamma=inp["g_gamma"], scale=scale,
              initial_state=inp["initial_state"], output_final_state=True, **kw)
    gen = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64)
    names = [n for n, t in inp.items() if t is not None]
    grads = torch.autograd.grad((o.double() * do).sum() + (S.double() * dS).sum(), [inp[n] for n in names])
    return o, S, dict(zip(names, grads))


def assert_close(got, ref, tol, what):
    err = rel_err(got, ref)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:.1g}"


def compare(got, ref, tol_o, tol_state, tol_grad):
    (o, S, grads), (o_r, S_r, grads_r) = got, ref
    assert_close(o, o_r, tol_o, "o")
    assert_close(S, S_r, tol_state, "final state")
    assert grads.keys() == grads_r.keys()
    for n in grads:
        assert_close(grads[n], grads_r[n], tol_grad, f"d{n}")


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("gate", GATES)
def test_float64_matches_reference_forward_and_all_gradients(gate, T):
    inp = make_inputs(gate, T, seed=T)
    ref = run_with_grads(gated_linear_attention_reference, inp, seed=T)
    for chunk_size in CHUNK_SIZES:
        got = run_with_grads(chunk_gated_linear_attention, inp, seed=T, chunk_size=chunk_size)
        assert got[0].dtype == torch.float64 and got[1].dtype == torch.float64
        compare(got, ref, FP64_RTOL, FP64_RTOL, FP64_RTOL)


@pytest.mark.parametrize("gate", GATES)
def test_without_initial_state_and_final_state(gate):
    inp = make_inputs(gate, 65, seed=3, initial_state=False)
    ref = run_with_grads(gated_linear_attention_reference, inp, seed=3)
    got = run_with_grads(chunk_gated_linear_attention, inp, seed=3, chunk_size=16)
    compare(got, ref, FP64_RTOL, FP64_RTOL, FP64_RTOL)
    o, S = chunk_gated_linear_attention(inp["q"], inp["k"], inp["v"], inp["g"], g_gamma=inp["g_gamma"], scale=0.5)
    assert S is None
    assert_close(o, ref[0], FP64_RTOL, "o without final state")


@pytest.mark.parametrize("T,chunk_size", [(65, 64), (200, 16)])
@pytest.mark.parametrize("gate", ["none", "scalar+gamma", "vector+gamma"])
def test_float32_against_float64_reference(gate, T, chunk_size):
    inp = make_inputs(gate, T, seed=11, dtype=torch.float32)
    ref = run_with_grads(gated_linear_attention_reference, upcast(inp), seed=11)
    got = run_with_grads(chunk_gated_linear_attention, inp, seed=11, chunk_size=chunk_size)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    compare(got, ref, FP32_RTOL, FP32_RTOL, FP32_RTOL)


@pytest.mark.parametrize("gate", ["scalar", "vector+gamma"])
def test_bfloat16_inputs_keep_a_float32_state(gate):
    inp = make_inputs(gate, 130, seed=5, dtype=torch.bfloat16)
    assert inp["initial_state"].dtype == torch.float32
    ref = run_with_grads(gated_linear_attention_reference, upcast(inp), seed=5)
    got = run_with_grads(chunk_gated_linear_attention, inp, seed=5)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert all(got[2][n].dtype == torch.bfloat16 for n in ("q", "k", "v", "g"))
    compare(got, ref, BF16_OUT_RTOL, BF16_STATE_RTOL, BF16_OUT_RTOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_very_strong_forgetting_stays_finite_and_exact(gate, dtype):
    """g = -30 per step: a chunk's cumulative gate reaches -1900, where exp(-b) overflows float32;
    the safe forms never take it."""
    inp = make_inputs(gate, 130, seed=9, dtype=dtype)
    with torch.no_grad():
        inp["g"].copy_(-30.0 + 20.0 * torch.rand(inp["g"].shape, generator=torch.Generator().manual_seed(0)))
    ref = run_with_grads(gated_linear_attention_reference, upcast(inp), seed=9)
    got = run_with_grads(chunk_gated_linear_attention, inp, seed=9)
    assert torch.isfinite(got[0]).all() and all(torch.isfinite(t).all() for t in got[2].values())
    tol = FP32_RTOL if dtype == torch.float32 else BF16_OUT_RTOL
    compare(got, ref, tol, FP32_RTOL, tol)


@pytest.mark.parametrize("gate", ["scalar", "vector+gamma"])
def test_normalize_matches_reference(gate):
    """normalize=True (api.py appends a ones column to v): state [B, H, K, V + 1], o divided by q·z."""
    inp = make_inputs(gate, 65, seed=21, initial_state=True, v_dim=V + 1)
    with torch.no_grad():  # positive features and normaliser, as a kernel feature map gives
        for n in ("q", "k", "initial_state"):
            inp[n].copy_(inp[n].abs() + 0.1)
    inp["v"] = inp["v"][..., :V].detach().requires_grad_()

    def fn(impl):
        return lambda q, k, v, g, **kw: gated_linear_attention(q, k, v, g, normalize=True, impl=impl, **kw)

    ref = run_with_grads(fn("reference"), inp, seed=21)
    got = run_with_grads(fn("torch"), inp, seed=21)
    assert got[1].shape == (B, H, K, V + 1)
    compare(got, ref, FP64_RTOL, FP64_RTOL, FP64_RTOL)


@pytest.mark.parametrize("gate", ["scalar+gamma", "vector"])
def test_state_continuation_across_calls(gate):
    """Calls on consecutive pieces (one of them a single decode step), each starting from the
    previous call's final state, give the outputs and final state of one call on the whole."""
    inp = make_inputs(gate, 130, seed=6)
    args = [inp[n].detach() if inp[n] is not None else None for n in ("q", "k", "v", "g")]
    g_gamma = None if inp["g_gamma"] is None else inp["g_gamma"].detach()
    kw = {"g_gamma": g_gamma, "scale": 0.5, "output_final_state": True, "chunk_size": 16}
    o_full, S_full = chunk_gated_linear_attention(*args, initial_state=inp["initial_state"].detach(), **kw)
    S, outs = inp["initial_state"].detach(), []
    for lo, hi in [(0, 37), (37, 38), (38, 100), (100, 130)]:
        o, S = chunk_gated_linear_attention(*[None if x is None else x[:, lo:hi] for x in args],
                                            initial_state=S, **kw)
        outs.append(o)
    assert_close(torch.cat(outs, 1), o_full, 1e-12, "o of the pieces")
    assert_close(S, S_full, 1e-12, "final state of the pieces")


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_hard_reset_gate_minus_infinity(gate):
    """g = -inf at a step (inside a sub-chunk, and on a chunk's first token) forgets everything
    before it, as in the reference: no inf - inf or 0 * inf anywhere."""
    inp = make_inputs(gate, 70, seed=12)
    g = inp["g"].detach().clone()
    g[:, 5] = float("-inf")
    g[:, 32] = float("-inf")
    args = (inp["q"].detach(), inp["k"].detach(), inp["v"].detach(), g)
    kw = {"scale": 0.5, "initial_state": inp["initial_state"].detach(), "output_final_state": True}
    o_r, S_r = gated_linear_attention_reference(*args, **kw)
    o, S = chunk_gated_linear_attention(*args, chunk_size=16, **kw)
    assert torch.isfinite(o).all()
    assert_close(o, o_r, FP64_RTOL, "o")
    assert_close(S, S_r, FP64_RTOL, "final state")


def test_api_torch_impl_is_the_chunked_op():
    inp = make_inputs("vector", 70, seed=2)
    args = (inp["q"], inp["k"], inp["v"], inp["g"])
    o_api, S_api = gated_linear_attention(*args, scale=0.5, initial_state=inp["initial_state"],
                                          output_final_state=True, impl="torch")
    o, S = chunk_gated_linear_attention(*args, scale=0.5, initial_state=inp["initial_state"], output_final_state=True)
    assert torch.equal(o_api, o) and torch.equal(S_api, S)


@pytest.mark.parametrize("gate", ["scalar", "vector", "vector+gamma"])
def test_padding_steps_leave_state_and_outputs_untouched(gate):
    """Steps with total log gate 0 (g = 0, or g = -g_gamma) and k = v = 0, anywhere in the
    sequence (different places per row), change neither the real positions' outputs nor the state."""
    T_real, T_pad = 40, 57
    inp = make_inputs(gate, T_real, seed=4)
    gen = torch.Generator().manual_seed(8)
    mask = torch.zeros(B, T_pad, dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(T_pad, generator=gen)[:T_real].sort().values] = True
    padded = {}
    for n in ("q", "k", "v", "g"):
        x = inp[n].detach()
        fill = torch.randn(B, T_pad, *x.shape[2:], generator=gen, dtype=x.dtype) if n == "q" else (
            torch.zeros(B, T_pad, *x.shape[2:], dtype=x.dtype))
        if n == "g" and inp["g_gamma"] is not None:
            fill = fill - inp["g_gamma"].detach()[:, None].expand(x.shape[2:])
        fill[mask] = x.reshape(B * T_real, *x.shape[2:])
        padded[n] = fill
    kw = {"g_gamma": inp["g_gamma"], "scale": 0.5, "initial_state": inp["initial_state"], "output_final_state": True}
    with torch.no_grad():
        o, S = chunk_gated_linear_attention(inp["q"], inp["k"], inp["v"], inp["g"], chunk_size=16, **kw)
        o_pad, S_pad = chunk_gated_linear_attention(padded["q"], padded["k"], padded["v"], padded["g"],
                                                    chunk_size=16, **kw)
    assert_close(S_pad, S, 1e-12, "state after padding")
    assert_close(o_pad[mask].reshape(o.shape), o, 1e-12, "outputs at real positions")


def _bad_inputs():
    q, k, v = torch.zeros(1, 5, 2, 4), torch.zeros(1, 5, 2, 4), torch.zeros(1, 5, 2, 3)
    ok = {"q": q, "k": k, "v": v, "g": None, "g_gamma": None, "initial_state": None, "chunk_size": 64}
    cases = {
        "q of rank 3": {"q": q[0], "k": k[0]},
        "k shape differs": {"k": torch.zeros(1, 5, 2, 5)},
        "v of another length": {"v": torch.zeros(1, 6, 2, 3)},
        "g [B, T]": {"g": torch.zeros(1, 5)},
        "g of another K": {"g": torch.zeros(1, 5, 2, 3)},
        "g_gamma of another H": {"g_gamma": torch.zeros(3)},
        "initial_state of another V": {"initial_state": torch.zeros(1, 2, 4, 4)},
        "chunk_size 0": {"chunk_size": 0},
        "chunk_size float": {"chunk_size": 16.0},
        "chunk_size bool": {"chunk_size": True},
    }
    return {name: {**ok, **change} for name, change in cases.items()}


BAD = _bad_inputs()


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_value_error(case):
    a = BAD[case]
    with pytest.raises(ValueError, match="must be"):
        chunk_gated_linear_attention(a["q"], a["k"], a["v"], a["g"], g_gamma=a["g_gamma"], scale=1.0,
                                     initial_state=a["initial_state"], chunk_size=a["chunk_size"])


def test_autocast_gives_q_k_v_one_dtype(monkeypatch):
    """Under autocast, q, k, v of mixed dtypes reach the implementation in the autocast dtype (a
    mixer's can come mixed under CUDA autocast, which then kept them off the Triton kernels); g
    stays float32; the result equals the all-bf16 call. Outside autocast, or all float32 inside
    (the op then computes in float32, test_autocast_mixers), nothing is cast."""
    import attnzoo.ops.linear.chunk as chunk

    seen = []
    real = chunk.chunk_gated_linear_attention

    def spy(q, k, v, g=None, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, None if g is None else g.dtype))
        return real(q, k, v, g, **kw)

    monkeypatch.setattr(chunk, "chunk_gated_linear_attention", spy)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 8).bfloat16(), torch.randn(1, 20, 2, 8)
    g = F.logsigmoid(torch.randn(1, 20, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, _ = gated_linear_attention(q, k, v, g, impl="torch")
    assert seen[-1] == (torch.bfloat16,) * 3 + (torch.float32,) and o.dtype == torch.bfloat16
    o_ref, _ = gated_linear_attention(q.bfloat16(), k, v.bfloat16(), g, impl="torch")
    assert torch.equal(o, o_ref)
    gated_linear_attention(q, k, v, g, impl="torch")
    assert seen[-1] == (torch.float32, torch.bfloat16, torch.float32, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gated_linear_attention(q, k.float(), v, g, impl="torch")
    assert seen[-1] == (torch.float32,) * 4
