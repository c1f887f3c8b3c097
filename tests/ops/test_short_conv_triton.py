"""The Triton short causal conv (ops/conv/triton/) and the shift-and-add torch path against the float64
reference (causal_conv1d impl="reference", an explicit sum over lags), on the CPU through Triton's
interpreter (TRITON_INTERPRET=1 is set before triton is imported): outputs, the final state and the
gradients of x, weight, bias and initial_state, with and without bias, SiLU, a state and a padding mask.
Tiles are made small (several time tiles, a masked channel tile, several backward programs whose partial
dweight / dbias are summed). The same check at real shapes in bf16 on a GPU: benchmarks/gpu_short_conv.py."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import attnzoo.ops.conv.api as conv_api  # noqa: E402
from attnzoo.ops.conv import causal_conv1d  # noqa: E402
from attnzoo.ops.conv.triton import api as tri  # noqa: E402
from attnzoo.ops.conv.triton import triton_short_conv, triton_short_supported  # noqa: E402

NAMES = ("y", "final", "dx", "dw", "db", "ds")
DEFAULT_TUNE = dict(tri.TUNE)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setitem(tri.TUNE, "BLOCK_T", 8)
    monkeypatch.setitem(tri.TUNE, "BWD_BLOCK_T", 8)
    monkeypatch.setitem(tri.TUNE, "BLOCK_C", 16)
    monkeypatch.setitem(tri.TUNE, "BWD_ROWS", 16)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make(B, T, C, W, bias, state, mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(B, T, C, generator=g), torch.randn(C, W, generator=g) / W ** 0.5
    b = torch.randn(C, generator=g) if bias else None
    s = torch.randn(B, W - 1, C, generator=g) if state else None
    m = None
    if mask:  # row 0 padded in the middle and at the end, the other rows left-padded
        m = torch.rand(B, T, generator=g) > 0.3
        m[:, 0] = True
    dy, dS = torch.randn(B, T, C, generator=g), torch.randn(B, W - 1, C, generator=g)
    return (x, w, b, s), m, dy, dS


def run(ins, m, dy, dS, dtype, act, impl):
    """Outputs and gradients of sum(y·dy) + sum(final·dS) through causal_conv1d."""
    leaves = [t.detach().to(dtype).requires_grad_(True) if t is not None else None for t in ins]
    x, w, b, s = leaves
    y, final = causal_conv1d(x, w, b, initial_state=s, output_final_state=True, mask=m, activation=act, impl=impl)
    loss = (y.double() * dy.double()).sum() + (final.double() * dS.double()).sum()
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    it = iter(grads)
    return [y, final] + [next(it) if t is not None else None for t in leaves]


def check(B, T, C, W, *, bias=True, state=True, mask=False, act="silu", impl="triton", dtype=torch.float32,
          tol=1e-5, seed=0):
    ins, m, dy, dS = make(B, T, C, W, bias, state, mask, seed)
    got = run(ins, m, dy, dS, dtype, act, impl)
    want = run(ins, m, dy, dS, torch.float64, act, "reference")
    assert got[0].dtype == dtype and got[0].shape == (B, T, C) and got[1].shape == (B, W - 1, C)
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, name
        elif b.numel():
            assert torch.isfinite(a).all(), name
            assert rel(a, b) < tol, (name, rel(a, b))


@pytest.mark.parametrize("B,T,C,W,bias,state,mask,act", [
    (2, 37, 24, 4, True, True, False, "silu"),    # every piece; 5 time tiles, a masked channel tile
    (2, 37, 24, 4, False, False, False, None),    # a fresh sequence, no bias, no activation
    (2, 37, 5, 3, True, False, True, "silu"),     # padding mask (real tokens first inside the op)
    (2, 37, 24, 1, True, True, False, "silu"),    # W = 1: no state, a pointwise scale
    (2, 3, 5, 4, False, True, False, "silu"),     # T < W - 1... the state reaches every output
    (2, 1, 24, 4, True, True, True, None),        # one decode step with a state
    (1, 20, 5, 8, True, True, False, "silu"),     # W = MAX_W
])
def test_triton_matches_reference(B, T, C, W, bias, state, mask, act):
    check(B, T, C, W, bias=bias, state=state, mask=mask, act=act)


def test_default_tiles():
    """The shipped tile sizes (the fixture's small tiles undone: BLOCK_C clipped to 32 channels here)."""
    tri.TUNE.update(DEFAULT_TUNE)
    check(2, 37, 24, 4, mask=True)


def test_default_tiles_across_row_strips_and_channel_tiles():
    """The shipped tiles where they are not clipped: T + W − 1 = 1103 rows make three backward strips of
    BWD_ROWS (512) rows, so dweight and dbias sum partial strips, and C = 80 leaves a partial second
    channel tile of BLOCK_C (64)."""
    tri.TUNE.update(DEFAULT_TUNE)
    assert tri.TUNE["BWD_ROWS"] < 1103 and tri.TUNE["BLOCK_C"] < 80
    check(2, 1100, 80, 4, mask=True)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1.5e-2), (torch.float16, 2e-3)])
