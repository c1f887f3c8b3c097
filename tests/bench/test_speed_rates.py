"""The achieved-rates table of `attnzoo bench speed` (bench/speed_rates.py): the IO lower bound of each case
and the shares of the measured ceilings."""

from __future__ import annotations

from attnzoo.bench.speed_rates import io_bytes, rates_markdown


def rec(provider, mode="fwd", ms=1.0, **kw):
    return {"provider": provider, "mode": mode, "B": 2, "T": 1024, "H": 16, "D": 128, "ms": ms, **kw}


def test_io_bound_counts_each_tensor_once():
    act = 2 * 1024 * 16 * 128 * 2
    assert io_bytes(rec("sdpa_cudnn")) == 4 * act
    assert io_bytes(rec("sdpa_cudnn", "fwdbwd")) == 8 * act
    assert io_bytes(rec("attnzoo_scalar")) == 4 * act + 2 * 1024 * 16 * 4                  # + a scalar gate
    assert io_bytes(rec("attnzoo_vector", "fwdbwd")) == 2 * (4 * act + 2 * 1024 * 16 * 128 * 4)
    assert io_bytes(rec("attnzoo_delta")) == 4 * act + 2 * 1024 * 16 * 2                   # + beta, no gate
    one = 2 * 16 * 128 * 2
    assert io_bytes(rec("fla_gated_delta", "decode")) == 4 * one + 2 * 16 * 4 + 2 * 16 * 2 + 2 * 2 * 16 * 128 * 128 * 4
    assert io_bytes(rec("mixer:gla")) is None


def test_table_shares_of_the_ceilings():
    recs = [rec("sdpa_cudnn", tflops=400.0), rec("attnzoo_scalar", ms=2.0, tflops=None), rec("x", error="boom")]
    md = rates_markdown([r for r in recs if "error" not in r] + [{"provider": "x", "mode": "fwd", "T": 1, "B": 1}],
                        {"copy_TBps": 3.0, "bf16_matmul_TFLOPs": 800.0})
    assert "copy 3.00 TB/s, bf16 matmul 800 TFLOP/s" in md
    row = next(line for line in md.splitlines() if line.startswith("| sdpa_cudnn"))
    gbs = 4 * 2 * 1024 * 16 * 128 * 2 / 1.0 / 1e6
    assert f"| 400.0 | 50.0 | {gbs:.0f} | {100 * gbs / 3000:.1f} |" in row
    assert "| attnzoo_scalar | fwd | 1024 | 2 | - | 2.000 | - | - |" in md
    assert "| x |" not in md                            # untimed cases have no row
    assert "Ceilings" not in rates_markdown(recs[:1], None)
