"""The CPU ops bench at toy sizes: JSON lines (machine line first), table, reference cut-off, CLI wiring."""

from __future__ import annotations

import json

import pytest

from attnzoo.bench.ops_cpu import OPS, run_ops_bench, summary_lines
from attnzoo.cli import main


def test_bench_writes_machine_line_results_and_table(tmp_path):
    out = tmp_path / "ops.jsonl"
    echoed = []
    rows = run_ops_bench(seq_lens=(8, 16), heads=1, head_dim=4, repeats=1, ref_max_t=8, out=str(out),
                         echo=echoed.append)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["kind"] == "machine" and lines[0]["cores"] >= 1 and "torch" in lines[0]
    assert lines[1:] == rows
    # torch at both T for each op and mode; the reference only up to ref_max_t
    assert {(r["op"], r["mode"], r["impl"], r["T"]) for r in rows} == {
        (op, mode, impl, T) for op in OPS for mode in ("fwd", "fwd+bwd") for impl in ("torch", "reference")
        for T in (8, 16) if not (impl == "reference" and mode == "fwd+bwd" and T > 8)
    }
    assert all(r["seconds"] > 0 and r["cpu_seconds"] >= 0 and r["run_id"] == lines[0]["run_id"] for r in rows)
    text = "\n".join(echoed)
    assert "not run" in text and "T-scaling time(16)/time(8)" in text and "an estimate" in text


def test_summary_speedup_and_scaling_are_computed_from_rows():
    rows = [
        {"op": "gated_delta_rule", "mode": "fwd", "impl": "torch", "T": 2, "seconds": 0.5},
        {"op": "gated_delta_rule", "mode": "fwd", "impl": "torch", "T": 4, "seconds": 1.0},
        {"op": "gated_delta_rule", "mode": "fwd", "impl": "reference", "T": 2, "seconds": 10.0},
    ]
    text = "\n".join(summary_lines(rows, (2, 4), ref_max_t=2))
    assert "20.0x" in text  # measured at T=2
    assert "~20000.0 ms" in text and "~20.0x" in text  # extrapolated linearly (one point) to T=4, marked
    assert "time(4)/time(2) = 2.00" in text
    rows += [{"op": "gated_delta_rule", "mode": "fwd", "impl": "reference", "T": 1, "seconds": 2.5},
             {"op": "gated_delta_rule", "mode": "fwd", "impl": "torch", "T": 1, "seconds": 0.25}]
    text = "\n".join(summary_lines(rows, (1, 2, 4), ref_max_t=2))
    assert "~40000.0 ms" in text and "~40.0x" in text  # quadratic from T=1..2, so 4x from T=2 to 4


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="ops must be among"):
        run_ops_bench(ops=("nope",), out=str(tmp_path / "x.jsonl"))
    with pytest.raises(ValueError, match="modes must be among"):
        run_ops_bench(modes=("backward",), out=str(tmp_path / "x.jsonl"))
    assert main(["bench", "ops", "--ops", "nope", "--out", str(tmp_path / "y.jsonl")]) == 2