def test_half_inputs(dtype, tol):
    """bf16 / fp16 x, weight, bias and state: accumulation in float32, outputs and gradients rounded."""
    check(2, 37, 24, 4, dtype=dtype, tol=tol, seed=1)


@pytest.mark.parametrize("W,bias,state,mask,act", [(4, True, True, True, "silu"), (3, False, False, False, None),
                                                   (1, True, True, False, None)])
def test_shift_path_matches_reference(monkeypatch, W, bias, state, mask, act):
    monkeypatch.setattr(conv_api, "SHORT_CONV_TORCH", "shift")
    check(2, 37, 5, W, bias=bias, state=state, mask=mask, act=act, impl="torch", dtype=torch.float64, tol=1e-12)


def test_continuation_and_determinism():
    """A prefix's final state continues the sequence; two backwards give bitwise equal dweight / dbias."""
    (x, w, b, _), _, dy, _ = make(2, 37, 24, 4, True, False, False, seed=3)
    y, _ = causal_conv1d(x, w, b, activation="silu", impl="triton")
    y1, S1 = causal_conv1d(x[:, :10], w, b, activation="silu", output_final_state=True, impl="triton")
    y2, _ = causal_conv1d(x[:, 10:], w, b, initial_state=S1, activation="silu", impl="triton")
    assert rel(torch.cat([y1, y2], 1), y) < 1e-6
    w, b = w.requires_grad_(), b.requires_grad_()
    g1, g2 = (torch.autograd.grad((triton_short_conv(x, w, b, activation="silu") * dy).sum(), [w, b]) for _ in "ab")
    assert all(torch.equal(a, c) for a, c in zip(g1, g2))


@pytest.mark.parametrize("shared", [True, False])
def test_vmap_matches_members_one_by_one(shared):
    """torch.func.vmap over G = 2 members (attnzoo.train.group): weights shared (folded into the batch) or per
    member (folded into the channels); outputs and the gradients of x, weight, bias, state equal a loop."""
    G, B, T, C, W = 2, 2, 11, 5, 4
    g = torch.Generator().manual_seed(5)
    x, s = torch.randn(G, B, T, C, generator=g), torch.randn(G, B, W - 1, C, generator=g)
    w, b = torch.randn(C, W, generator=g), torch.randn(C, generator=g)
    if not shared:
        w, b = torch.stack([w, w.flip(-1)]), torch.stack([b, -b])
    dy = torch.randn(G, B, T, C, generator=g)
    dims = (0, None if shared else 0, None if shared else 0, 0)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b, s)]
        y = fn(*leaves)
        return [y, *torch.autograd.grad((y * dy).sum(), leaves)]

    def one(x, w, b, s):
        return triton_short_conv(x, w, b, initial_state=s, activation="silu")

    got = grads(torch.func.vmap(one, in_dims=dims))
    want = grads(lambda x, w, b, s: torch.stack([one(x[i], w if shared else w[i], b if shared else b[i], s[i])
                                                 for i in range(G)]))
    for a, c in zip(got, want):
        assert rel(a, c) < 1e-6


def test_compile_traces_custom_op():
    """torch.compile (aot_eager, fullgraph) traces the op through its fake and autograd registrations."""
    (x, w, b, s), _, dy, _ = make(1, 9, 5, 4, True, True, False, seed=4)
    w = w.requires_grad_()
    f = torch.compile(lambda x, w: triton_short_conv(x, w, b, initial_state=s, activation="silu"),
                      backend="aot_eager", fullgraph=True)
    g = torch.autograd.grad((f(x, w) * dy).sum(), w)[0]
    g_ref = torch.autograd.grad((triton_short_conv(x, w, b, initial_state=s, activation="silu") * dy).sum(), w)[0]
    assert rel(g, g_ref) < 1e-6


