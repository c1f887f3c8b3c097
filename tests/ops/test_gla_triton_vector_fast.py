"""The vector gate's two branches in the Triton GLA kernels (triton_vector_fast.py): factorised A for
chunks whose total decay is >= −SAFE_LOG, the sub-chunk path for the others. Under Triton's
interpreter (TRITON_INTERPRET=1, set before triton is imported) against the float64 reference loop,
forward and every gradient. In interpreter mode the wrapper fills the intra-chunk A buffer and
dq, dk, db with NaN before the kernels run, so a kernel that reads what the other branch never
wrote, or a row that no dq/dk kernel claims, shows up as NaN; a kernel that factorises a strongly
forgetting chunk (e^{−b} ~ e^{300}) shows up as inf/NaN. Tiny shapes: the interpreter is slow."""

from __future__ import annotations

import math
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from attnzoo.ops.linear.triton import chunk as tc  # noqa: E402
from attnzoo.ops.linear.triton import triton_gated_linear_attention  # noqa: E402
from attnzoo.ops.linear.triton.cumsum import chunk_local_cumsum  # noqa: E402
from attnzoo.ops.linear.triton.vector_fast import SAFE_LOG, chunk_safe_mask  # noqa: E402
from tests.ops._gla_triton_cases import H, assert_close, assert_sequences_match_reference, fwd_bwd  # noqa: E402
from tests.ops._gla_triton_cases import reference_run  # noqa: E402

LIMIT = float(SAFE_LOG.value)
TOL32 = 5e-6  # float32 here is exact fp32 (no tf32 in the interpreter): errors measured ~2-7e-7


def qkv(B, T, K, V, dtype, seed):
    """q, k, v and h0, then the generator for the gate (which is drawn after h0, unlike the shared make's)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return r(B, T, H, K).to(dtype), r(B, T, H, K).to(dtype), r(B, T, H, V).to(dtype), r(B, H, K, V), gen


def gate(B, T, K, per_step, gen):
    """g = −per_step · U(0.5, 1.5) per token, head and channel; per_step [H] or [T, H] (broadcast)."""
    u = 0.5 + torch.rand(B, T, H, K, generator=gen)
    ps = torch.as_tensor(per_step, dtype=torch.float32)
    return -u * (ps[None, None, :, None] if ps.dim() == 1 else ps[None, :, :, None])


def safe_mask(g, cu_seqlens=None):
    """The branch each (chunk, head) takes, from the kernels' own b: bool [n_chunks, H]."""
    B, T = g.shape[:2]
    tab = tc.make_tables(B * T, B, cu_seqlens, g.device)
    return chunk_safe_mask(chunk_local_cumsum(g.reshape(B * T, H, -1).float().contiguous(), tab, tc.BT), tab, tc.BT)


def check(q, k, v, g, h0, tol, seed=1, **kw):
    B, T = q.shape[:2]
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(B, T, H, v.shape[-1], generator=gen)
    dS = torch.randn(h0.shape, generator=gen)
    scale = q.shape[-1] ** -0.5
    got = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS, scale=scale, **kw)
    assert_finite(got)
    assert_close(got, reference_run(q, k, v, g, None, h0, do, dS, scale=scale), tol)


def assert_finite(got):
    """o, S and every gradient of a fwd_bwd result finite (the NaN-filled buffers were all written)."""
    o, S, grads = got
    for name, a in zip(("o", "S", "dq", "dk", "dv", "dg", "dg_gamma", "dh0"), (o, S, *grads)):
        assert a is None or torch.isfinite(a).all(), name


@pytest.mark.parametrize("K,V,dtype,tol", [(16, 16, torch.float32, TOL32), (24, 40, torch.float32, TOL32),
                                           (16, 16, torch.float16, 5e-3)])
