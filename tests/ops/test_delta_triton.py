"""Triton (gated) delta rule against the float64 reference loop, on the CPU through Triton's
interpreter (TRITON_INTERPRET=1 is set before triton is imported). Shapes are tiny: the interpreter
is slow. The same checks at real shapes on a GPU: benchmarks/gpu_delta.py."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from attnzoo.ops.delta.reference import delta_rule_reference as reference  # noqa: E402
from attnzoo.ops.delta.triton import triton_delta_rule, triton_supported  # noqa: E402
from tests.ops._checks import assert_compiled_matches_eager, rel  # noqa: E402

H = 2
TOL = {torch.float32: 1e-4, torch.float16: 5e-3}
NAMES = ("dq", "dk", "dv", "dbeta", "dg", "dh0")


def make(B, T, gate, dtype=torch.float32, K=16, V=16, seed=0, n_state=None):
    """q, k (L2-normalised), v, beta, g (None, weak ~ -0.02, strong -12..-8, mixed -10..0 per step), h0."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    q, k, v = r(B, T, H, K), F.normalize(r(B, T, H, K), dim=-1), r(B, T, H, V)
    beta = torch.sigmoid(r(B, T, H))
    u = torch.rand(B, T, H, generator=gen)
    g = {"weak": F.logsigmoid(r(B, T, H) + 4.0), "strong": -8.0 - 4.0 * u, "mixed": -10.0 * u}.get(gate)
    h0 = r(n_state or B, H, K, V)
    return [x.to(dtype) for x in (q, k, v)] + [beta, g, h0]


def fwd_bwd(fn, q, k, v, beta, g, h0, do, dS, scale=0.3, **kw):
    ins = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, beta, g, h0)]
    o, S = fn(*ins[:5], scale=scale, initial_state=ins[5], output_final_state=True, **kw)
    torch.autograd.backward([o, S], [do.to(o.dtype), dS])
    return o, S, [t.grad if t is not None else None for t in ins]


def check(B, T, gate, dtype=torch.float32, K=16, V=16, seed=0):
    q, k, v, beta, g, h0 = make(B, T, gate, dtype, K, V, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    do, dS = torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen)
    o, S, grads = fwd_bwd(triton_delta_rule, q, k, v, beta, g, h0, do, dS)
    d = lambda t: t.double() if t is not None else None  # noqa: E731
    o_r, S_r, grads_r = fwd_bwd(reference, *map(d, (q, k, v, beta, g, h0)), do.double(), dS.double())
    tol = TOL[dtype]
    assert o.dtype == dtype and S.dtype == torch.float32
    assert rel(o, o_r) < tol and rel(S, S_r) < tol, (rel(o, o_r), rel(S, S_r))
    for name, a, b in zip(NAMES, grads, grads_r):
        if b is not None:
            assert a is not None and torch.isfinite(a).all(), name
            assert rel(a, b) < tol, (name, rel(a, b))


@pytest.mark.parametrize("gate,B,T", [
    (None, 2, 37), ("weak", 1, 1), ("weak", 2, 64), ("mixed", 1, 65), ("strong", 1, 150), ("weak", 1, 200),
])
def test_chunked_matches_reference_fp32(gate, B, T):
    """Forward, final state and the gradients of q, k, v, beta, g and the initial state; T = 1, T = C,
    T = C + 1, T not a multiple of C; no gate (DeltaNet), weak, mixed and strong forgetting."""
    check(B, T, gate)


def test_odd_head_dims():
    """K and V that are not powers of two (masked columns in every tile)."""
    check(1, 70, "mixed", K=20, V=24, seed=2)


def test_dq_dk_over_several_k_blocks(monkeypatch):
    """The dq/dk kernel splits K into blocks (two of 64 at K = 128 on the GPU), each writing its share
    of the gate's gradient: K = 40 in blocks of 32 here (the second one partly masked)."""
    from attnzoo.ops.delta.triton import chunk as delta_chunk

    monkeypatch.setitem(delta_chunk.TUNE, "dqk_bk", 32)
    check(1, 70, "mixed", K=40, V=16, seed=6)


@pytest.mark.parametrize("gate", [None, "mixed"])
def test_half_inputs_fp32_state(gate):
    """float16 here: Triton 3.6's interpreter multiplies bfloat16 tiles as raw bits in tl.dot, so
    bfloat16 is checked on the GPU (benchmarks/gpu_delta.py); the kernels treat both alike."""
    check(1, 41, gate, dtype=torch.float16, seed=3)


