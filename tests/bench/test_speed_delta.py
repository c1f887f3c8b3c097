"""The speed bench's delta-rule providers (attnzoo/bench/speed_delta.py), on the CPU at a tiny shape: our ops
run in each mode (impl="torch" off CUDA), fla's are called with the inputs fla's API names (the gate only for
the gated rule, decode through the fused recurrent op) or skipped when missing; the gate regimes apply to the
gated rule only; the table gets the two delta ratio columns."""

from __future__ import annotations

import pytest
import torch

from attnzoo.bench.speed import GATES, markdown, regimes
from attnzoo.bench.speed_delta import DELTA, delta_call, delta_flops

B, T, H, D = 2, 12, 2, 8


@pytest.mark.parametrize("provider", ["attnzoo_gated_delta", "attnzoo_delta"])
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd", "decode"])
def test_our_calls_run(provider, mode):
    fn, flops = delta_call(provider, B, T, H, D, mode, dtype=torch.float32, device="cpu")
    out = fn()
    assert flops == delta_flops(B, T, H, D, mode) > 0
    if mode == "fwdbwd":
        assert len(out) == (5 if provider == "attnzoo_gated_delta" else 4)
        assert all(torch.isfinite(g).all() for g in out)
    elif mode == "decode":
        o, S = out
        assert o.shape == (B, 1, H, D) and S.shape == (B, H, D, D)
    else:
        assert out.shape == (B, T, H, D)


@pytest.mark.parametrize("mode", ["fwd", "decode"])
def test_fla_calls_get_fla_argument_names_and_are_skipped_when_missing(mode):
    seen = {}

    def fake(name):
        def f(**kw):
            seen[name] = kw
            return kw["v"], None
        return f

    fla = {p + (":decode" if mode == "decode" else ""): fake(p) for p in ("fla_gated_delta", "fla_delta")}
    for p in ("fla_gated_delta", "fla_delta"):
        assert delta_call(p, B, T, H, D, mode, dtype=torch.float32, device="cpu", fla=None) is None
        fn, _ = delta_call(p, B, T, H, D, mode, dtype=torch.float32, device="cpu", fla=fla, divisor=GATES["strong"])
        fn()
    assert "g" in seen["fla_gated_delta"] and "g" not in seen["fla_delta"]
    assert all({"q", "k", "v", "beta", "scale"} <= set(kw) for kw in seen.values())
    if mode == "decode":
        assert all(kw["initial_state"].shape == (B, H, D, D) and kw["output_final_state"] for kw in seen.values())
    k = seen["fla_delta"]["k"]
    assert torch.allclose(k.norm(dim=-1), torch.ones(k.shape[:-1]), atol=1e-5)  # L2-normalised keys


def test_gate_regimes_apply_to_the_gated_rule_only():
    assert set(DELTA) <= set(__import__("attnzoo.bench.speed", fromlist=["PROVIDERS"]).PROVIDERS)
    assert regimes("attnzoo_gated_delta", "fwdbwd", ("weak", "strong")) == ("weak", "strong")
    assert regimes("fla_gated_delta", "fwd", ("weak", "strong")) == ("weak", "strong")
    assert regimes("attnzoo_delta", "fwdbwd", ("weak", "strong")) == (None,)
    assert regimes("attnzoo_gated_delta", "decode", ("weak", "strong")) == (None,)


def test_table_has_the_delta_ratios():
    mk = lambda p, ms, g=None: {"provider": p, "mode": "fwdbwd", "T": 12, "B": 2, "ms": ms,  # noqa: E731
                                **({"gates": g} if g else {})}
    recs = [mk("attnzoo_gated_delta", 1.0, "strong"), mk("fla_gated_delta", 2.0, "strong"),
            mk("attnzoo_delta", 3.0), mk("fla_delta", 4.0)]
    md = markdown(recs)
    assert "gated delta/fla | delta/fla |" in md
    row = next(line for line in md.splitlines() if line.startswith("| fwdbwd"))
    assert row.rstrip().endswith("| 0.50 | 0.75 |")
    assert "delta/fla" not in markdown([mk("attnzoo_scalar", 1.0)])
