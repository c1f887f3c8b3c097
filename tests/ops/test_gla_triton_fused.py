"""The fused short-sequence GLA kernels (attnzoo/ops/linear/triton/fused.py: one launch forward, one
launch backward) against the float64 reference loop, on the CPU through Triton's interpreter, reached
through the public Triton op with fused.FORCE on; and the dispatch rule that picks them."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from attnzoo.ops.linear.triton import fused, fused_bwd, triton_gated_linear_attention  # noqa: E402

from tests.ops._checks import assert_compiled_matches_eager, rel  # noqa: E402
from tests.ops._gla_triton_cases import TOL, assert_matches_reference, assert_sequences_match_reference  # noqa: E402
from tests.ops._gla_triton_cases import fwd_bwd, make  # noqa: E402


@pytest.fixture
def force_fused(monkeypatch):
    monkeypatch.setattr(fused, "FORCE", True)


def check(B, T, gate, strength, dtype=torch.float32, seed=0, K=16, V=16):
    *inputs, do, dS = make(B, T, gate, strength, dtype, seed, K=K, V=V, cotangents=True)
    assert_matches_reference(triton_gated_linear_attention, inputs, do, dS, TOL[dtype])


@pytest.mark.parametrize("gate,T,strength", [
    (None, 37, 0.0), ("gamma", 65, 1.0), ("scalar", 130, 10.0), ("scalar", 64, 0.0), ("scalar", 1, 1.0),
    ("vector", 37, 10.0), ("vector", 17, 0.05),
])
def test_fused_matches_reference_fp32(gate, T, strength, force_fused):
    """Forward, final state and every gradient (q, k, v, gates, g_gamma, initial state) through the
    fused kernels: odd T, T = one chunk, several chunks (scalar chunks of 64 forward / 32 backward,
    vector chunks of 16), strong forgetting (g down to -10 per token) and none (g = 0)."""
    check(B=2 if T < 100 else 1, T=T, gate=gate, strength=strength)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_fused_half_inputs(gate, force_fused):
    """float16 (the interpreter cannot multiply bfloat16 tiles; bf16 is checked on the GPU)."""
    check(B=1, T=23, gate=gate, strength=1.0, dtype=torch.float16)


def test_fused_odd_head_dims(force_fused):
    """K, V not powers of two (tiles padded and masked)."""
    check(B=1, T=40, gate="scalar", strength=1.0, K=24, V=40, seed=2)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_fused_varlen_matches_sequences_one_by_one(gate, force_fused):
    """cu_seqlens (lengths 5, 0, 36, 20) read on the device: each sequence starts from its own initial
    state and returns its own final state (an empty one returns it unchanged, its dh0 = dht)."""
    cu = torch.tensor([0, 5, 5, 41, 61])
    q, k, v, g, _, h0, do, dS = make(1, 61, gate, 1.0, torch.float32, seed=3, n_state=4, cotangents=True)
    o, S, grads = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS, cu_seqlens=cu)
    assert torch.allclose(S[1], h0[1]) and torch.allclose(grads[5][1], dS[1])
    assert_sequences_match_reference((o, S, grads), q, k, v, g, h0, do, dS, cu, tol=1e-4)


def test_fused_equals_chunked_without_state(monkeypatch):
    """No initial state, no final-state gradient: the fused and the chunked Triton paths agree."""
    q, k, v, g, _, _, do, _ = make(2, 70, "scalar", 1.0, torch.float32, seed=4, cotangents=True)
    runs = []
    for force in (True, False):
        monkeypatch.setattr(fused, "FORCE", force)
        ins = [t.clone().requires_grad_(True) for t in (q, k, v, g)]
        o, _ = triton_gated_linear_attention(*ins, scale=0.25)
        runs.append((o, *torch.autograd.grad(o, ins, do)))
    for a, b in zip(*runs):
        assert rel(a, b) < 1e-5


def test_dispatch_rule(monkeypatch):
    """Fused on CUDA for 16-bit inputs, sequences of at most FUSED_MAX_T[gate kind] tokens and K, V <=
    FUSED_MAX_DIM; with cu_seqlens the total token count decides (no host read of the lengths); FORCE
    overrides the length, the dtype and the device but not the head dims."""
    monkeypatch.setattr(fused, "FORCE", None)
    monkeypatch.setattr(fused, "FUSED_MAX_T", {"scalar": 512, "vector": 64})
    cu = torch.tensor([0, 3, 9])
    d = fused.FUSED_MAX_DIM
    for vector, m in ((False, 512), (True, 64)):
        kw = {"vector": vector}
        assert fused.use_fused(16 * m, 16, None, 128, 128, True, **kw)
        assert not fused.use_fused(16 * (m + 1), 16, None, 128, 128, True, **kw)
        assert not fused.use_fused(16 * m, 16, None, 128, 128, False, **kw)
        assert not fused.use_fused(m, 1, None, d + 1, 64, True, **kw)
        assert not fused.use_fused(m, 1, None, 64, d + 1, True, **kw)
        assert fused.use_fused(m, 1, cu, 64, 64, True, **kw) and not fused.use_fused(m + 1, 1, cu, 64, 64, True, **kw)
        assert fused.use_fused(m, 1, None, 64, 64, True, dtype=torch.float16, **kw)
        assert not fused.use_fused(m, 1, None, 64, 64, True, dtype=torch.float32, **kw)
    assert fused.use_fused(100, 1, None, 64, 64, True) and not fused.use_fused(100, 1, None, 64, 64, True, vector=True)
    monkeypatch.setattr(fused, "FORCE", True)
    assert fused.use_fused(10 ** 6, 1, None, 64, 64, False, dtype=torch.float32)
    assert not fused.use_fused(64, 1, None, d + 1, 64, False)
    monkeypatch.setattr(fused, "FORCE", False)
    assert not fused.use_fused(64, 1, None, 64, 64, True)


def test_measured_defaults():
    """The defaults the H100 run chose (benchmarks/results/gla_fused/): scalar gate up to 2048 tokens,
    vector gate off (its fused kernels were 3-9x slower than the chunked path)."""
    assert fused.FUSED_MAX_T == {"scalar": 2048, "vector": 0}
    assert not fused.use_fused(16, 1, None, 128, 128, True, vector=True)
    assert fused.use_fused(2048, 1, None, 128, 128, True) and not fused.use_fused(2049, 1, None, 128, 128, True)


def test_fused_under_torch_compile(force_fused):
    """The fused kernels run inside the attnzoo::gla_chunk custom op too: a fullgraph compile gives
    the eager values and gradients."""
    q, k, v, g, _, h0, _, _ = make(1, 20, "vector", 1.0, torch.float32, seed=8, cotangents=True)

    def loss(q, k, v, g, h0):
        o, S = triton_gated_linear_attention(q, k, v, g, scale=0.25, initial_state=h0, output_final_state=True)
        return (o * o).sum() + S.sum()

    assert_compiled_matches_eager(loss, (q, k, v, g, h0), tol=1e-6, value=False)


@pytest.mark.parametrize("gate,tune", [
    ("scalar", dict(bt_scalar_fwd=32, bt_scalar_bwd=64, fwd_bv=16)),
    ("vector", dict(bt_vector=32, fwd_bv=32)),
])
def test_fused_other_launch_configs(gate, tune, force_fused, monkeypatch):
    """The configs benchmarks/gpu_gla_fused.py --sweep times are correct too (chunk lengths, V blocks)."""
    for key, value in tune.items():
        monkeypatch.setitem(fused.TUNE, key, value)
    check(B=1, T=70, gate=gate, strength=1.0, seed=6, V=40)


def test_config_that_does_not_compile_falls_back_to_chunked(force_fused, monkeypatch):
    """A launch that runs out of GPU resources at compile time (OutOfResources) is remembered in
    fused.FAILED, warned about once, and the op takes the chunked path: same results."""
    from triton.runtime.errors import OutOfResources

    class Refuses:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise OutOfResources(300000, 232448, "shared memory")
            return launch

    q, k, v, g, _, h0, do, dS = make(1, 30, "scalar", 1.0, torch.float32, seed=7, cotangents=True)
    want = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS)
    monkeypatch.setattr(fused, "FAILED", set())
    monkeypatch.setattr(fused_bwd, "fused_bwd_kernel", Refuses())
    with pytest.warns(UserWarning, match="does not fit"):
        got = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS)
    assert len(fused.FAILED) == 1
    for a, b in zip([*want[:2], *want[2]], [*got[:2], *got[2]]):
        if b is not None:
            assert rel(a, b) < 1e-5


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_split_backward(gate, force_fused, monkeypatch):
    """TUNE["bwd_split"]: the two backward passes as separate programs plus the dg combine launch give
    the float64 loop's gradients, for a batch and for packed sequences (one of them empty)."""
    monkeypatch.setitem(fused.TUNE, "bwd_split", True)
    check(B=2, T=45, gate=gate, strength=1.0, seed=9)
    cu = torch.tensor([0, 7, 7, 30])
    q, k, v, g, _, h0, do, dS = make(1, 30, gate, 1.0, torch.float32, seed=10, n_state=3, cotangents=True)
    o, S, grads = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS, cu_seqlens=cu)
    monkeypatch.setitem(fused.TUNE, "bwd_split", False)
    o2, S2, grads2 = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS, cu_seqlens=cu)
    for a, b in zip(grads, grads2):
        if b is not None:
            assert rel(a, b) < 1e-5


