"""bf16 autocast: every registered mixer trains under `torch.autocast` (issue #6).

The zoo trains with bf16 autocast on CUDA; on the CPU `torch.autocast("cpu", dtype=torch.bfloat16)`
casts matmuls to bf16 the same way, so these tests reproduce the GPU failures here (mamba2 and
lawcat: "Bad in-place call: input tensor dtype BFloat16 and output tensor dtype float"; deltanet,
gated_deltanet: "expected scalar type ... but found ..."), raised inside the chunked ops' float32
arithmetic when autocast turned some of its matmuls into bf16 ones.

What is checked, per mixer (all registered ones, causal or not; built from the card's
example_kwargs at d_model=32, T=21, as the conformance suite does):
- forward + backward under CPU bf16 autocast run, with backward called outside and inside the
  autocast region, the loss is finite, and every parameter that gets a gradient in float32 gets
  a finite one;
- the output and the gradient (all parameters as one vector) are within a relative error
  ||amp - fp32|| / ||fp32|| <= 5e-2 of the float32 run (measured: <= 1.2e-2 for the output and
  <= 1.4e-2 for the gradient, at bf16 precision 2^-8 ~ 4e-3 per rounding).
Mixers that select blocks / clusters by a data-dependent top-k flip near-tied choices under bf16
(block_sparse: 0.16, routing_balanced: 0.08 output error), which is a change of the selection, not
a precision fault: the closeness check builds them with a selection that keeps everything
(DENSE_SELECTION), the finiteness check uses the card's example as is.
And per op: the ops compute in their stated float32 whatever the caller's autocast, so under
autocast they give the float32 result (forward and gradients) to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.ops.conv import long_causal_conv
from attnzoo.ops.delta import delta_rule
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.ops.scan import selective_scan

D = 32
T = 21
REL_TOL = 5e-2
MIXERS = attnzoo.list_mixers()
DENSE_SELECTION = {"block_sparse": {"top_k": 64}, "routing_balanced": {"n_clusters": 1}}


def _autocast(enabled=True):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _run(name, kwargs, *, amp, backward_in_autocast=False):
    """Output (float32) and the parameters' gradients of one forward + backward."""
    torch.manual_seed(0)
    m = attnzoo.build(name, d_model=D, **kwargs).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, T, D, generator=gen)
    w = torch.randn(2, T, D, generator=gen)  # a loss that weighs every output differently
    torch.manual_seed(2)
    with _autocast(amp):
        y = m(x)
        loss = (y.float() * w).sum() / y.numel() ** 0.5
        if backward_in_autocast:
            loss.backward()
    if not backward_in_autocast:
        loss.backward()
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    return y.detach().float(), {n: p.grad for n, p in m.named_parameters()}


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backward_in_autocast", [False, True])
@pytest.mark.parametrize("name", MIXERS)
def test_mixer_trains_under_bf16_autocast(name, backward_in_autocast):
    card = attnzoo.get_card(name)
    _, g32 = _run(name, card.example_kwargs, amp=False)
    _, gbf = _run(name, card.example_kwargs, amp=True, backward_in_autocast=backward_in_autocast)
    for n, g in g32.items():
        if g is not None:
            assert gbf[n] is not None, f"{name}: {n} gets a gradient in float32 but none under autocast"
            assert torch.isfinite(gbf[n]).all(), f"{name}: non-finite gradient of {n} under autocast"


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_under_bf16_autocast_is_close_to_float32(name):
    kwargs = {**attnzoo.get_card(name).example_kwargs, **DENSE_SELECTION.get(name, {})}
    y32, g32 = _run(name, kwargs, amp=False)
    ybf, gbf = _run(name, kwargs, amp=True)
    assert _rel(ybf, y32) <= REL_TOL, f"{name}: output relative error {_rel(ybf, y32):.3g}"
    names = [n for n, g in g32.items() if g is not None]
    flat32 = torch.cat([g32[n].flatten() for n in names])
    flatbf = torch.cat([gbf[n].float().flatten() for n in names])
    assert _rel(flatbf, flat32) <= REL_TOL, f"{name}: gradient relative error {_rel(flatbf, flat32):.3g}"


def test_dense_selection_overrides_are_real_arguments():
    for name, over in DENSE_SELECTION.items():
        assert set(over) <= set(attnzoo.get_card(name).example_kwargs), name


# ---- the ops keep their own precision under the caller's autocast ------------------------------
def _leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen).requires_grad_() for s in shapes]


def _gla_torch(q, k, v, g):
    return gated_linear_attention(q, k, v, -torch.nn.functional.softplus(g[..., 0]), impl="torch")[0]


def _gla_normalized(q, k, v, g):
    return gated_linear_attention(q.exp(), k.exp(), v, -torch.nn.functional.softplus(g[..., 0]), normalize=True,
                                  impl="torch")[0]


def _gla_reference(q, k, v, g):
    return gated_linear_attention(q, k, v, -torch.nn.functional.softplus(g[..., 0]), impl="reference")[0]