SM90_COMPILE = """
import sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from attnzoo.ops.conv.triton import api, kernels
tune = api.TUNE
for which in ("fwd", "bwd"):
    names = ["x", "w", "b", "s"] + (["y"] if which == "fwd" else ["dy", "dx", "ds", "dw", "db"])
    sig = {f"{n}_ptr": "*fp32" if n in ("w", "b", "dw", "db") else "*bf16" for n in names}
    sig.update(T="i32", C="i32")
    const = {"W": 4, "HAS_BIAS": True, "HAS_STATE": True, "SILU": True, "BC": tune["BLOCK_C"]}
    if which == "fwd":
        const["BT"] = tune["BLOCK_T"]
    else:
        const.update(BT=tune["BWD_BLOCK_T"], ROWS=tune["BWD_ROWS"], WP=4)
    attrs = {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(sig.items()) if v[0] == "*" or k == "C"}
    fn = kernels.short_conv_fwd_kernel if which == "fwd" else kernels.short_conv_bwd_kernel
    src = ASTSource(fn, {**sig, **{k: "constexpr" for k in const}}, constexprs=const, attrs=attrs)
    out = compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": tune["num_warps"]})
    assert out.asm["cubin"], which
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """The interpreter is lenient: the kernels also compile to sm_90 cubins (no GPU needed; a process
    without TRITON_INTERPRET), with the shipped tiles, bf16 x, every flag on, C % 16 == 0 as at C = 6144."""
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", SM90_COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


def test_bad_inputs_raise(monkeypatch):
    x, w = torch.randn(2, 5, 4), torch.randn(4, 9)
    assert not triton_short_supported(x, w) and triton_short_supported(x, w[:, :8])
    with pytest.raises(ValueError, match="W <= 8"):
        causal_conv1d(x, w, impl="triton")
    with pytest.raises(ValueError, match=r"initial_state must be \[B, W-1, C\]"):
        causal_conv1d(x, w[:, :4], initial_state=torch.randn(2, 2, 4), impl="triton")
    with pytest.raises(ValueError, match=r"initial_state must be \[B, W-1, C\]"):
        triton_short_conv(x, w[:, :4], initial_state=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="dtype|needs x and weight"):
        triton_short_conv(x.double(), w[:, :4])
    with pytest.raises(ValueError, match="bias"):
        triton_short_conv(x, w[:, :4], torch.randn(3))
    with pytest.raises(ValueError, match="activation"):
        triton_short_conv(x, w[:, :4], activation="gelu")
    with pytest.raises(ValueError, match="T >= 1"):
        triton_short_conv(x[:, :0], w[:, :4])
    monkeypatch.setattr(conv_api, "SHORT_CONV_TORCH", "fft")
    with pytest.raises(ValueError, match="SHORT_CONV_TORCH"):
        causal_conv1d(x, w[:, :4])


def test_switch_makes_auto_take_the_kernel(monkeypatch):
    """With dispatch answering as on CUDA, impl="auto" (what ShortConv and the mixers call) takes the kernel
    exactly when SHORT_CONV_TRITON_AUTO is on and the shape is supported (W <= 8); ShortConv's outputs and
    decode cache, with a mask, then equal the torch path's."""
    from attnzoo.mixers.short_conv import ShortConv

    monkeypatch.setattr(conv_api, "resolve_impl", lambda impl, *t, triton_supported=False:
                        ("triton" if triton_supported else "torch") if impl == "auto" else impl)
    calls, fwd = [], tri._fwd
    monkeypatch.setattr(tri, "_fwd", lambda *a: calls.append(1) or fwd(*a))
    torch.manual_seed(0)
    x, mask = torch.randn(2, 13, 24), torch.rand(2, 13) > 0.3
    for W, on, want in [(4, False, 0), (4, True, 1), (9, True, 0)]:
        conv = ShortConv(24, kernel_size=W, activation="silu", bias=True)
        monkeypatch.setattr(conv_api, "SHORT_CONV_TRITON_AUTO", on)
        calls.clear()
        y, cache = conv(x, mask=mask, output_cache=True)
        assert len(calls) == want, (W, on)
        monkeypatch.setattr(conv_api, "SHORT_CONV_TRITON_AUTO", False)
        y_t, cache_t = conv(x, mask=mask, output_cache=True)
        assert rel(y, y_t) < 1e-6 and rel(cache, cache_t) == 0.0


def test_auto_stays_on_torch_off_cuda(monkeypatch):
    """impl="auto" takes the kernel only on CUDA (and, by default, not even there): CPU tensors stay on the
    torch path with the switch on."""
    monkeypatch.setattr(conv_api, "SHORT_CONV_TRITON_AUTO", True)
    monkeypatch.setattr(tri, "_fwd", lambda *a: pytest.fail("the kernel ran"))
    x, w = torch.randn(2, 5, 4), torch.randn(4, 3)
    causal_conv1d(x, w)
    assert conv_api._resolve("auto", x, "c", has_kernel=True, supported=True) == "torch"