@pytest.mark.parametrize("gate", [None, "mixed"])
def test_varlen_matches_sequences_one_by_one(gate):
    """cu_seqlens packs sequences (lengths 5, 66, 20) into B = 1; each starts from its own initial
    state and returns its own final state; outputs and gradients equal running them one by one."""
    lens = [5, 66, 20]
    cu = torch.tensor([0, 5, 71, 91])
    q, k, v, beta, g, h0 = make(1, sum(lens), gate, seed=4, n_state=len(lens))
    do, dS = torch.randn(1, sum(lens), H, 16), torch.randn(len(lens), H, 16, 16)
    o, S, grads = fwd_bwd(triton_delta_rule, q, k, v, beta, g, h0, do, dS, cu_seqlens=cu)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        part = lambda t: None if t is None else t[:, a:b].double()  # noqa: E731
        o_r, S_r, gr = fwd_bwd(reference, *map(part, (q, k, v, beta, g)), h0[n:n + 1].double(), part(do),
                               dS[n:n + 1].double())
        assert rel(o[:, a:b], o_r) < 1e-4 and rel(S[n:n + 1], S_r) < 1e-4
        for name, x, y in zip(NAMES[:5], grads[:5], gr[:5]):
            if y is not None:
                assert rel(x[:, a:b], y) < 1e-4, (n, name, rel(x[:, a:b], y))
        assert rel(grads[5][n:n + 1], gr[5]) < 1e-4


@pytest.mark.parametrize("gate", [None, "mixed"])
def test_recurrent_decode_kernel(gate):
    """With no gradient and small T the token-by-token kernel runs; it continues a state, and packed
    sequences (cu_seqlens) each take their own."""
    q, k, v, beta, g, h0 = make(2, 3, gate, seed=5, K=20, V=40)
    with torch.no_grad():
        o, S = triton_delta_rule(q, k, v, beta, g, scale=0.3, initial_state=h0, output_final_state=True)
        o_p, S_p = triton_delta_rule(*(x.reshape(1, 6, *x.shape[2:]) if x is not None else None
                                       for x in (q, k, v, beta, g)), scale=0.3, initial_state=h0,
                                     output_final_state=True, cu_seqlens=torch.tensor([0, 3, 6]))
    d = lambda t: t.double() if t is not None else None  # noqa: E731
    o_r, S_r = reference(*map(d, (q, k, v, beta, g)), scale=0.3, initial_state=h0.double(), output_final_state=True)
    assert rel(o, o_r) < 1e-5 and rel(S, S_r) < 1e-5
    assert rel(o_p.reshape(o.shape), o_r) < 1e-5 and rel(S_p, S_r) < 1e-5


def test_bad_inputs_raise():
    q, k, v, beta, g, h0 = make(2, 9, "weak", seed=7)
    with pytest.raises(ValueError, match="dtype"):
        triton_delta_rule(q.double(), k.double(), v.double(), beta, g)
    big = torch.randn(1, 4, 1, 256)
    with pytest.raises(ValueError, match="head dims"):
        triton_delta_rule(big, big, big[..., :16], torch.rand(1, 4, 1))
    assert not triton_supported(big, big, big[..., :16]) and triton_supported(q, k, v)
    with pytest.raises(ValueError, match="B == 1"):
        triton_delta_rule(q, k, v, beta, g, cu_seqlens=torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match="interpreter multiplies bfloat16"):  # it would return garbage
        triton_delta_rule(q.bfloat16(), k.bfloat16(), v.bfloat16(), beta, g)
    with pytest.raises(ValueError, match="beta"):
        triton_delta_rule(q, k, v, beta[:, :3], g)
    with pytest.raises(ValueError, match="initial_state"):
        triton_delta_rule(q, k, v, beta, g, initial_state=h0[:1])


def test_custom_op_under_torch_compile():
    """The chunked pass is a torch.library custom op: a fullgraph compile keeps it as one node and
    gives the eager values and gradients (its backward recomputes the forward's chunk quantities)."""
    q, k, v, beta, g, h0 = make(1, 70, "mixed", seed=8)

    def loss(q, k, v, beta, g, h0):
        o, S = triton_delta_rule(q, k, v, beta, g, scale=0.25, initial_state=h0, output_final_state=True)
        return (o * o).sum() + S.sum()

    assert_compiled_matches_eager(loss, (q, k, v, beta, g, h0), tol=1e-6)


