"""torch.compile over the registry (issue #19 item 2): every mixer compiles and matches eager, forward and
gradients, and its forward is as many graphs as attnzoo/bench/graph_breaks.json records (one graph, no
break, for the softmax, linear, recurrent, conv and SSM families).

Cost on a 2-core CPU: dynamo + AOTAutograd without code generation ("aot_eager") runs every mixer in
the default suite; inductor's C++ code generation costs 10-60 s per mixer there (forward + backward),
so the default suite compiles two mixers with inductor (softmax, gla) and ATTNZOO_COMPILE_ALL=1
compiles every mixer with it.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

import attnzoo
from attnzoo.bench.graph_breaks import example_mixer, load
from attnzoo.ops.common import dispatch
from attnzoo.registry import get_card

ZERO_BREAK_FAMILIES = ("softmax", "linear", "recurrent", "conv", "ssm")
INDUCTOR_DEFAULT = ("softmax", "gla")  # attention, and the chunked ops' custom op (9 s and 23 s on a loaded 2-core CPU)
INDUCTOR_ALL = os.environ.get("ATTNZOO_COMPILE_ALL") == "1"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _counting(backend: str, graphs: list):
    from torch._dynamo.backends.registry import lookup_backend

    inner = lookup_backend(backend)

    def compile_graph(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    return compile_graph


def _forward_backward(m, x, w):
    x = x.detach().requires_grad_(True)
    y = m(x)
    params = [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad((y * w).sum(), [x] + params, allow_unused=True)
    return y.detach(), grads


def _close(actual, expected, what, floor: float = 0.0):
    """Within 1e-4 relative, 1e-5 of the tensor's largest entry absolute; `floor` (absolute) lets a
    gradient that is zero in exact arithmetic (e.g. a bias shifting every key of a softmax: NSA's
    compressor) differ by float32 cancellation noise, which scales with the model's gradients."""
    scale = max(float(expected.abs().max()), 1e-6)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=max(1e-5 * scale, floor),
                               msg=lambda s: f"{what}: {s}")


def check_compiled(name: str, backend: str) -> int:
    """Compile the example mixer with `backend`, compare forward and gradients with eager; return the
    number of graphs of the forward."""
    m, x = example_mixer(name)
    mc = copy.deepcopy(m)  # a training-mode forward may update buffers: both start from the same ones
    w = torch.randn_like(x)
    y, grads = _forward_backward(m, x, w)
    graphs: list = []
    compiled = torch.compile(mc, backend=_counting(backend, graphs))
    yc, grads_c = _forward_backward(compiled, x, w)
    _close(yc, y, f"{name} output")
    names = ["x"] + [n for n, p in m.named_parameters() if p.requires_grad]
    noise = 1e-6 * max(float(g.abs().max()) for g in grads if g is not None)
    for n, g, gc in zip(names, grads, grads_c):
        if g is None or gc is None:
            assert g is None and gc is None or (g if gc is None else gc).abs().max() == 0, f"{name} grad {n}"
            continue
        _close(gc, g, f"{name} grad of {n}", floor=noise)
    return len(graphs)


def _check_graph_count(name: str, n_graphs: int):
    if get_card(name).family in ZERO_BREAK_FAMILIES:
        assert n_graphs == 1, f"{name}: the forward is {n_graphs} graphs (graph breaks) under torch.compile"
    data = load()
    rec = data.get("mixers", {}).get(name, {}).get("train")
    assert rec is not None, f"{name} has no entry in graph_breaks.json: run python -m attnzoo.bench.graph_breaks"
    minor = lambda v: tuple(v.split("+")[0].split(".")[:2])  # noqa: E731
    if minor(data["torch"]) == minor(torch.__version__):
        assert n_graphs == rec["graphs"], (f"{name}: {n_graphs} graphs now, {rec['graphs']} recorded in "
                                           "graph_breaks.json: run python -m attnzoo.bench.graph_breaks")


@pytest.mark.parametrize("name", attnzoo.list_mixers())
def test_compiles_and_matches_eager(name):
    """dynamo + AOTAutograd (forward and backward graphs, fake tensors, custom ops' fake rules)."""
    _check_graph_count(name, check_compiled(name, "aot_eager"))


