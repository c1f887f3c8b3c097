"""bench/compile_bench.py: eager vs compiled zoo steps (the records, the table, the budget), on a tiny preset
with the aot_eager backend (no code generation: seconds, not minutes)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from attnzoo.bench.compile_bench import bench_mixer, run_compile_bench
from attnzoo.bench.zoo.presets import get_preset


def tiny():
    return replace(get_preset("quick"), grid=((8, 2),), d_models=(16,), batch_size=4, batch_sizes=None)


def test_compiled_step_matches_eager_and_is_timed():
    rec = bench_mixer("gla", preset=tiny(), steps=2, rounds=2, backend="aot_eager")
    assert "error" not in rec, rec
    assert rec["seq_len"] == 8 and rec["d_model"] == 16 and rec["batch"] == 4 and rec["backend"] == "aot_eager"
    assert rec["first_loss_rel_diff"] < 1e-5
    for k in ("eager_ms", "compiled_ms", "eager_cpu_ms", "compiled_cpu_ms"):
        assert rec[k] > 0
    assert rec["speedup"] == pytest.approx(rec["eager_ms"] / rec["compiled_ms"], rel=1e-2)


def test_run_writes_jsonl_and_table_and_respects_the_budget(tmp_path):
    recs = run_compile_bench(["softmax", "gla"], preset=tiny(), steps=1, rounds=1, out=str(tmp_path),
                             backend="aot_eager", budget_s=0)
    assert "error" not in recs[0] and recs[1]["error"].startswith("skipped")  # the first always runs
    lines = [json.loads(x) for x in (tmp_path / "compile_cpu.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "machine" and "triton" in lines[0] and [r["mixer"] for r in lines[1:]] == ["softmax",
                                                                                                         "gla"]
    md = (tmp_path / "compile_cpu.md").read_text()
    assert "| `softmax` |" in md and "skipped" in md


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps and rounds"):
        bench_mixer("gla", preset=tiny(), steps=0)
