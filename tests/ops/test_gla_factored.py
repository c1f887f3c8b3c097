"""The factorised vector-gate path of the chunked torch op (chunk_factored.py) against the reference.

A row of a chunk takes the factorised form when its decay from the chunk start is at most
e^{-SAFE_LOG} in every channel, else the exactly safe assembled form (test_gated_linear_attention.py's
gates, with 10% of steps at -10, give mostly such rows). Here: weak gates (every row factorised),
gates whose decay crosses the threshold inside a chunk (both forms in one chunk), and one call
whose segments differ.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo.ops.linear.chunk_factored as factored_mod
import attnzoo.ops.common.chunk_layout as layout
from attnzoo.ops.linear.chunk import chunk_gated_linear_attention
from attnzoo.ops.linear.chunk_factored import SAFE_LOG, factored_forward
from attnzoo.ops.linear.chunk_vector import assembled_plan, vector_forward
from attnzoo.ops.linear.reference import gated_linear_attention_reference
from tests.ops.test_gated_linear_attention import B, H, K, FP64_RTOL, compare, run_with_grads, upcast

FP32_RTOL = 2e-5  # the gate gradient's in-chunk sum cancels pairs: ~C·eps (seen: <= 7e-7 at the threshold, 3e-7 weak)


def inputs(T, g, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(3))
    S0 = torch.randn(B, H, K, K, generator=gen, dtype=torch.float64)
    st = torch.float64 if dtype == torch.float64 else torch.float32
    return {"q": q.to(dtype).requires_grad_(), "k": k.to(dtype).requires_grad_(), "v": v.to(dtype).requires_grad_(),
            "g": g.to(dtype).requires_grad_(), "g_gamma": None, "initial_state": S0.to(st).requires_grad_()}


def weak_gate(T, seed=0):
    """GLA's gate with the paper's normaliser: logsigmoid(x) / 16, chunk totals of a few units."""
    gen = torch.Generator().manual_seed(seed + 100)
    return F.logsigmoid(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)) / 16


@pytest.fixture
def assembled_calls(monkeypatch):
    """Counts the segments that needed the assembled form for some rows."""
    seen = []

    def spy(*a, **kw):
        seen.append(1)
        return vector_forward(*a, **kw)
    monkeypatch.setattr(factored_mod, "vector_forward", spy)
    return seen


def test_rows_take_the_factorised_form_only_while_safe():
    """A chunk whose decay crosses the threshold at row 6: A equals the assembled A on every row
    (float64), and rows >= 6 came from the assembled form (the factorised keys are clamped there)."""
    R, C, Kd = 3, 16, 4
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(R, C, Kd, generator=gen, dtype=torch.float64) for _ in range(2))
    g = torch.full((R, C, Kd), -0.1, dtype=torch.float64)
    g[:, 6, 1] = -SAFE_LOG
    A, *_, saved = factored_forward(q, k, g, assembled_plan(C))
    A_ref = vector_forward(q, k, g, assembled_plan(C))[0]
    safe = saved[4]
    assert safe[:, :6].all() and not safe[:, 6:].any()
    assert torch.allclose(A, A_ref, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("T,chunk_size", [(7, 64), (63, 64), (65, 64), (200, 64), (200, 16)])
def test_weak_gates_take_the_factored_path_and_match_float64(assembled_calls, T, chunk_size):
    inp = inputs(T, weak_gate(T, seed=T), seed=T)
    ref = run_with_grads(gated_linear_attention_reference, inp, seed=T)
    got = run_with_grads(chunk_gated_linear_attention, inp, seed=T, chunk_size=chunk_size)
    compare(got, ref, FP64_RTOL, FP64_RTOL, FP64_RTOL)
    assert not assembled_calls


@pytest.mark.parametrize("T", [65, 200])
def test_weak_gates_float32_against_float64_reference(assembled_calls, T):
    inp = inputs(T, weak_gate(T, seed=T), dtype=torch.float32, seed=T)
    ref = run_with_grads(gated_linear_attention_reference, upcast(inp), seed=T)
    got = run_with_grads(chunk_gated_linear_attention, inp, seed=T, chunk_size=64)
    compare(got, ref, FP32_RTOL, FP32_RTOL, FP32_RTOL)
    assert not assembled_calls


@pytest.mark.parametrize("margin,mixed", [(0.25, False), (-0.25, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gates_at_the_threshold(assembled_calls, margin, mixed, dtype):
    """Chunks of 16 whose every channel decays by e^{-(SAFE_LOG -+ 0.25)}, most of it in one step
    (row 5): the steepest factors the factorised form may meet; just past the threshold, rows 5-15
    of every chunk take the assembled form, rows 0-4 the factorised one."""
    T, C = 48, 16
    g = torch.full((B, T, H, K), -0.01, dtype=torch.float64)
    g[:, 5::C] = -(SAFE_LOG - margin) + 0.01 * (C - 1)  # chunk totals -(SAFE_LOG - margin)
    inp = inputs(T, g, dtype=dtype, seed=5)
    ref = run_with_grads(gated_linear_attention_reference, upcast(inp), seed=5)
    got = run_with_grads(chunk_gated_linear_attention, inp, seed=5, chunk_size=C)
    tol = FP64_RTOL if dtype == torch.float64 else FP32_RTOL
    compare(got, ref, tol, tol, tol)
    assert bool(assembled_calls) == mixed


def test_segments_of_one_call_take_different_paths(assembled_calls, monkeypatch):
    """Segments of 64 steps: the first weak (factorised rows only), the second strong (assembled
    rows too); the state and its gradient pass between them."""
    monkeypatch.setattr(layout, "SEGMENT_ELEMENTS", 64 * B * H * K)
    T = 128
    g = weak_gate(T, seed=9)
    g[:, 64:] -= 2.0  # chunks of 16: totals about -32 - 1 per channel
    inp = inputs(T, g, seed=9)
    ref = run_with_grads(gated_linear_attention_reference, inp, seed=9)
    got = run_with_grads(chunk_gated_linear_attention, inp, seed=9, chunk_size=16)
    compare(got, ref, FP64_RTOL, FP64_RTOL, FP64_RTOL)
    assert len(assembled_calls) == 1