def test_weak_gates_take_the_factorised_path(K, V, dtype, tol):
    """GLA-like decay (chunk totals ~ −3) with one channel per head decaying by SAFE_LOG − 1 over
    each chunk (factors up to e^{19}): every chunk factorised; K, V not powers of two; fp16 (whose
    factor operands go through fp32: e^{±19} is outside fp16's range)."""
    q, k, v, h0, gen = qkv(1, 150, K, V, dtype, seed=0)
    g = gate(1, 150, K, [0.05, 0.05], gen)
    g[..., 1] = -(LIMIT - 1.0) / 64
    assert safe_mask(g).all()
    check(q, k, v, g, h0, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL32), (torch.float16, 5e-3)])
def test_logsigmoid_gates_take_the_centred_factorised_path(dtype, tol):
    """logsigmoid(x), x ~ N(0, 1) (the "strong" regime of issue #22: −0.81 per token, chunk totals −40
    to −65 here): beyond the first bound (e^{−b} <= e^{20}, every chunk on the sub-chunk path), inside
    the centred one (factors e^{±|b_l|/2}): every chunk factorised, forward and every gradient equal to
    the float64 loop."""
    q, k, v, h0, gen = qkv(1, 192, 16, 16, dtype, seed=11)
    g = torch.nn.functional.logsigmoid(torch.randn(1, 192, H, 16, generator=gen))
    tab = tc.make_tables(192, 1, None, g.device)
    b_last = chunk_local_cumsum(g.reshape(192, H, 16).contiguous(), tab, tc.BT).view(3, 64, H, 16)[:, -1]
    assert (b_last.amin(-1) < -20).all() and torch.equal(safe_mask(g), b_last.amin(-1) >= -LIMIT)
    assert safe_mask(g).all() or LIMIT < 80   # SAFE_LOG = 80 factorises them all
    check(q, k, v, g, h0, tol)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_masked_pairs_may_overflow_without_reaching_the_outputs():
    """Chunk totals just inside the limit and inputs scaled up: the masked pairs (i < j) of the factorised A
    reach e^{SAFE_LOG} |q k| · K > float32's max (inf/NaN there); every kernel drops them by tl.where, so
    the outputs and gradients stay finite and equal to the float64 loop."""
    q, k, v, h0, gen = qkv(1, 128, 16, 16, torch.float32, seed=12)
    s = (1e41 / (math.exp(LIMIT - 0.5) * 16)) ** 0.5       # x430 at SAFE_LOG 80
    q, k = q * s, k * s
    g = torch.full((1, 128, H, 16), -(LIMIT - 0.5) / 64)
    assert safe_mask(g).all()
    b = torch.cumsum(g[0, :64, 0], 0)
    c = b[-1] / 2
    A = (q[0, :64, 0] * torch.exp(b - c)) @ (k[0, :64, 0] * torch.exp(c - b)).T    # float32, as the kernels
    assert torch.isinf(A.triu(1)).any() and torch.isfinite(A.tril()).all()         # the test can fail
    check(q, k, v, g, h0, 2e-5)


def test_strong_gates_take_the_subchunk_path():
    q, k, v, h0, gen = qkv(1, 100, 16, 16, torch.float32, seed=1)
    g = gate(1, 100, 16, [5.0, 5.0], gen)
    assert not safe_mask(g).any()
    check(q, k, v, g, h0, 1e-4)  # the sub-chunk path's dg under strong decay: measured 1.9e-5


def test_strong_gates_two_key_blocks_and_a_one_row_last_subchunk():
    """The sub-chunk kernels with K = 40 (two K blocks of 32, the second 8 channels wide: a grid axis
    of the dq/dk kernel, a loop of the intra one) and T = 81, whose second chunk has 17 rows: its
    last sub-chunk holds ONE row (the sub-chunk loop must run cdiv(17, 16) = 2 times)."""
    q, k, v, h0, gen = qkv(1, 81, 40, 24, torch.float32, seed=7)
    g = gate(1, 81, 40, [5.0, 5.0], gen)
    assert not safe_mask(g).any()
    check(q, k, v, g, h0, 1e-4)  # measured: dg 1.7e-5, the rest <= 1.6e-7


