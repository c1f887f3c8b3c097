"""The Triton selective scan (ops/scan/triton/) against the float64 loop over time (impl="reference"), on
the CPU through Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported): outputs, the
final state and the gradients of u, Δ, A, B, C, D and the initial state (with a gradient on the final
state too), weak and strong decays, several checkpointed chunks (one partial), a masked channel tile and
padded states; low-precision inputs; the vmap rule (members folded into the batch, A and D per member);
torch.compile through the custom op; an sm_90 compile of the kernels. The same at real shapes on a GPU:
benchmarks/gpu_scan.py."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import attnzoo.ops.scan.api as scan_api  # noqa: E402
from attnzoo.ops.scan import selective_scan  # noqa: E402
from attnzoo.ops.scan.triton import api as tri  # noqa: E402
from attnzoo.ops.scan.triton import triton_scan_supported, triton_selective_scan  # noqa: E402
from tests.ops._checks import assert_compiled_matches_eager, rel  # noqa: E402

NAMES = ("y", "final", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0")


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setitem(tri.TUNE, "BD", 8)
    monkeypatch.setitem(tri.TUNE, "L", 4)


def make(Bsz, T, Dm, N, *, strength=1.0, skip=True, state=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u = r(Bsz, T, Dm)
    delta = torch.nn.functional.softplus(r(Bsz, T, Dm) - 1) * strength
    A = -torch.exp(r(Dm, N))
    B, C = r(Bsz, T, N), r(Bsz, T, N)
    D = r(Dm) if skip else None
    h0 = r(Bsz, Dm, N) if state else None
    return [u, delta, A, B, C, D, h0], r(Bsz, T, Dm), r(Bsz, Dm, N)


def run(ins, dy, dh, dtype, impl):
    """Outputs and gradients of sum(y·dy) + sum(final·dh) through selective_scan."""
    leaves = [t.detach().to(dtype).requires_grad_(True) if t is not None else None for t in ins]
    u, delta, A, B, C, D, h0 = leaves
    y, h = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, impl=impl)
    loss = (y.double() * dy).sum() + (0 if dh is None else (h.double() * dh).sum())
    live = [t for t in leaves if t is not None]
    it = iter(torch.autograd.grad(loss, live))
    return [y, h] + [next(it) if t is not None else None for t in leaves]


def check(Bsz, T, Dm, N, *, dtype=torch.float32, tol=1e-5, final_grad=True, **kw):
    ins, dy, dh = make(Bsz, T, Dm, N, **kw)
    dh = dh if final_grad else None
    got = run(ins, dy, dh, dtype, "triton")
    want = run(ins, dy, dh, torch.float64, "reference")
    assert got[0].dtype == dtype and got[0].shape == (Bsz, T, Dm) and got[1].dtype == torch.float32
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, name
        else:
            assert a.shape == b.shape and torch.isfinite(a).all(), name
            assert rel(a, b) < tol, (name, rel(a, b))


@pytest.mark.parametrize("Bsz,T,Dm,N,strength", [
    (2, 11, 12, 3, 1.0),     # 3 chunks of L = 4 (the last partial), a masked channel tile, N padded to 4
    (1, 8, 8, 4, 1.0),       # whole chunks, one channel tile
    (2, 13, 5, 1, 0.01),     # weak decay (a ~ 1), N = 1
    (1, 10, 9, 2, 30.0),     # strong decay (a down to ~e^-60: the state forgets within a step)
    (1, 1, 3, 5, 1.0),       # T = 1
])
def test_matches_reference(Bsz, T, Dm, N, strength):
    check(Bsz, T, Dm, N, strength=strength, seed=T)


@pytest.mark.parametrize("skip,state,final_grad", [(False, False, False), (True, False, True), (False, True, False)])
def test_optional_pieces(skip, state, final_grad):
    check(2, 9, 10, 3, skip=skip, state=state, final_grad=final_grad, seed=2)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_inputs(dtype, tol):
    """Half-precision inputs, float32 state and accumulation: within the inputs' rounding."""
    check(2, 11, 12, 3, dtype=dtype, tol=tol, seed=7)


def test_mixed_dtypes_keep_each_tensor_its_own():
    """Δ in float32 beside bfloat16 u (as autocast leaves Mamba's softplus): no rounding of Δ to u's dtype."""
    ins, dy, _ = make(1, 9, 8, 2, seed=8)
    u, delta, A, B, C, D, h0 = ins
    lo = [u.bfloat16(), delta.float(), A.float(), B.bfloat16(), C.bfloat16(), D.float(), None]
    leaves = [t.requires_grad_() if t is not None else None for t in lo]
    y, _ = triton_selective_scan(*leaves[:6])
    grads = torch.autograd.grad((y.double() * dy).sum(), leaves[:6])
    assert y.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [t.dtype for t in lo[:6]]


