"""The segmented state passes of the Triton GLA op (triton_state.py MODE 1/2): segments forced to
1-3 chunks (BT = 64, T of 4-6 chunks) so Triton's interpreter (TRITON_INTERPRET=1, set before triton
is imported) runs several segments per sequence. Outputs, final state and every gradient against the
float64 reference loop and against the same op in one sequential launch (MODE 0); varlen sequences of
different segment counts; the segment-length rule."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from attnzoo.ops.linear.triton import chunk as tc  # noqa: E402
from attnzoo.ops.linear.triton import state as ts  # noqa: E402
from attnzoo.ops.linear.triton import triton_gated_linear_attention as tri  # noqa: E402
from attnzoo.ops.linear.triton.vector_fast import chunk_safe_mask  # noqa: E402
from tests.ops._checks import rel  # noqa: E402
from tests.ops._gla_triton_cases import assert_close, assert_sequences_match_reference, fwd_bwd  # noqa: E402
from tests.ops._gla_triton_cases import reference_run  # noqa: E402
from tests.ops._gla_triton_cases import make as _make  # noqa: E402


def make(n_tok, gate, strength, n_state, seed):
    """One row of n_tok tokens, K = V = 16, and n_state initial states; do and dS too."""
    return _make(1, n_tok, gate, strength, seed=seed, n_state=n_state, cotangents=True)


def run_tri(seg, *args, **kw):
    old = ts.SEGMENT_CHUNKS
    ts.SEGMENT_CHUNKS = seg
    try:
        return fwd_bwd(tri, *args, **kw)
    finally:
        ts.SEGMENT_CHUNKS = old


@pytest.mark.parametrize("gate,strength,T,seg", [
    (None, 0.0, 330, 2),            # 6 chunks: 3 segments
    ("scalar", 1.0, 261, 2),        # 5 chunks, partial last: segments 2, 2, 1
    ("scalar+gamma", 0.5, 200, 3),  # 4 chunks: segments 3, 1
    ("gamma", 1.0, 257, 1),         # a one-token last chunk, one chunk per segment
    ("vector", 0.05, 301, 2),       # weak gates: the factorised intra-chunk path
    ("vector", 10.0, 233, 3),       # strong gates: the sub-chunk path
])
def test_segmented_matches_reference_and_sequential(gate, strength, T, seg):
    """Outputs, final state and all gradients (q, k, v, g, g_gamma, h0; the loss also uses the final
    state) with segments of `seg` chunks equal the float64 reference and the one-launch pass."""
    args = make(T, gate, strength, 1, seed=T)
    if gate == "vector":  # the intra-chunk branch every chunk takes (triton_vector_fast)
        tab = tc.make_tables(T, 1, None, args[0].device)
        safe = chunk_safe_mask(tc.chunk_local_cumsum(args[3][0].contiguous(), tab, tc.BT), tab, tc.BT)
        assert bool(safe.all()) if strength < 1 else not bool(safe.any())
    got = run_tri(seg, *args)
    assert_close(got, reference_run(*args), 1e-4, "reference")
    assert_close(got, run_tri(None, *args), 1e-5, "sequential")


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_segmented_varlen_sequences_one_by_one(gate):
    """Packed sequences of 1, 5, 3 and 2 chunks (segments of 2 chunks: 1, 3, 2, 1 segments; the
    first shorter than one segment, the last a one-segment one ending on a partial chunk), each with
    its own initial and final state: outputs and gradients equal the reference run one by one."""
    lens = [30, 300, 140, 71]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    q, k, v, g, _, h0, do, dS = make(sum(lens), gate, 1.0, len(lens), seed=11)
    got = run_tri(2, q, k, v, g, None, h0, do, dS, cu_seqlens=cu)
    assert_sequences_match_reference(got, q, k, v, g, h0, do, dS, cu, tol=1e-4)


@pytest.mark.parametrize("gate", [1, 2])
def test_state_passes_launch_two_modes_and_match_one_launch(gate, monkeypatch):
    """At the kernel level (empty middle sequence, 0 chunks: its final state is h0, its dh0 is dht):
    seg = 2 launches MODE 1 then MODE 2 for each pass, and h, ht, dh, dh0, term equal MODE 0's."""
    lens = [200, 0, 330]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v, g, _, h0, do, dht = make(sum(lens), "vector" if gate == 2 else "scalar", 1.0, len(lens), seed=5)
    q, k, v, do = (x[0].contiguous() for x in (q, k, v, do))
    tab = tc.make_tables(sum(lens), 1, cu, q.device)
    assert tab.max_chunks == 6 and tc.make_tables(6 * 65, 6, None, q.device).max_chunks == 2
    b = tc.chunk_local_cumsum(g[0].contiguous(), tab, tc.BT)
    modes = []
    for kern in ("chunk_state_fwd_kernel", "chunk_state_bwd_kernel"):
        real = getattr(tc, kern)

        class Spy:
            def __getitem__(self, grid, real=real):
                def launch(*a, **kw):
                    modes.append(kw["MODE"])
                    return real[grid](*a, **kw)
                return launch
        monkeypatch.setattr(tc, kern, Spy())
    out = {}
    for seg in (None, 2):
        h, ht = tc._states(k, v, b, gate, h0, tab, True, seg=seg)
        dh, dh0, term = tc._dstates(q, do, b, gate, dht, h, ht, tab, 0.25, True, seg=seg)
        out[seg] = (h, ht, dh, dh0, term)
    assert modes == [0, 0, 1, 2, 1, 2]
    for name, a, ref in zip(("h", "ht", "dh", "dh0", "term"), out[2], out[None]):
        if name == "term" and gate != 2:  # only the vector gate's state pass writes term
            assert a is None and ref is None
            continue
        assert rel(a, ref) < 1e-5, (name, rel(a, ref))
    assert torch.equal(out[2][1][1], h0[1]) and torch.equal(out[2][3][1], dht[1])