@pytest.mark.parametrize("name", attnzoo.list_mixers())
def test_inductor_compiles_and_matches_eager(name):
    if not (INDUCTOR_ALL or name in INDUCTOR_DEFAULT):
        pytest.skip("inductor on every mixer: ATTNZOO_COMPILE_ALL=1 (10-60 s each on a 2-core CPU)")
    _check_graph_count(name, check_compiled(name, "inductor"))


def test_op_override_counter_keeps_overrides_visible():
    """op_override skips its ContextVar only while no table is set anywhere (a plain int dynamo guards on)."""
    marker = object()
    assert dispatch._ACTIVE == 0 and dispatch.op_override("delta_rule") is None
    with dispatch.op_overrides({"delta_rule": marker}):
        assert dispatch._ACTIVE == 1 and dispatch.op_override("delta_rule") is marker
        with dispatch.op_overrides(None):  # the local pass of a parallel op: no override, counter kept
            assert dispatch.op_override("delta_rule") is None and dispatch._ACTIVE == 1
        assert dispatch.op_override("delta_rule") is marker
    assert dispatch._ACTIVE == 0 and dispatch.op_override("delta_rule") is None
    with pytest.raises(RuntimeError), dispatch.op_overrides({"x": marker}):
        raise RuntimeError("an error inside the block still resets the counter")
    assert dispatch._ACTIVE == 0


def test_override_is_seen_inside_a_compiled_function():
    """A table set after a compile (or around it) reaches the op: dynamo's guard on the counter recompiles."""
    from attnzoo.ops.linear import gated_linear_attention

    q, k, v = (torch.randn(1, 5, 2, 4) for _ in range(3))
    fn = torch.compile(lambda q, k, v: gated_linear_attention(q, k, v)[0], backend="aot_eager")
    plain = fn(q, k, v)
    torch.testing.assert_close(plain, gated_linear_attention(q, k, v)[0])
    with dispatch.op_overrides({"gated_linear_attention": lambda q, k, v, g, **kw: (torch.zeros_like(v), None)}):
        assert fn(q, k, v).abs().max() == 0
    torch.testing.assert_close(fn(q, k, v), plain)


@pytest.mark.parametrize("family", ["linear", "delta"])
def test_chunk_custom_ops_pass_opcheck(family):
    """The custom ops' fake rules, autograd registration and schema agree with what they compute."""
    g = torch.Generator().manual_seed(0)
    B, T, H, K, V = 2, 11, 2, 4, 3
    q, v = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, V, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    gate = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g) + 2)
    h0 = torch.randn(B, H, K, V, generator=g)
    if family == "linear":
        op = torch.ops.attnzoo.gla_chunk_torch.default
        args = (q, k, v, gate, None, h0, None, 0.5, True, 4)
    else:
        op = torch.ops.attnzoo.delta_chunk_torch.default
        args = (q, k, v, torch.rand(B, T, H, generator=g), gate, h0, None, 0.5, True, 4)
    args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("name", ["softmax", "fox", "stickbreaking", "gla", "mamba"])
def test_compiled_decode_step_matches_eager(name):
    """One token from a 12-token state (what generate runs), compiled (aot_eager) vs eager, output and state:
    the attention mixers take their masked path under compile (no host read of the cache's mask)."""
    m, x = example_mixer(name)
    m.eval()
    with torch.no_grad():
        _, state = m(x, return_state=True)
        y, s = m(x[:, :1], state=state, return_state=True)
        yc, sc = torch.compile(lambda t, st: m(t, state=st, return_state=True), backend="aot_eager")(x[:, :1], state)
    _close(yc, y, f"{name} decode output")
    for f in dataclasses.fields(s):
        a, b = getattr(sc, f.name), getattr(s, f.name)
        if isinstance(b, torch.Tensor) and b.is_floating_point():
            _close(a, b, f"{name} state {f.name}")
        elif isinstance(b, torch.Tensor):
            assert torch.equal(a, b), f"{name} state {f.name}"