def test_mixed_heads_and_chunks_in_one_launch():
    """Head 0 weak except its second chunk (strong: e^{−b} ~ e^{300} would overflow if factorised),
    head 1 strong except its third (partial) chunk: both branches run side by side in every kernel."""
    T = 150
    q, k, v, h0, gen = qkv(2, T, 16, 16, torch.float32, seed=2)
    per_step = torch.full((T, H), 0.05)
    per_step[64:128, 0] = 5.0
    per_step[:128, 1] = 5.0
    g = gate(2, T, 16, per_step, gen)
    m = safe_mask(g).view(2, 3, H)
    expect = torch.tensor([[True, False], [False, False], [True, True]])
    assert torch.equal(m, expect.expand(2, 3, H))
    check(q, k, v, g, h0, TOL32)


@pytest.mark.parametrize("total,fast", [(LIMIT - 0.02, True), (LIMIT + 0.02, False)])
def test_threshold_on_each_side(total, fast):
    """One channel of head 0 decays by `total` over the first chunk (the rest is weak): just inside
    and just outside SAFE_LOG; the second chunk decays near the limit in both heads."""
    T, K = 128, 16
    q, k, v, h0, gen = qkv(1, T, K, 16, torch.float32, seed=3)
    g = -0.01 * torch.rand(1, T, H, K, generator=gen)
    g[0, :64, 0, 3] = -total / 64
    g[0, 64:, :, 5] = -total / 64
    m = safe_mask(g)
    assert m[0, 0].item() is fast and m[1].tolist() == [fast, fast] and m[0, 1].item()
    check(q, k, v, g, h0, TOL32)


