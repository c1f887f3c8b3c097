"""Grids of more than 65,535 sequences x heads: CUDA allows that many programs on grid axes 1 and 2 only
(2^31 - 1 on axis 0), so a kernel with N·H on axis 1 or 2 fails to launch ("invalid argument") once N·H
passes it: the zoo's mamba2 group at d_model 256 (4 members x 512 sequences x 32 heads = 65,536) did on an
H100, 2026-12-07. Every GLA and delta-rule launch (fused, chunked, decode; forward and backward) must keep
axes 1 and 2 within the limit at such a batch. The launches are recorded, not run (the interpreter would
take minutes for 65k programs); their numerics are tested at small shapes by the other test files."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import triton.runtime.interpreter as interpreter  # noqa: E402

from attnzoo.ops.common.tiles import MAX_GRID_YZ  # noqa: E402
from attnzoo.ops.delta.triton import triton_delta_rule  # noqa: E402
from attnzoo.ops.linear.triton import fused, triton_gated_linear_attention  # noqa: E402

N, H, K, V = 4097, 16, 16, 16          # N·H = 65,552 > 65,535


@pytest.fixture
def launches(monkeypatch):
    seen = []

    def getitem(self, grid):
        def launch(*args, **kwargs):
            g = grid(kwargs) if callable(grid) else grid
            seen.append((getattr(self.fn, "__name__", str(self.fn)), tuple(g) + (1,) * (3 - len(g))))
        return launch
    monkeypatch.setattr(interpreter.InterpretedFunction, "__getitem__", getitem)
    return seen


def _inputs(T, gate):
    r = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
    q, k, v = r(N, T, H, K), r(N, T, H, K), r(N, T, H, V)
    g = {"scalar": r(N, T, H), "vector": r(N, T, H, K)}.get(gate)
    return q, k, v, g


def _check(seen, names):
    assert {n for n, _ in seen} >= set(names), sorted({n for n, _ in seen})
    wide = [(n, g) for n, g in seen if g[1] > MAX_GRID_YZ or g[2] > MAX_GRID_YZ]
    assert not wide, wide
    assert any(g[0] > MAX_GRID_YZ for _, g in seen)       # the long axis really is past the limit


@pytest.mark.parametrize("gate,fused_on", [("scalar", True), ("scalar", False), ("vector", False), (None, True)])
def test_gla_launches_keep_sequences_times_heads_on_axis_0(launches, monkeypatch, gate, fused_on):
    monkeypatch.setattr(fused, "FORCE", fused_on)
    q, k, v, g = _inputs(2, gate)
    o, S = triton_gated_linear_attention(q, k, v, g, output_final_state=True)
    (o.sum() + S.sum()).backward()
    names = ["fused_fwd_kernel"] if fused_on else ["chunk_state_fwd_kernel", "chunk_state_bwd_kernel"]
    _check(launches, names)
    launches.clear()
    with torch.no_grad():                                    # decode: one token per sequence
        triton_gated_linear_attention(q[:, :1], k[:, :1], v[:, :1], None if g is None else g[:, :1],
                                      initial_state=S.detach(), output_final_state=True)
    _check(launches, ["recurrent_fwd_kernel"])


@pytest.mark.parametrize("gated", [False, True])
def test_delta_rule_launches_keep_sequences_times_heads_on_axis_0(launches, gated):
    q, k, v, _ = _inputs(2, None)
    beta = torch.rand(N, 2, H, requires_grad=True)
    g = -torch.rand(N, 2, H, requires_grad=True) if gated else None
    o, S = triton_delta_rule(q, k, v, beta, g, output_final_state=True)
    (o.sum() + S.sum()).backward()
    _check(launches, ["delta_state_fwd_kernel", "delta_state_bwd_kernel"])
    launches.clear()
    with torch.no_grad():
        triton_delta_rule(q[:, :1], k[:, :1], v[:, :1], beta[:, :1], None if g is None else g[:, :1],
                          initial_state=S.detach(), output_final_state=True)
    _check(launches, ["delta_recurrent_fwd_kernel"])


def test_scan_and_short_conv_refuse_a_batch_past_the_grid_and_auto_falls_back():
    from attnzoo.ops.conv.triton.api import triton_short_supported
    from attnzoo.ops.scan.triton.api import _limits, triton_scan_supported

    u = torch.randn(MAX_GRID_YZ + 1, 1, 2)
    A, Bm = -torch.rand(2, 4), torch.randn(MAX_GRID_YZ + 1, 1, 4)
    assert "B <= 65535" in _limits(u, u, A, Bm, Bm) and not triton_scan_supported(u, u, A, Bm, Bm)
    assert triton_scan_supported(u[:4], u[:4], A, Bm[:4], Bm[:4])
    assert not triton_short_supported(u, torch.randn(2, 4)) and triton_short_supported(u[:4], torch.randn(2, 4))
