"""block_sparse and gated_softmax mixers on their Triton paths (the CUDA paths, here through Triton's
interpreter: TRITON_INTERPRET=1 before triton is imported) against their torch paths: outputs, every
parameter's gradient, and for block_sparse a prefill continued by token-by-token decoding (the decode
kernel) against one full forward."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import attnzoo  # noqa: E402

D = 32


def pair(name, fast, slow, **kw):
    torch.manual_seed(0)
    a = attnzoo.build(name, d_model=D, **kw, **fast).float()
    b = attnzoo.build(name, d_model=D, **kw, **slow).float()
    b.load_state_dict(a.state_dict())
    return a, b


def assert_same_outputs_and_grads(a, b, x, tol):
    ya, yb = a(x), b(x)
    assert (ya - yb).abs().max() < tol
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad - q.grad).abs().max() < tol * max(1.0, q.grad.abs().max().item()), n


def test_block_sparse_triton_path_equals_torch_path_with_gradients_and_decoding():
    kw = {"n_heads": 2, "n_kv_heads": 1, "block_size": 16, "top_k": 1, "n_sink": 1}
    a, b = pair("block_sparse", {"impl": "triton"}, {"impl": "torch"}, **kw)
    x = torch.randn(2, 70, D, generator=torch.Generator().manual_seed(1))
    assert_same_outputs_and_grads(a, b, x, 1e-4)
    with torch.no_grad():
        full = b(x)
        y, s = a(x[:, :64], return_state=True)  # 64: the next token starts a block; 65, 66 continue it
        steps = [y]
        for t in range(64, 67):
            y, s = a(x[:, t:t + 1], state=s, return_state=True)
            steps.append(y)
    assert (torch.cat(steps, 1) - full[:, :67]).abs().max() < 1e-4


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_gated_softmax_fused_gate_equals_unfused(gate):
    a, b = pair("gated_softmax", {"gate_impl": "triton"}, {"gate_impl": "torch"}, n_heads=4, n_kv_heads=2, gate=gate)
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(2))
    assert_same_outputs_and_grads(a, b, x, 1e-5)
