"""Triton gated linear attention with more key channels than one launch takes (K > MAX_K = 128):
blocks of key channels whose outputs are summed and whose states are concatenated. Based's Taylor
features (1 + f + f^2 = 273 for f = 16) needed it: with K > 128 refused, impl="auto" ran the torch
chunked path on CUDA. On the CPU through Triton's interpreter, against the float64 reference loop."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import attnzoo.ops.linear.triton.api as tri  # noqa: E402
from attnzoo.ops.linear import gated_linear_attention  # noqa: E402
from attnzoo.ops.linear.reference import gated_linear_attention_reference as reference  # noqa: E402
from attnzoo.ops.linear.triton import triton_gated_linear_attention, triton_supported  # noqa: E402
from tests.ops._checks import assert_compiled_matches_eager, rel  # noqa: E402
from tests.ops._gla_triton_cases import assert_matches_reference  # noqa: E402
from tests.ops._gla_triton_cases import make as _make  # noqa: E402


def make(B, T, H, K, V, gate, dtype=torch.float32, seed=0):
    """g = −U(0, 1), g_gamma = −0.3·U(0, 1); H = 2 (the shared make's)."""
    assert H == 2
    return _make(B, T, gate, 1.0, dtype, seed, K=K, V=V, gamma_strength=0.3)


@pytest.mark.parametrize("gate", [None, "scalar", "gamma", "vector"])
def test_key_blocks_match_reference(gate, monkeypatch):
    """MAX_K lowered to 16 so that K = 40 runs as blocks of 16, 16 and 8 (the interpreter is slow):
    output, final state and every gradient (q, k, v, g, g_gamma, initial state) as the whole op."""
    monkeypatch.setattr(tri, "MAX_K", 16)
    ins = make(2, 70, 2, 40, 8, gate, seed=1)
    do, dS = torch.randn(2, 70, 2, 8), torch.randn(2, 2, 40, 8)
    _, S, _ = assert_matches_reference(triton_gated_linear_attention, ins, do, dS, 1e-4, scale=0.2)
    assert S.shape == (2, 2, 40, 8)


def test_key_blocks_default_scale_is_the_whole_k(monkeypatch):
    """scale=None means K ** -0.5 of the whole K, not of a block; the decode kernel (no gradient,
    T <= 16) and packed sequences go through the blocks too."""
    monkeypatch.setattr(tri, "MAX_K", 16)
    q, k, v, g, _, h0 = make(1, 12, 2, 36, 8, "vector", seed=2)
    cu = torch.tensor([0, 5, 12])
    h0 = torch.randn(2, 2, 36, 8)
    with torch.no_grad():
        o, S = triton_gated_linear_attention(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    for n, (a, b) in enumerate(((0, 5), (5, 12))):
        o_r, S_r = reference(q[:, a:b].double(), k[:, a:b].double(), v[:, a:b].double(), g[:, a:b].double(),
                             scale=36 ** -0.5, initial_state=h0[n:n + 1].double(), output_final_state=True)
        assert rel(o[:, a:b], o_r) < 1e-5 and rel(S[n:n + 1], S_r) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wide_k_normalized_through_the_public_op(dtype):
    """The real limit: K = 150 (blocks of 128 and 22) with normalize=True (a ones column in v),
    forward and gradients against the float64 reference loop; no gate, as in Based."""
    B, T, H, K, V = 1, 70, 1, 150, 6
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.rand(B, T, H, K, generator=gen) * 0.2).to(dtype), (torch.rand(B, T, H, K, generator=gen) * 0.2)
    k, v = k.to(dtype), torch.randn(B, T, H, V, generator=gen).to(dtype)
    do = torch.randn(B, T, H, V)
    runs = []
    for impl, cast in (("triton", lambda t: t), ("reference", lambda t: t.double())):
        ins = [cast(t).detach().clone().requires_grad_(True) for t in (q, k, v)]
        o, _ = gated_linear_attention(*ins, scale=1.0, normalize=True, impl=impl)
        torch.autograd.backward(o, do.to(o.dtype))
        runs.append((o, [t.grad for t in ins]))
    (o, grads), (o_r, grads_r) = runs
    tol = 1e-4 if dtype == torch.float32 else 5e-3
    assert o.dtype == dtype and rel(o, o_r) < tol, rel(o, o_r)
    for name, a, b in zip(("dq", "dk", "dv"), grads, grads_r):
        assert rel(a, b) < tol, (name, rel(a, b))


def test_dispatch_takes_triton_for_based_features():
    """Based at f = 16 has 273 features per head and V = head_dim + 1 (normaliser): within the
    Triton limits now, so impl="auto" on CUDA picks Triton (the device is dispatch's business)."""
    q = torch.randn(1, 4, 12, 273)
    assert triton_supported(q, q, torch.randn(1, 4, 12, 33))
    assert not triton_supported(q, q, torch.randn(1, 4, 12, 257))


def test_based_mixer_triton_equals_torch():
    """Based with 1 + 12 + 144 = 157 features per head: the mixer's forward and gradients on the
    Triton path (interpreter) equal the torch chunked path."""
    import attnzoo

    torch.manual_seed(0)
    m = attnzoo.build("based", d_model=16, n_heads=1, feature_dim=12, window=8)
    x = torch.randn(1, 40, 16)
    outs = []
    for impl in ("triton", "torch"):
        m.impl = impl
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.square().sum().backward()
        outs.append((y, xi.grad, m.q_proj.weight.grad.clone()))
    for a, b in zip(*outs):
        assert rel(a, b) < 1e-4, rel(a, b)


def test_key_blocks_under_torch_compile(monkeypatch):
    """The blocks are plain torch around the custom op: a fullgraph compile gives the eager values
    and gradients (MAX_K lowered to 8: K = 20 is three blocks)."""
    monkeypatch.setattr(tri, "MAX_K", 8)
    q, k, v, g, _, h0 = make(1, 20, 2, 20, 4, "scalar", seed=4)

    def loss(q, k, v, g, h0):
        o, S = triton_gated_linear_attention(q, k, v, g, scale=0.25, initial_state=h0, output_final_state=True)
        return (o * o).sum() + S.sum()

    assert_compiled_matches_eager(loss, (q, k, v, g, h0), tol=1e-6)