def test_continuation_and_determinism():
    """A prefix's final state continues the sequence; two backwards give bitwise equal dA, dB, dC."""
    (u, delta, A, B, C, D, _), dy, _ = make(2, 14, 12, 3, state=False, seed=3)
    u, delta, A, B, C, D = (t.float() for t in (u, delta, A, B, C, D))
    y, _ = triton_selective_scan(u, delta, A, B, C, D)
    y1, h1 = triton_selective_scan(u[:, :5], delta[:, :5], A, B[:, :5], C[:, :5], D)
    y2, _ = triton_selective_scan(u[:, 5:], delta[:, 5:], A, B[:, 5:], C[:, 5:], D, initial_state=h1)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-6
    A, B, C = A.requires_grad_(), B.requires_grad_(), C.requires_grad_()
    g1, g2 = (torch.autograd.grad((triton_selective_scan(u, delta, A, B, C, D)[0] * dy.float()).sum(), [A, B, C])
              for _ in "ab")
    assert all(torch.equal(a, c) for a, c in zip(g1, g2))


@pytest.mark.parametrize("per_member", [True, False])
def test_vmap_matches_members_one_by_one(per_member):
    """torch.func.vmap over G = 3 members (attnzoo.train.group): A and D per member (each batch row reads its
    member's) or shared; outputs and every gradient equal a loop over the members."""
    G, Bsz, T, Dm, N = 3, 2, 9, 10, 3
    ins = [make(Bsz, T, Dm, N, seed=10 + i)[0] for i in range(G)]
    stacked = [torch.stack([m[j] for m in ins]).float() for j in range(7)]
    if not per_member:
        stacked[2], stacked[5] = stacked[2][0], stacked[5][0]
    dy = torch.randn(G, Bsz, T, Dm, dtype=torch.float64)
    dims = (0, 0, 0 if per_member else None, 0, 0, 0 if per_member else None, 0)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in stacked]
        y, h = fn(*leaves)
        return [y, h, *torch.autograd.grad((y.double() * dy).sum() + h.double().sum(), leaves)]

    def one(u, delta, A, B, C, D, h0):
        return triton_selective_scan(u, delta, A, B, C, D, initial_state=h0)

    got = grads(torch.func.vmap(one, in_dims=dims))
    pick = lambda t, d, i: t[i] if d == 0 else t  # noqa: E731
    want = grads(lambda *xs: [torch.stack(o) for o in zip(*[one(*(pick(x, d, i) for x, d in zip(xs, dims)))
                                                             for i in range(G)])])
    for a, c in zip(got, want):
        assert rel(a, c) < 1e-6


def test_compile_traces_custom_op():
    """torch.compile (aot_eager, fullgraph) traces the op through its fake and autograd registrations."""
    (u, delta, A, B, C, D, h0), dy, _ = make(1, 9, 10, 3, seed=4)
    ins = [t.float() for t in (u, delta, A, B, C, D, h0)]
    w = dy.float()

    def loss(u, delta, A, B, C, D, h0):
        y, h = triton_selective_scan(u, delta, A, B, C, D, initial_state=h0)
        return (y * w).sum() + h.sum()

    assert_compiled_matches_eager(loss, ins, tol=1e-6)


def test_auto_takes_the_kernel_only_when_switched_on(monkeypatch):
    """impl="auto" (what Mamba calls) takes the kernel on CUDA once SCAN_TRITON_AUTO is on, never for packed
    sequences; with the switch off it stays on the torch path."""
    calls = []
    monkeypatch.setattr(tri, "triton_selective_scan", lambda *a, **k: calls.append(1) or (a[0], None))
    monkeypatch.setattr("attnzoo.ops.scan.triton.triton_selective_scan", tri.triton_selective_scan)
    (u, delta, A, B, C, D, _), _, _ = make(1, 6, 4, 2, state=False)
    u, delta, A, B, C, D = (t.float() for t in (u, delta, A, B, C, D))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(scan_api, "SCAN_TRITON_AUTO", False)
    y, _ = selective_scan(u, delta, A, B, C, D, impl="auto")  # the torch path (it runs on the CPU tensors)
    assert not calls and rel(y, selective_scan(u, delta, A, B, C, D, impl="reference")[0]) < 1e-5
    monkeypatch.setattr(scan_api, "SCAN_TRITON_AUTO", True)
    selective_scan(u, delta, A, B, C, D, impl="auto")
    assert calls == [1]


