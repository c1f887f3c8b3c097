"""TTT-Linear: the op's dual form against the token loop (forward, state, gradients; padding holes, states
that stop inside a mini-batch), the loop against the paper's rule written with autograd gradients (online,
b = 1, and mini-batch), and the mixer's two paths (the contract itself is in tests/conformance)."""

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.ops.ttt import ttt_linear
from attnzoo.ops.ttt.inner import LN_EPS
from tests.mixers._mixer_checks import assert_paths_agree

F64 = torch.float64


def _inputs(B=3, T=13, H=2, D=5, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    q, k, v = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D)
    eta = 0.3 * torch.rand(B, T, H, generator=g, dtype=F64)
    lw, lb = 1 + 0.2 * r(H, D), 0.2 * r(H, D)
    base = 0.2 * r(B, H, D, D + 1)
    W = base + 0.05 * r(B, H, D, D + 1)
    return [t.to(dtype) for t in (q, k, v, eta, lw, lb, base, W)]


def _run(impl, b, mask=None, seen=None):
    def fn(q, k, v, eta, lw, lb, base, W):
        init = None if seen is None else (base, W, seen)
        o, st = ttt_linear(q, k, v, eta, lw, lb, mini_batch=b, initial_state=init, mask=mask,
                           output_final_state=True, impl=impl)
        return o, st
    return fn


def _grads(fn, ins, seed=5):
    ins = [t.detach().clone().requires_grad_(True) for t in ins]
    o, (base, W, seen) = fn(*ins)
    g = torch.Generator().manual_seed(seed)
    rnd = lambda t: torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype)  # noqa: E731
    loss = (o * rnd(o)).sum() + (base * rnd(base)).sum() + (W * rnd(W)).sum()
    grads = torch.autograd.grad(loss, ins, allow_unused=True)
    return (o, base, W, seen, *[torch.zeros_like(x) if d is None else d for x, d in zip(ins, grads)])


@pytest.mark.parametrize("T", [1, 7, 8, 17])
@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("case", ["plain", "state", "holes"])
def test_dual_form_matches_the_token_loop(T, b, case):
    ins = _inputs(T=T)
    mask = seen = None
    if case != "plain":
        seen = torch.tensor([0, 5, 2])  # rows continue from different points of a mini-batch
    if case == "holes":
        mask = torch.rand(3, T, generator=torch.Generator().manual_seed(7)) > 0.4
        mask[2] = False  # a row with no real token at all
    got, want = _grads(_run("torch", b, mask, seen), ins), _grads(_run("reference", b, mask, seen), ins)
    names = ["o", "W'", "W", "seen", "dq", "dk", "dv", "deta", "dln_w", "dln_b", "dW'0", "dW0"]
    for name, a, c in zip(names, got, want):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10, msg=lambda s, n=name: f"{n}: {s}")


def _paper_rule(q, k, v, eta, lw, lb, W, b):
    """The paper's update written with autograd: all gradients of a mini-batch of b tokens at its start W'."""
    B, T, H, D = q.shape
    outs, base = [], W.clone()
    one = torch.ones(B, H, 1, dtype=F64)
    f = lambda x, W_: x + F.layer_norm((W_ @ torch.cat([x, one], -1)[..., None])[..., 0], (D,), eps=LN_EPS) * lw + lb  # noqa: E731
    for t in range(T):
        Wg = base.detach().requires_grad_(True)
        loss = 0.5 * (f(k[:, t], Wg) - v[:, t]).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, Wg)
        W = W - eta[:, t, :, None, None] * grad
        if (t + 1) % b == 0:
            base = W
        outs.append(f(q[:, t], W))
    return torch.stack(outs, 1), W