def test_fused_under_vmap_equals_one_call_per_member(force_fused):
    """attnzoo.train.group vmaps the op over models: the eager Function folds the vmapped dim into the
    batch, and the fused kernels then see a batch of G·B sequences; values and gradients equal one
    call per member."""
    from torch.func import vmap

    G = 2
    q, k, v, g, _, h0, _, _ = make(G * 2, 20, "vector", 1.0, torch.float32, seed=11, cotangents=True)
    q, k, v, g = (x.reshape(G, 2, *x.shape[1:]).requires_grad_(True) for x in (q, k, v, g))
    h0 = h0.reshape(G, 2, *h0.shape[1:]).requires_grad_(True)
    fn = lambda q, k, v, g, h0: triton_gated_linear_attention(q, k, v, g, initial_state=h0,  # noqa: E731
                                                              output_final_state=True)
    o, S = vmap(fn)(q, k, v, g, h0)
    per = [fn(q[i], k[i], v[i], g[i], h0[i]) for i in range(G)]
    o_ref, S_ref = torch.stack([p[0] for p in per]), torch.stack([p[1] for p in per])
    assert rel(o, o_ref) < 1e-5 and rel(S, S_ref) < 1e-5
    w = torch.randn_like(o)
    ga = torch.autograd.grad((o * w).sum() + S.sum(), (q, k, v, g, h0))
    gb = torch.autograd.grad((o_ref * w).sum() + S_ref.sum(), (q, k, v, g, h0))
    for a, b in zip(ga, gb):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("gate", ["scalar", "vector"])
@pytest.mark.parametrize("dg_seg", [0, 32])
def test_dg_segments_with_packed_sequences(gate, dg_seg, force_fused, monkeypatch):
    """TUNE["dg_seg"]: dg summed over the whole sequence (0) or restarted at state checkpoints every
    dg_seg tokens (32: every scalar chunk, every second vector chunk); packed sequences of lengths 50,
    3, 77 (their checkpoint slots must not collide) against the float64 loop one by one."""
    monkeypatch.setitem(fused.TUNE, "dg_seg", dg_seg)
    cu = torch.tensor([0, 50, 53, 130])
    q, k, v, g, _, h0, do, dS = make(1, 130, gate, 1.0, torch.float32, seed=12, n_state=3, cotangents=True)
    got = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS, cu_seqlens=cu)
    assert_sequences_match_reference(got, q, k, v, g, h0, do, dS, cu, tol=1e-4, outputs=False)