SM90_COMPILE = """
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from attnzoo.ops.scan.triton import api, kernels
for which in ("fwd", "fwd_prefetch", "bwd"):
    if which.startswith("fwd"):
        names = ["u", "dt", "A", "B", "C", "D", "h0", "y", "hT", "ck"]
        fn, const = kernels.scan_fwd_kernel, {"HAS_H0": True, "SAVE": True, "PREFETCH": which == "fwd_prefetch"}
    else:
        names = ["u", "dt", "A", "B", "C", "D", "ck", "dy", "dhT", "sc", "du", "ddt", "dB", "dC", "dA", "dD", "dh0"]
        fn, const = kernels.scan_bwd_kernel, {"HAS_DHT": True}
    half = ("u", "B", "C", "y", "dy", "du")
    sig = {f"{n}_ptr": "*bf16" if n in half else "*fp32" for n in names}
    sig.update(T="i32", Dm="i32", N="i32", R="i32")
    const.update(L=api.TUNE["L"], HAS_D=True, BD=api.TUNE["BD"], NP=16)
    attrs = {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(sig.items()) if v[0] == "*"}
    src = ASTSource(fn, {**sig, **{k: "constexpr" for k in const}}, constexprs=const, attrs=attrs)
    out = compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": api.TUNE["num_warps"]})
    assert out.asm["cubin"], which
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """The interpreter is lenient: the kernels also compile to sm_90 cubins (no GPU needed; a process without
    TRITON_INTERPRET) at the shipped tiles, bf16 u / B / C beside a float32 Δ, every flag on, N = 16."""
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", SM90_COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


def test_bad_inputs_raise():
    (u, delta, A, B, C, D, h0), _, _ = make(2, 5, 4, 3)
    u, delta, A, B, C, D, h0 = (t.float() for t in (u, delta, A, B, C, D, h0))
    assert triton_scan_supported(u, delta, A, B, C) and not triton_scan_supported(u.double(), delta, A, B, C)
    with pytest.raises(ValueError, match="needs u, delta, B, C in"):
        triton_selective_scan(u.double(), delta, A, B, C)
    with pytest.raises(ValueError, match="T >= 1"):
        triton_selective_scan(u[:, :0], delta[:, :0], A, B[:, :0], C[:, :0])
    with pytest.raises(ValueError, match=r"B must be \[B, T, N\]"):
        triton_selective_scan(u, delta, A, B[..., :2], C)
    with pytest.raises(ValueError, match="initial_state"):
        triton_selective_scan(u, delta, A, B, C, initial_state=h0[:1])
    with pytest.raises(ValueError, match="cu_seqlens"):
        selective_scan(u[:1], delta[:1], A, B[:1], C[:1], cu_seqlens=torch.tensor([0, 2, 5]), impl="triton")


def test_wide_states_shrink_the_channel_tile():
    """BD x NP stays within TUNE["STATE"] (registers): N = 64 takes 8 channels per program at the shipped
    tiles, N = 16 the full 32; the result is the same whatever the tile (several channel programs here)."""
    assert tri._tiles(256, 16)[0] == min(8, 512 // 16)  # the fixture's BD = 8
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(tri.TUNE, "BD", 32)
        assert tri._tiles(256, 16) == (32, 16) and tri._tiles(256, 64) == (8, 64) and tri._tiles(4, 200) == (2, 256)
        mp.setitem(tri.TUNE, "STATE", 64)
        check(1, 9, 12, 20, seed=11)  # NP = 32: 2 channels per program, 6 programs


def test_mamba_mixer_with_the_kernel_matches_the_torch_scan():
    """The Mamba mixer with impl="triton" (what "auto" takes on CUDA) against impl="torch": outputs and
    parameter gradients with a padding mask, and a prefill then decode steps continuing the state."""
    from attnzoo.mixers.mamba import Mamba

    torch.manual_seed(0)
    B, T, d = 2, 11, 12
    ref = Mamba(d, d_state=4, chunk_size=4, impl="torch")
    ker = Mamba(d, d_state=4, chunk_size=4, impl="triton")
    ker.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, d)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 7:] = False
    outs = []
    for m in (ref, ker):
        y = m(x, mask=mask)
        grads = torch.autograd.grad((y[mask] ** 2).sum(), list(m.parameters()))
        outs.append([y[mask], *grads])
    for a, b in zip(*outs):
        assert rel(a, b) < 1e-5
    with torch.no_grad():
        full = ker(x)
        y0, state = ker(x[:, :6], return_state=True)
        steps = [y0]
        for t in range(6, T):
            yt, state = ker(x[:, t:t + 1], state=state, return_state=True)
            steps.append(yt)
    assert rel(torch.cat(steps, 1), full) < 1e-5


def test_prefetching_forward_matches_the_reference(monkeypatch):
    """TUNE["PREFETCH"]: step t+1's inputs loaded before step t computes; the same results (chunks, a partial
    last chunk, T = 1)."""
    monkeypatch.setitem(tri.TUNE, "PREFETCH", True)
    check(2, 11, 12, 3, seed=21)
    check(1, 1, 3, 5, seed=22)