def test_choose_segment_rule():
    """No segments with many programs or short sequences; else SEG = max(32, cdiv(chunks, 8)) so at
    most 8 segments; an explicit seg overrides the rule; bad input raises."""
    c = ts.choose_segment
    assert c(n_programs=128, max_chunks=512) == 64          # T = 32k, B = 1, H = 16, K = V = 128
    assert c(n_programs=128, max_chunks=256) == 32
    assert c(n_programs=128, max_chunks=33) == 32           # two segments: 32 + 1
    assert c(n_programs=128, max_chunks=32) == 0
    assert c(n_programs=512, max_chunks=4096) == 0
    assert c(n_programs=511, max_chunks=4096) == 512
    assert c(n_programs=256, max_chunks=128, min_programs=256) == 0  # the scalar gate's threshold
    assert c(n_programs=255, max_chunks=128, min_programs=256) == 32
    assert c(n_programs=4096, max_chunks=5, seg=2) == 2     # the override ignores the program count
    assert c(n_programs=8, max_chunks=5, seg=5) == 0        # one segment holds every chunk
    with pytest.raises(ValueError, match="segment length"):
        c(n_programs=8, max_chunks=5, seg=0)
    with pytest.raises(ValueError, match="n_programs"):
        c(n_programs=0, max_chunks=5)


def test_vector_state_blocks_widen_only_when_programs_are_few():
    """Vector gate, K = V = 128: V blocks of 32 at N·H = 64 (512 programs, unsegmented), of 64 at
    N·H = 32 (would be 256 programs: segmented anyway, and each V block reloads the gate tile);
    the scalar gate keeps 32 either way."""
    assert tc._state_config(128, 128, 2, 64)[:2] == (64, 32)
    assert tc._state_config(128, 128, 2, 32)[:2] == (64, 64)
    assert tc._state_config(128, 128, 1, 32)[:2] == (64, 32)
    assert tc._state_config(16, 16, 2, 2)[:2] == (16, 16)
