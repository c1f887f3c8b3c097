"""cu_seqlens on the paths without a varlen kernel (reference and torch) of every recurrent op: a packed
batch of one equals separate calls per sequence (outputs, final states from their own initial states,
gradients), empty sequences pass their state through, and bad packings raise."""

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops.delta import delta_rule
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.ops.scan import selective_scan

LENS = [5, 0, 19, 1]  # one empty sequence
CU = torch.tensor([0, 5, 5, 24, 25])


def rnd(g, *shape, uniform=False):
    return (torch.rand if uniform else torch.randn)(*shape, generator=g, dtype=torch.float64)


def gla_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    T, H, K, V = sum(LENS), 2, 4, 3
    q, k, v = rnd(g, 1, T, H, K), rnd(g, 1, T, H, K), rnd(g, 1, T, H, V)
    gate = F.logsigmoid(rnd(g, 1, T, H, K))
    return (q, k, v, gate), rnd(g, len(LENS), H, K, V)


def delta_inputs(seed):
    (q, k, v, gate), h0 = gla_inputs(seed)
    return (q, F.normalize(k, dim=-1), v, torch.sigmoid(gate[..., 0]), gate[..., 1]), h0


def scan_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    T, D, N = sum(LENS), 3, 4
    u, dt, B, C = rnd(g, 1, T, D), rnd(g, 1, T, D, uniform=True), rnd(g, 1, T, N), rnd(g, 1, T, N)
    return (u, dt, B, C), -rnd(g, D, N, uniform=True), rnd(g, len(LENS), D, N)


def scan_op(u, dt, B, C, A=None, **kw):
    return selective_scan(u, dt, A, B, C, **kw)


CASES = {
    "gla": (gated_linear_attention, gla_inputs),
    "delta": (delta_rule, delta_inputs),
}


def _check_packed_equals_separate(op, per_token, h0, impl, **extra):
    leaves = [t.clone().requires_grad_() for t in (*per_token, h0)]
    *xs, s0 = leaves
    o, S = op(*xs, initial_state=s0, output_final_state=True, cu_seqlens=CU, impl=impl, **extra)
    w = torch.randn_like(o)
    grads = torch.autograd.grad((o * w).sum() + S.pow(2).sum(), leaves)
    bounds = CU.tolist()
    outs, states = [], []
    for n, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        if hi == lo:
            states.append(s0[n:n + 1])
            continue
        on, Sn = op(*(x[:, lo:hi] for x in xs), initial_state=s0[n:n + 1], output_final_state=True, impl=impl, **extra)
        outs.append(on)
        states.append(Sn)
    o2, S2 = torch.cat(outs, 1), torch.cat(states, 0)
    assert torch.allclose(o, o2, atol=1e-12) and torch.allclose(S, S2, atol=1e-12)
    assert torch.equal(S[1], s0[1].detach())  # the empty sequence's state passes through
    grads2 = torch.autograd.grad((o2 * w).sum() + S2.pow(2).sum(), leaves)
    for a, b in zip(grads, grads2):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("case", CASES)
def test_packed_equals_separate_calls(case, impl):
    op, make = CASES[case]
    per_token, h0 = make(seed=3)
    _check_packed_equals_separate(op, per_token, h0, impl)


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_scan_packed_equals_separate_calls(impl):
    per_token, A, h0 = scan_inputs(seed=4)
    _check_packed_equals_separate(scan_op, per_token, h0, impl, A=A)


def test_gla_torch_and_reference_agree_packed_and_normalized():
    (q, k, v, gate), h0 = gla_inputs(seed=5)
    h0 = torch.cat([h0, torch.rand_like(h0[..., :1])], -1)  # normalize: the state has V + 1 columns
    kw = dict(initial_state=h0, output_final_state=True, cu_seqlens=CU, normalize=True)
    o1, S1 = gated_linear_attention(q, k, v, gate, impl="torch", **kw)
    o2, S2 = gated_linear_attention(q, k, v, gate, impl="reference", **kw)
    assert torch.allclose(o1, o2, atol=1e-10) and torch.allclose(S1, S2, atol=1e-10)


def test_bad_packing_raises():
    (q, k, v, gate), h0 = gla_inputs(seed=6)
    with pytest.raises(ValueError, match="B == 1"):
        gated_linear_attention(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1),
                               cu_seqlens=CU, impl="torch")
    with pytest.raises(ValueError, match=r"initial_state must be \[N, H, K, V\]"):
        gated_linear_attention(q, k, v, gate, initial_state=h0[:2], cu_seqlens=CU, impl="torch")
    with pytest.raises(ValueError, match="rise from 0 to T"):
        gated_linear_attention(q, k, v, gate, cu_seqlens=torch.tensor([0, 7, 3, 25]), impl="reference")
    with pytest.raises(ValueError, match="rise from 0 to T"):
        delta_rule(q, F.normalize(k, dim=-1), v, torch.rand(1, 25, 2, dtype=q.dtype), cu_seqlens=torch.tensor([0, 24]))
    with pytest.raises(ValueError, match="int32/int64"):
        gated_linear_attention(q, k, v, cu_seqlens=torch.tensor([0.0, 25.0]), impl="torch")