def test_varlen_partial_last_chunks_match_one_by_one():
    """cu_seqlens with partial last chunks on both branches: sequence 0 (70 tokens) is weak, so its
    6-token tail is factorised, while the 58 rows after that tail in the packed buffer (sequence 1)
    decay strongly; sequence 1 (100 tokens) strong in its first chunk, weak in its 36-token tail;
    sequence 2 (5 tokens) has one channel at −30 per token (total −150: e^{150} overflows fp32, so
    factorising it would show). The decision must use each chunk's last VALID row."""
    lens = [70, 100, 5]
    cu = torch.tensor([0, 70, 170, 175])
    q, k, v, _, gen = qkv(1, sum(lens), 16, 16, torch.float32, seed=4)
    h0 = torch.randn(len(lens), H, 16, 16, generator=gen)
    per_step = torch.full((sum(lens), H), 0.05)
    per_step[70:134] = 5.0
    g = gate(1, sum(lens), 16, per_step, gen)
    g[0, 170:, :, 7] = -30.0
    m = safe_mask(g, cu)
    assert m.tolist() == [[True] * H, [True] * H, [False] * H, [True] * H, [False] * H]
    do, dS = torch.randn(1, sum(lens), H, 16, generator=gen), torch.randn(len(lens), H, 16, 16, generator=gen)
    got = fwd_bwd(triton_gated_linear_attention, q, k, v, g, None, h0, do, dS, scale=0.25, cu_seqlens=cu)
    assert_finite(got)
    assert_sequences_match_reference(got, q, k, v, g, h0, do, dS, cu, tol=TOL32, scale=0.25)


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@pytest.mark.parametrize("skipped", ["chunk_vector_fast_dqdk_kernel", "chunk_vector_dqdk_kernel"])
def test_dqdk_kernels_split_the_chunks_exactly(monkeypatch, skipped):
    """With one of the two dq/dk kernels not launched, exactly the other branch's rows are written
    (the rest stays NaN), and the intra-chunk A kernel writes exactly the sub-chunk path's rows.
    Two chunks cross the limit only at their last valid row (a full one, and the partial tail), so
    a kernel deciding from any other row, or from t0 + BT − 1, splits them differently."""
    T, K = 150, 16
    q, k, v, h0, gen = qkv(1, T, K, 16, torch.float32, seed=5)
    g = -0.01 * torch.rand(1, T, H, K, generator=gen)
    g[0, 64:128, 0, :] = -2.0                        # head 0, chunk 1: strong (total −128)
    g[0, :64, 1, 2] = -(LIMIT + 0.05) / 64           # head 1, chunk 0: crosses at row 63 only
    g[0, 128:, 0, 4] = -(LIMIT + 0.05) / 22          # head 0, the 22-row tail: crosses at row 149 only
    g[0, 128:, 1, 4] = -(LIMIT - 0.05) / 22          # head 1, the tail: just inside
    P = lambda x: x.reshape(T, *x.shape[2:]).contiguous()  # noqa: E731
    qp, kp, vp, gp = P(q), P(k), P(v), P(g)
    tab = tc.make_tables(T, 1, None, q.device)
    b = chunk_local_cumsum(gp, tab, tc.BT)
    safe = chunk_safe_mask(b, tab, tc.BT)
    assert safe.tolist() == [[True, False], [False, True], [False, True]]
    row_safe = safe[torch.arange(T) // tc.BT]  # [T, H]
    A = tc._intra(qp, kp, b, tab)
    assert torch.equal(torch.isnan(A).all(-1), row_safe) and torch.equal(torch.isfinite(A).all(-1), ~row_safe)
    monkeypatch.setattr(tc, skipped, _NoLaunch())
    dq, dk, _, dg, _ = tc.chunk_backward(qp, kp, vp, gp, torch.randn_like(vp), None, scale=0.25,
                                        initial_state=h0, tab=tab)
    written = row_safe if skipped == "chunk_vector_dqdk_kernel" else ~row_safe
    for x in (dq, dk):
        assert torch.equal(torch.isfinite(x).all(-1), written) and torch.equal(torch.isnan(x).all(-1), ~written)


def test_g_gamma_added_into_the_vector_gate_decides_the_branch():
    """g_gamma [H] is added into g by the wrapper, so it counts in the chunk's decay: head 0
    (g_gamma −0.1, totals ~ −10) factorised, head 1 (−3.0, totals −110 and below) on the sub-chunk path;
    every gradient, g_gamma's included."""
    T, K = 100, 16
    q, k, v, h0, gen = qkv(1, T, K, 16, torch.float32, seed=6)
    g = gate(1, T, K, [0.05, 0.05], gen)
    gg = torch.tensor([-0.1, -3.0])
    assert safe_mask(g + gg[:, None]).tolist() == [[True, False], [True, False]]
    do, dS = torch.randn(1, T, H, 16, generator=gen), torch.randn(1, H, K, 16, generator=gen)
    got = fwd_bwd(triton_gated_linear_attention, q, k, v, g, gg, h0, do, dS, scale=0.25)
    assert_close(got, reference_run(q, k, v, g, gg, h0, do, dS, scale=0.25), TOL32)


@pytest.mark.parametrize("fused", [False, True])
def test_vector_dg_assemblies_mixed_chunks_and_varlen(fused, monkeypatch):
    """The fast path's dq/dk kernel writes the final dg of its chunks (TUNE["vector_fused_dg"]: the
    in-chunk reverse cumsum plus <S_c, dS_c> per channel) and the reverse cumsum then runs in place
    on the sub-chunk path's chunks only; or both go through the reverse cumsum. Weak and strong
    chunks side by side in one launch, and varlen with partial tails on both branches."""
    monkeypatch.setitem(tc.TUNE, "vector_fused_dg", fused)
    test_mixed_heads_and_chunks_in_one_launch()
    test_varlen_partial_last_chunks_match_one_by_one()


def test_float32_backward_factors_match_the_reference(monkeypatch):
    """TUNE["vector_bwd_factor_f32"]: the backward's two factorised products in float32 (what bf16 inputs would
    take on a GPU; the interpreter runs fp32 and fp16 here, where it must not change the result): mixed safe
    and unsafe chunks, and varlen, against the float64 loop."""
    monkeypatch.setitem(tc.TUNE, "vector_bwd_factor_f32", True)
    test_mixed_heads_and_chunks_in_one_launch()
    test_varlen_partial_last_chunks_match_one_by_one()


SM90_DQDK = """
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from attnzoo.ops.linear.triton.vector_fast import chunk_vector_fast_dqdk_kernel as fn
names = ["q", "k", "v", "do", "b", "h", "dh", "dq", "dk", "db", "cu_seqlens", "chunk_seq", "chunk_idx"]
half = ("q", "k", "v", "do", "dq", "dk")
for f32 in (False, True):
    sig = {n: "*bf16" if n in half else ("*i32" if n in names[-3:] else "*fp32") for n in names}
    sig["scale"] = "fp32"
    const = {"H": 16, "K": 128, "V": 128, "BT": 64, "BK": 64, "BV": 32, "FUSED_DG": False, "F32": f32}
    attrs = {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(sig.items()) if v[0] == "*"}
    src = ASTSource(fn, {**sig, **{k: "constexpr" for k in const}}, constexprs=const, attrs=attrs)
    out = compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert out.asm["cubin"], f32
print("compiled")
"""


def test_fast_dqdk_kernel_compiles_for_sm90_with_either_factor_precision():
    """bf16 inputs with bf16 or float32 (tf32) backward factors, at the launch's shapes (K = V = 128):
    sm_90 cubins without a GPU (a process without TRITON_INTERPRET)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", SM90_DQDK], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


@pytest.mark.parametrize("sub", [True, False], ids=["sub_factor", "pairwise_only"])
@pytest.mark.parametrize("per_step,expect", [(0.8, "factor"), (5.0, "pairwise"), ("mixed", "both")])
def test_subchunk_diagonal_blocks_factorised_about_their_midpoint(monkeypatch, per_step, expect, sub):
    """TUNE["vector_sub_factor"]: inside chunks past SAFE_LOG, a 16-row diagonal block whose own decay is
    >= −SUB_SAFE_LOG is one product about its midpoint; harder ones stay pairwise. Per-step decay 0.8
    (~ −13 per block, the logsigmoid regime) factorises every block, 5.0 (~ −80) none (T = 128: no tail,
    whose short last block would pass), "mixed" puts the two side by side in one launch, with a 22-row
    tail chunk. Forward and every gradient against the float64 loop; K = 40 gives the dq/dk kernel two K
    blocks, each deciding for itself. The flag is on by default (2026-12-08); off, every block is pairwise."""
    from attnzoo.ops.linear.triton.safe import SUB_SAFE_LOG

    monkeypatch.setitem(tc.TUNE, "vector_sub_factor", sub)
    T, K = (128 if per_step == 5.0 else 150), 40
    q, k, v, h0, gen = qkv(1, T, K, 24, torch.float32, seed=21)
    if per_step == "mixed":
        ps = torch.full((T, H), 0.8)
        ps[16:32, 0] = 5.0          # one block of head 0 forgets too hard to factorise
        ps[64:100, 1] = 5.0
    else:
        ps = torch.full((T, H), per_step)
    g = gate(1, T, K, ps, gen)
    assert not safe_mask(g)[:2].any()       # both full chunks on the sub-chunk path (the 22-row tail may not be)
    blocks = torch.cumsum(g[0], 0)                          # block decay: b at its last row minus its first
    dec = torch.stack([blocks[s + 15] - blocks[s] for s in range(0, 128, 16)]).amin(-1)  # [blocks, H]
    ok = dec >= -float(SUB_SAFE_LOG.value)
    assert {"factor": ok.all(), "pairwise": not ok.any(), "both": ok.any() and not ok.all()}[expect]
    check(q, k, v, g, h0, 1e-4)
