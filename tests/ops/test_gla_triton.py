"""Triton gated linear attention against the float64 reference loop, on the CPU through Triton's
interpreter (TRITON_INTERPRET=1 is set before triton is imported). Shapes are tiny: the interpreter
is slow. The same checks at real shapes on a GPU live in benchmarks/gpu_gla.py."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from attnzoo.ops.linear import gated_linear_attention  # noqa: E402
from attnzoo.ops.linear.reference import gated_linear_attention_reference as reference  # noqa: E402
from attnzoo.ops.linear.triton import triton_gated_linear_attention, triton_supported  # noqa: E402

from tests.ops._checks import assert_compiled_matches_eager, rel  # noqa: E402
from tests.ops._gla_triton_cases import TOL, H, assert_matches_reference, assert_sequences_match_reference  # noqa: E402
from tests.ops._gla_triton_cases import fwd_bwd, make  # noqa: E402

K, V = 16, 16


def check_against_reference(B, T, gate, strength, dtype=torch.float32, seed=0):
    inputs = make(B, T, gate, strength, dtype, seed)
    do, dS = torch.randn(B, T, H, V), torch.randn(B, H, K, V)
    assert_matches_reference(triton_gated_linear_attention, inputs, do, dS, TOL[dtype])


@pytest.mark.parametrize("gate,T,strength", [
    (None, 37, 0.0), ("gamma", 65, 1.0), ("scalar", 70, 10.0), ("scalar", 64, 0.0), ("vector", 37, 10.0),
    ("vector", 70, 0.05),
])
def test_chunked_matches_reference_fp32(gate, T, strength):
    """Forward, final state and every gradient (q, k, v, gates, initial state); odd T, T = C, T > C;
    strong forgetting (g down to -10 per token) and none (g = 0)."""
    check_against_reference(B=2 if T < 64 else 1, T=T, gate=gate, strength=strength)


@pytest.mark.parametrize("fused", [True, False])
def test_scalar_gate_gradient_both_assemblies(fused, monkeypatch):
    """The scalar gate's dg is either written by the dq/dk kernel (in-chunk reverse cumsum plus
    <S_c, dS_c> from tiles it holds) or assembled from the state pass's term (TUNE["scalar_fused_dg"]):
    both against the float64 reference, several chunks, initial and final state in the loss."""
    from attnzoo.ops.linear.triton import chunk as triton_chunk

    monkeypatch.setitem(triton_chunk.TUNE, "scalar_fused_dg", fused)
    check_against_reference(B=2, T=150, gate="scalar", strength=1.0, seed=4)
    check_against_reference(B=1, T=131, gate="gamma", strength=0.3, seed=5)


@pytest.mark.parametrize("gate,strength", [("scalar", 1.0), ("vector", 0.05), ("vector", 10.0)])
def test_saved_states_match_recomputed(gate, strength, monkeypatch):
    """The eager backward uses the forward's saved b, h, ht (and intra-chunk A) when SAVE_STATES is
    on, and recomputes them when off: identical gradients; a second backward through a retained
    graph (after the saved tensors were released) recomputes and agrees too."""
    import attnzoo.ops.linear.triton.api as tri

    q, k, v, g, g_gamma, h0 = make(1, 150, gate, strength, torch.float32, seed=3)
    do, dS = torch.randn(1, 150, H, V), torch.randn(1, H, K, V)
    runs = {}
    for save in (True, False):
        monkeypatch.setattr(tri, "SAVE_STATES", save)
        runs[save] = fwd_bwd(triton_gated_linear_attention, q, k, v, g, g_gamma, h0, do, dS)
    for a, b in zip(runs[True][2], runs[False][2]):
        if b is not None:
            assert torch.equal(a, b)
    monkeypatch.setattr(tri, "SAVE_STATES", True)
    ins = [t.clone().requires_grad_(True) for t in (q, k, v, g, h0)]
    o, S = triton_gated_linear_attention(*ins[:4], scale=K ** -0.5, initial_state=ins[4], output_final_state=True)
    first = torch.autograd.grad([o, S], ins, [do, dS], retain_graph=True)
    second = torch.autograd.grad([o, S], ins, [do, dS])
    for a, b, c in zip(first, second, runs[True][2][:4] + [runs[True][2][5]]):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_chunked_half_inputs_fp32_state(gate):
    """float16 here: Triton 3.6's interpreter multiplies bfloat16 tiles as raw bits in tl.dot, so
    bfloat16 is checked on the GPU (benchmarks/gpu_gla.py); the kernels treat both alike."""
    check_against_reference(B=1, T=23, gate=gate, strength=1.0, dtype=torch.float16)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_varlen_matches_sequences_one_by_one(gate):
    """cu_seqlens packs sequences (lengths 5, 66, 20) into B = 1; each starts from its own initial
    state and returns its own final state; outputs and gradients equal running them one by one."""
    lens = [5, 66, 20]
    cu = torch.tensor([0, 5, 71, 91])
    q, k, v, g, _, h0 = make(1, sum(lens), gate, 1.0, torch.float32, seed=3, n_state=len(lens))
    do, dS = torch.randn(1, sum(lens), H, V), torch.randn(len(lens), H, K, V)
    got = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS, cu_seqlens=cu)
    assert_sequences_match_reference(got, q, k, v, g, h0, do, dS, cu, tol=1e-4)


def test_varlen_through_the_public_op():
    """cu_seqlens reaches the Triton kernels from gated_linear_attention, and the torch path (one
    sequence after another) gives the same outputs, states and gradients."""
    cu = torch.tensor([0, 7, 40])
    q, k, v, g, _, h0 = make(1, 40, "vector", 1.0, torch.float32, seed=9, n_state=2)
    do, dS = torch.randn(1, 40, H, V), torch.randn(2, H, K, V)
    runs = [fwd_bwd(gated_linear_attention, q, k, v, g, None, h0, do, dS, cu_seqlens=cu, impl=impl)
            for impl in ("triton", "torch")]
    (o, S, grads), (o_t, S_t, grads_t) = runs
    assert rel(o, o_t) < 1e-4 and rel(S, S_t) < 1e-4
    for name, a, b in zip(("dq", "dk", "dv", "dg", "dh0"), grads[:4] + grads[5:], grads_t[:4] + grads_t[5:]):
        assert rel(a, b) < 1e-4, (name, rel(a, b))


@pytest.mark.parametrize("gate", [None, "scalar", "vector"])
def test_recurrent_decode_kernel(gate):
    """With no gradient and small T the token-by-token kernel runs; it continues a state."""
    q, k, v, g, _, h0 = make(2, 3, gate, 1.0, torch.float32, seed=5)
    with torch.no_grad():
        o, S = triton_gated_linear_attention(q, k, v, g, scale=0.3, initial_state=h0, output_final_state=True)
    o_r, S_r = reference(q.double(), k.double(), v.double(), g.double() if g is not None else None,
                         scale=0.3, initial_state=h0.double(), output_final_state=True)
    assert rel(o, o_r) < 1e-5 and rel(S, S_r) < 1e-5


def test_auto_and_explicit_dispatch():
    q, k, v, g, _, _ = make(1, 9, "scalar", 1.0, torch.float32, seed=6)
    o_t, _ = gated_linear_attention(q, k, v, g, impl="triton")
    o_a, _ = gated_linear_attention(q, k, v, g, impl="auto")  # CPU tensors: the torch path
    assert rel(o_t, o_a) < 1e-5
    assert triton_supported(q, k, v, g) and not triton_supported(q.double(), k.double(), v.double(), g)


def test_bad_inputs_raise():
    q, k, v, g, _, h0 = make(2, 9, "scalar", 1.0, torch.float32, seed=7)
    with pytest.raises(ValueError, match="dtype"):
        triton_gated_linear_attention(q.double(), k.double(), v.double(), g, scale=1.0)
    big = torch.randn(1, 4, 1, 512)
    with pytest.raises(ValueError, match="head dim V"):
        triton_gated_linear_attention(big[..., :16], big[..., :16], big, None, scale=1.0)
    assert not triton_supported(big[..., :16], big[..., :16], big)  # impl="auto" falls back to torch
    assert triton_supported(big, big, big[..., :16])  # K > 128: blocks of key channels (test_gla_triton_wide_k)
    with pytest.raises(ValueError, match="B == 1"):
        triton_gated_linear_attention(q, k, v, g, scale=1.0, cu_seqlens=torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match="interpreter multiplies bfloat16"):  # it would return garbage
        triton_gated_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, scale=1.0)
    with pytest.raises(ValueError, match="initial_state"):
        triton_gated_linear_attention(q[:1], k[:1], v[:1], g[:1], scale=1.0, initial_state=h0,
                                      cu_seqlens=torch.tensor([0, 2, 5, 9]))


def test_custom_op_under_torch_compile():
    """The chunked pass is a torch.library custom op: a fullgraph compile keeps it as one node and
    gives the eager values and gradients."""
    q, k, v, g, _, h0 = make(1, 20, "scalar", 1.0, torch.float32, seed=8)

    def loss(q, k, v, g, h0):
        o, S = triton_gated_linear_attention(q, k, v, g, scale=0.25, initial_state=h0, output_final_state=True)
        return (o * o).sum() + S.sum()

    assert_compiled_matches_eager(loss, (q, k, v, g, h0), tol=1e-6)


def test_scalar_dqdk_never_takes_k_blocks_of_16():
    """The no-gate/scalar dq/dk kernel gave dk off by ~100% on the H200 at K = 16 in a K block of 16
    (right in this interpreter, right at K = 8, 24, 32: benchmarks/gpu_gla_odd.py), so K pads to 32."""
    from attnzoo.ops.linear.triton.chunk import _scalar_dqdk_bk

    assert [_scalar_dqdk_bk(K) for K in (8, 16, 21, 32, 33, 100, 128)] == [32, 32, 32, 32, 64, 128, 128]