def test_public_op_dispatch():
    """delta_rule(impl="triton") reaches the kernels (cu_seqlens with an empty sequence, whose state
    passes through) and equals impl="torch"; impl="auto" on CPU tensors takes the torch path;
    float64 is not a Triton dtype."""
    from attnzoo.ops.delta import delta_rule

    cu = torch.tensor([0, 7, 7, 40])
    q, k, v, beta, g, h0 = make(1, 40, "mixed", seed=9, n_state=3)
    do, dS = torch.randn(1, 40, H, 16), torch.randn(3, H, 16, 16)
    (o, S, gr), (o_t, S_t, gr_t) = [fwd_bwd(delta_rule, q, k, v, beta, g, h0, do, dS, cu_seqlens=cu, impl=impl)
                                    for impl in ("triton", "torch")]
    assert rel(o, o_t) < 1e-4 and rel(S, S_t) < 1e-4
    for name, a, b in zip(NAMES, gr, gr_t):
        assert rel(a, b) < 1e-4, (name, rel(a, b))
    o_a, _ = delta_rule(q, k, v, beta, g, impl="auto")
    assert rel(o_a, delta_rule(q, k, v, beta, g, impl="torch")[0]) == 0.0
    assert not triton_supported(q.double(), k.double(), v.double())


@pytest.mark.parametrize("packed", [False, True])
def test_vmap_rule_folds_members_into_the_batch(packed):
    """Under torch.func.vmap (attnzoo.train.group) the Triton pass folds the vmapped dim into the
    batch (packed: into the tokens, cu_seqlens repeated); outputs, states and gradients equal one
    call per member; beta is shared by every member (unbatched)."""
    from torch.func import vmap

    G, T = 2, 40
    cu = torch.tensor([0, 15, 40]) if packed else None
    n = 2 if packed else 1
    q, k, v, beta, g, h0 = (torch.stack(x) for x in zip(*[make(1, T, "mixed", seed=20 + i, n_state=n)
                                                           for i in range(G)]))
    beta = beta[0]
    ins = [t.clone().requires_grad_(True) for t in (q, k, v, beta, g, h0)]

    def one(q, k, v, beta, g, h0):
        return triton_delta_rule(q, k, v, beta, g, scale=0.3, initial_state=h0, output_final_state=True,
                                 cu_seqlens=cu)

    o, S = vmap(one, in_dims=(0, 0, 0, None, 0, 0))(*ins)
    gv = torch.autograd.grad((o * o).sum() + S.sum(), ins)
    dbeta = torch.zeros_like(beta)
    for i in range(G):
        xs = [t.detach().clone().requires_grad_(True) for t in (q[i], k[i], v[i], beta, g[i], h0[i])]
        o_i, S_i = one(*xs)
        assert rel(o[i], o_i) < 1e-6 and rel(S[i], S_i) < 1e-6
        gi = torch.autograd.grad((o_i * o_i).sum() + S_i.sum(), xs)
        for j, (a, b) in enumerate(zip(gv, gi)):
            if j != 3:  # beta is shared: its gradient sums over the members
                assert rel(a[i], b) < 1e-5, (i, j)
        dbeta += gi[3]
    assert rel(gv[3], dbeta) < 1e-5


def test_second_backward_through_a_retained_graph():
    """The eager pass hands its kept chunk tensors to the first backward and drops them; a second
    backward through the retained graph recomputes them and gives the same gradients."""
    q, k, v, beta, g, h0 = make(1, 70, "mixed", seed=11)
    ins = [t.clone().requires_grad_(True) for t in (q, k, v, beta, g, h0)]
    o, S = triton_delta_rule(*ins[:5], scale=0.3, initial_state=ins[5], output_final_state=True)
    do, dS = torch.randn_like(o), torch.randn_like(S)
    first = torch.autograd.grad([o, S], ins, [do, dS], retain_graph=True)
    second = torch.autograd.grad([o, S], ins, [do, dS])
    for a, b in zip(first, second):
        assert torch.equal(a, b)