def _delta(q, k, v, g):
    kn = torch.nn.functional.normalize(k, dim=-1)
    return delta_rule(q, kn, v, torch.sigmoid(g[..., 0]), -torch.nn.functional.softplus(g[..., 1]), impl="torch")[0]


def _scan(q, k, v, g):  # u, delta [B, T, D=H*V]; B, C [B, T, K]
    u = v.flatten(2)
    dt = torch.nn.functional.softplus(g[..., 0]).repeat_interleave(v.shape[-1], -1)
    A = -torch.arange(1, q.shape[-1] + 1.0).expand(u.shape[-1], -1)
    return selective_scan(u, dt, A, q[:, :, 0], k[:, :, 0], impl="torch", chunk_size=8)[0]


def _long_conv(impl):
    def fn(q, k, v, g):  # x [B, T, C=H*V], kernel [C, L=T] taken from q
        x = v.flatten(2)
        kernel = q.flatten(2)[0].T.repeat(2, 1)[: x.shape[-1]]
        return long_causal_conv(x, kernel, fft=impl == "fft")[0]

    return fn


def _gla_vector(q, k, v, g):
    return gated_linear_attention(q, k, v, -torch.nn.functional.softplus(q.detach() + g[..., :1]), impl="torch")[0]


OPS = {
    "gla_scalar": _gla_torch, "gla_vector": _gla_vector, "gla_normalized": _gla_normalized,
    "gla_reference": _gla_reference, "delta_rule": _delta, "selective_scan": _scan,
    "long_conv_fft": _long_conv("fft"), "long_conv_direct": _long_conv("direct"),
}


# Ops with a hand-written backward (one autograd.Function) run it in float32 even when backward()
# is called inside the autocast region. The others are traced by autograd, whose backward ops
# follow the autocast state of the backward() call (PyTorch advises calling it outside, as the
# trainer does), so they are checked with backward() outside only.
HAND_WRITTEN_BACKWARD = ("gla_scalar", "gla_vector", "gla_normalized", "delta_rule")
OP_CASES = [(op, False) for op in OPS] + [(op, True) for op in HAND_WRITTEN_BACKWARD]


@pytest.mark.parametrize(("op", "backward_in_autocast"), OP_CASES)
def test_op_computes_in_float32_under_autocast(op, backward_in_autocast):
    """float32 inputs under bf16 autocast give the float32 result: no matmul inside ran in bf16
    (one would be off by ~1e-2; float32 differences are ~1e-7)."""
    B, H, K, V = 2, 2, 4, 3
    fn = OPS[op]
    results = []
    for amp in (False, True):
        q, k, v, g = _leaves((B, T, H, K), (B, T, H, K), (B, T, H, V), (B, T, H, 2))
        with _autocast(amp):
            o = fn(q, k, v, g)
            loss = (o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum()
            if backward_in_autocast:
                loss.backward()
        if not backward_in_autocast:
            loss.backward()
        assert o.dtype == torch.float32, f"{op}: output dtype {o.dtype} for float32 inputs"
        results.append([o.detach()] + [t.grad for t in (q, k, v, g) if t.grad is not None])
    for a, b in zip(*results):
        assert torch.allclose(b, a, rtol=1e-5, atol=1e-6), f"{op}: max diff {(a - b).abs().max().item():.3g}"


def test_op_takes_mixed_dtypes_under_autocast():
    """Under autocast a mixer's projections come out bf16 next to float32 gates / dt (the mamba2 case
    that fell to the torch path on CUDA): the torch ops take the mix and return q's dtype."""
    q, k, v, g = _leaves((1, T, 2, 4), (1, T, 2, 4), (1, T, 2, 3), (1, T, 2, 2), seed=3)
    with _autocast():
        o = gated_linear_attention(q.bfloat16(), k.bfloat16(), v, -torch.nn.functional.softplus(g[..., 0]),
                                   impl="torch")[0]
        od = delta_rule(q.bfloat16(), torch.nn.functional.normalize(k, dim=-1).bfloat16(), v,
                        torch.sigmoid(g[..., 0]), impl="torch")[0]
    (o.float().sum() + od.float().sum()).backward()
    assert o.dtype == od.dtype == torch.bfloat16
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, g))


def test_language_model_trains_under_bf16_autocast():
    """The formerly failing mixers in one hybrid LanguageModel through the trainer's amp path."""
    from attnzoo.models import LanguageModel
    from attnzoo.tasks.mqar import mqar_splits
    from attnzoo.train import TrainConfig, train_lm

    names = ("mamba2", "lawcat", "deltanet", "gated_deltanet")
    kwargs = {n: attnzoo.get_card(n).example_kwargs for n in names}
    torch.manual_seed(0)
    lm = LanguageModel(32, D, len(names), ",".join(names), mixer_kwargs=kwargs, mlp_ratio=0)
    train, test = mqar_splits(seq_len=16, num_pairs=2, vocab_size=32, num_train=64, num_test=16, seed=0)
    r = train_lm(lm, train=train, test=test, config=TrainConfig(steps=3, batch_size=8, eval_every=3, amp=True))
    assert r.steps == 3 and 0.0 < r.loss < 10.0
    assert all(torch.isfinite(p).all() for p in lm.parameters())