@pytest.mark.parametrize("b", [1, 4])
def test_the_loop_is_the_papers_rule_with_autograd_gradients(b):
    q, k, v, eta, lw, lb, base, _ = _inputs(T=10)
    want_o, want_W = _paper_rule(q, k, v, eta, lw, lb, base, b)
    o, (_, W, seen) = ttt_linear(q, k, v, eta, lw, lb, mini_batch=b, initial_state=(base, base, torch.zeros(3).long()),
                                 output_final_state=True, impl="reference")
    torch.testing.assert_close(o, want_o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(W, want_W, rtol=1e-12, atol=1e-12)
    assert seen.tolist() == [10, 10, 10]


def test_mini_batch_one_is_online_gradient_descent_and_larger_batches_differ():
    ins = _inputs(T=12)
    seen = torch.zeros(3, dtype=torch.long)
    o1 = _run("torch", 1, None, seen)(*ins)[0]
    o4 = _run("torch", 4, None, seen)(*ins)[0]
    o12 = _run("torch", 12, None, seen)(*ins)[0]
    torch.testing.assert_close(o1[:, :1], o4[:, :1])  # the first token's gradient is at W_0 either way
    assert (o1 - o4).abs().max() > 1e-3 and (o4 - o12).abs().max() > 1e-3


def test_padding_holes_are_skipped():
    q, k, v, eta, lw, lb, base, W = _inputs(B=1, T=9)
    mask = torch.tensor([[True, False, True, True, False, False, True, True, True]])
    seen = torch.tensor([1])
    o, st = ttt_linear(q, k, v, eta, lw, lb, mini_batch=3, initial_state=(base, W, seen), mask=mask,
                       output_final_state=True)
    keep = mask[0]
    o2, st2 = ttt_linear(q[:, keep], k[:, keep], v[:, keep], eta[:, keep], lw, lb, mini_batch=3,
                         initial_state=(base, W, seen), output_final_state=True)
    torch.testing.assert_close(o[:, keep], o2, rtol=1e-12, atol=1e-12)
    assert o[:, ~keep].abs().max() == 0
    for a, c in zip(st, st2):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_float32_inputs_and_long_sequences_stay_close():
    ins = _inputs(T=70, D=8)
    seen = torch.zeros(3, dtype=torch.long)
    want = _run("reference", 16, None, seen)(*ins)[0]
    got = _run("torch", 16, None, seen)(*[t.float() for t in ins])[0]
    assert got.dtype == torch.float32
    assert ((got.double() - want).abs().max() / want.abs().max()) < 1e-5


def test_bad_inputs_are_refused():
    q, k, v, eta, lw, lb, base, W = _inputs()
    seen = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="q, k, v"):
        ttt_linear(q, k[..., :3], v, eta, lw, lb)
    with pytest.raises(ValueError, match="eta"):
        ttt_linear(q, k, v, eta[..., None], lw, lb)
    with pytest.raises(ValueError, match="ln_weight"):
        ttt_linear(q, k, v, eta, lw[:1], lb)
    with pytest.raises(ValueError, match="mini_batch"):
        ttt_linear(q, k, v, eta, lw, lb, mini_batch=0)
    with pytest.raises(ValueError, match="mask"):
        ttt_linear(q, k, v, eta, lw, lb, mask=torch.ones(3, 13))
    with pytest.raises(ValueError, match="W'"):
        ttt_linear(q, k, v, eta, lw, lb, initial_state=(base[..., :-1], W, seen))
    with pytest.raises(ValueError, match="seen"):
        ttt_linear(q, k, v, eta, lw, lb, initial_state=(base, W, seen.float()))
    with pytest.raises(ValueError, match="impl"):
        ttt_linear(q, k, v, eta, lw, lb, impl="triton")


def _mixer(impl, **kw):
    torch.manual_seed(0)
    return attnzoo.build("ttt_linear", d_model=16, n_heads=2, impl=impl, **kw).double().train()


@pytest.mark.parametrize("b", [1, 4])
def test_mixer_paths_agree_forward_state_and_gradients(b):
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, 10:12] = False
    assert_paths_agree(lambda impl: _mixer(impl, mini_batch=b), 19, 1e-9, fields=("base", "W"), mask=mask)


def test_mixer_learning_rate_and_arguments():
    m = _mixer("torch")
    eta = m.learning_rate(torch.randn(1, 5, 16, dtype=F64) * 3)
    assert eta.shape == (1, 5, 2) and (eta > 0).all() and (eta < 1 / 8).all()
    with pytest.raises(ValueError, match="mini_batch"):
        attnzoo.build("ttt_linear", d_model=16, n_heads=2, mini_batch=0)
    with pytest.raises(ValueError, match="inner_lr"):
        attnzoo.build("ttt_linear", d_model=16, n_heads=2, inner_lr=0.0)
