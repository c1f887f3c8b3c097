"""The chunked ops under torch.func.vmap (attnzoo.train.group trains many models as one): the vmap
rules of SegmentedScan (torch chunked GLA / delta rule) and of the Triton GLA pass (interpreter on
the CPU) fold the vmapped dim into the batch; outputs, final states and gradients must equal one
call per member, with the vmapped dim in any position and unbatched (shared) inputs."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.func import vmap  # noqa: E402

from attnzoo.ops.delta import delta_rule  # noqa: E402
from attnzoo.ops.linear import gated_linear_attention  # noqa: E402
from attnzoo.ops.linear.triton import triton_gated_linear_attention  # noqa: E402

G, B, T, H, K, V = 3, 2, 37, 2, 16, 16


def rnd(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def gla_inputs(gate, dtype):
    q, k, v = rnd(G, B, T, H, K, seed=1, dtype=dtype), rnd(G, B, T, H, K, seed=2, dtype=dtype), \
        rnd(G, B, T, H, V, seed=3, dtype=dtype)
    shape = (G, B, T, H) if gate == "scalar" else (G, B, T, H, K)
    g = -torch.rand(*shape, generator=torch.Generator().manual_seed(4)) * 0.5
    h0 = rnd(G, B, H, K, V, seed=5)
    return [t.requires_grad_(True) for t in (q, k, v, g, h0)]


def grads_of(outs, ins, seed=9):
    loss = sum((o.float() * rnd(*o.shape, seed=seed + i)).sum() for i, o in enumerate(outs))
    return torch.autograd.grad(loss, ins)


@pytest.mark.parametrize("impl,dtype", [("torch", torch.float64), ("triton", torch.float32)])
@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_gla_under_vmap_equals_one_call_per_member(impl, dtype, gate):
    q, k, v, g, h0 = gla_inputs(gate, dtype)
    fn = lambda q, k, v, g, h0: gated_linear_attention(q, k, v, g, initial_state=h0, output_final_state=True,  # noqa: E731
                                                       impl=impl)
    o, S = vmap(fn)(q, k, v, g, h0)
    per = [fn(q[i], k[i], v[i], g[i], h0[i]) for i in range(G)]
    o_ref, S_ref = torch.stack([p[0] for p in per]), torch.stack([p[1] for p in per])
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(o, o_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(S, S_ref, rtol=tol, atol=tol)
    for a, b in zip(grads_of((o, S), (q, k, v, g, h0)), grads_of((o_ref, S_ref), (q, k, v, g, h0))):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gla_vmap_over_a_later_dim_with_a_shared_input(impl):
    """The vmapped dim of q in position 2, k shared by every member (in_dims None)."""
    q, k, v, g, h0 = gla_inputs("scalar", torch.float32)
    qm = q.movedim(0, 2).detach().requires_grad_(True)       # [B, T, G, H, K]
    k0 = k[0].detach().requires_grad_(True)
    fn = lambda q, k, v, g: gated_linear_attention(q, k, v, g, impl=impl)[0]  # noqa: E731
    o = vmap(fn, in_dims=(2, None, 0, 0))(qm, k0, v, g)
    o_ref = torch.stack([fn(qm[:, :, i], k0, v[i], g[i]) for i in range(G)])
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_of((o,), (qm, k0)), grads_of((o_ref,), (qm, k0))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_triton_gla_vmap_with_cu_seqlens():
    q, k, v, g, _ = gla_inputs("scalar", torch.float32)
    cu = torch.tensor([0, 20, 2 * T], dtype=torch.int32)
    flat = lambda x: x.reshape(G, 1, B * T, *x.shape[3:]).detach().requires_grad_(True)  # noqa: E731
    qf, kf, vf, gf = (flat(x) for x in (q, k, v, g))
    fn = lambda q, k, v, g: triton_gated_linear_attention(q, k, v, g, cu_seqlens=cu,  # noqa: E731
                                                          output_final_state=True)
    o, S = vmap(fn)(qf, kf, vf, gf)
    per = [fn(qf[i], kf[i], vf[i], gf[i]) for i in range(G)]
    torch.testing.assert_close(o, torch.stack([p[0] for p in per]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S, torch.stack([p[1] for p in per]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gated", [False, True])
def test_delta_rule_under_vmap_equals_one_call_per_member(gated):
    dt = torch.float64
    q, k, v = rnd(G, B, T, H, K, seed=1, dtype=dt), rnd(G, B, T, H, K, seed=2, dtype=dt), \
        rnd(G, B, T, H, V, seed=3, dtype=dt)
    k = torch.nn.functional.normalize(k, dim=-1)
    beta = torch.rand(G, B, T, H, generator=torch.Generator().manual_seed(6), dtype=dt)
    g = -torch.rand(G, B, T, H, generator=torch.Generator().manual_seed(7), dtype=dt) if gated else None
    ins = [t.requires_grad_(True) for t in (q, k, v, beta) + ((g,) if gated else ())]

    def fn(q, k, v, beta, g=None):
        return delta_rule(q, k, v, beta, g, output_final_state=True, impl="torch")

    o, S = vmap(fn)(*ins)
    per = [fn(*(x[i] for x in ins)) for i in range(G)]
    o_ref, S_ref = torch.stack([p[0] for p in per]), torch.stack([p[1] for p in per])
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads_of((o, S), ins), grads_of((o_ref, S_ref), ins)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
