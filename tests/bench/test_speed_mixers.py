"""The speed bench's whole-mixer providers (mixer:NAME), run on the CPU at a tiny shape: each mode
builds a call that runs the registered mixer, decode continues from a prefilled state, and the
Markdown table gets a column per mixer."""

from __future__ import annotations

import pytest
import torch

from attnzoo.bench.speed import Shape, _is_mixer, make_mixer_call, markdown

S = Shape(B=2, T=12, H=2, D=8)


@pytest.mark.parametrize("name", ["gla", "softmax", "retnet"])
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd", "decode"])
def test_mixer_calls_run(name, mode):
    fn, flops = make_mixer_call(name, S, mode, torch.float32, device="cpu")
    out = fn()
    assert flops is None
    if mode == "fwdbwd":
        dx, *dparams = out
        assert dx.shape == (S.B, S.T, S.H * S.D) and all(torch.isfinite(g).all() for g in dparams)
    if mode == "decode":
        y, state = out
        assert y.shape == (S.B, 1, S.H * S.D) and state is not None


def test_decode_of_a_bidirectional_mixer_is_skipped():
    assert make_mixer_call("bi_mamba", S, "decode", torch.float32, device="cpu") is None


def test_provider_names_and_table():
    assert _is_mixer("mixer:gla") and not _is_mixer("mixer:nope") and not _is_mixer("gla")
    recs = [{"provider": "mixer:gla", "mode": "fwd", "T": 12, "B": 2, "ms": 1.5},
            {"provider": "attnzoo_scalar", "mode": "fwd", "T": 12, "B": 2, "ms": 0.5}]
    md = markdown(recs)
    assert "mixer:gla ms" in md and "| 1.500 |" in md
