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


def test_timed_rounds_interleave_rotate_and_take_the_median():
    """Each provider is timed once per round, the order rotated every round; ms is the median of
    the rounds; a provider that fails in a later round keeps an error and no time."""
    from attnzoo.bench.speed import timed_rounds

    calls = []
    times = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 4.0, 6.0, 7.0]), "c": iter([1.0])}

    def timer(fn):
        calls.append(fn)
        if fn == "c" and len([c for c in calls if c == "c"]) > 1:
            raise RuntimeError("out of memory")
        return next(times[fn])

    mk = lambda p: {"provider": p, "mode": "fwd", "T": 8, "B": 2, "flops": 1e9}  # noqa: E731
    entries = [(mk("a"), "a"), (mk("b"), "b"), (mk("c"), "c"), ({"provider": "d", "error": "refused"}, None)]
    recs = timed_rounds(entries, 3, timer=timer)
    assert calls[:3] == ["a", "b", "c"] and calls[3:6] == ["b", "c", "a"]  # round 2 starts at b; c fails
    assert calls[6:] == ["a", "b"]  # round 3 would start at c, which is out
    a, b, c, d = recs
    assert a["ms"] == 2.0 and a["ms_rounds"] == [3.0, 1.0, 2.0] and a["tflops"] == 1e9 / 2.0 / 1e9
    assert b["ms"] == 5.0 and a["tokens_per_s"] == 16 / 2.0 * 1e3
    assert "ms" not in c and "out of memory" in c["error"] and "ms_rounds" not in c
    assert d == {"provider": "d", "error": "refused"}
    with pytest.raises(ValueError, match="rounds"):
        timed_rounds(entries, 0, timer=timer)


def test_gate_regimes_get_a_row_each_with_the_gateless_providers_in_both():
    from attnzoo.bench.speed import regimes

    assert regimes("attnzoo_vector", "fwdbwd", ("weak", "strong")) == ("weak", "strong")
    assert regimes("attnzoo_vector", "decode", ("weak", "strong")) == (None,)
    assert regimes("sdpa_cudnn", "fwd", ("weak", "strong")) == (None,)
    recs = [{"provider": "attnzoo_vector", "mode": "fwd", "T": 12, "B": 2, "ms": 1.0, "gates": "weak"},
            {"provider": "attnzoo_vector", "mode": "fwd", "T": 12, "B": 2, "ms": 3.0, "gates": "strong"},
            {"provider": "fla_gla", "mode": "fwd", "T": 12, "B": 2, "ms": 2.0, "gates": "weak"},
            {"provider": "fla_gla", "mode": "fwd", "T": 12, "B": 2, "ms": 2.0, "gates": "strong"},
            {"provider": "sdpa_cudnn", "mode": "fwd", "T": 12, "B": 2, "ms": 4.0}]
    rows = [ln for ln in markdown(recs).splitlines() if ln.startswith("| fwd")]
    assert len(rows) == 2 and "gates |" in markdown(recs)
    strong = next(r for r in rows if "| strong |" in r)
    weak = next(r for r in rows if "| weak |" in r)
    # vector/fla and vector/best SDPA per regime; SDPA's 4.000 in both rows
    assert "| 1.50 |" in strong and "| 0.75 |" in strong and "| 0.50 |" in weak and "| 0.25 |" in weak
    assert "4.000" in strong and "4.000" in weak


def test_unknown_gate_regime_is_refused_before_any_run(tmp_path):
    from attnzoo.bench.speed import run_speed

    with pytest.raises(ValueError, match="gates must be"):
        run_speed([S], str(tmp_path / "none"), gates=("medium",))
    assert not (tmp_path / "none").exists()
