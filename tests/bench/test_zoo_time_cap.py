"""The zoo's time cap (issue #23 part 4): equal steps, except that a run whose steps would take more
than `time_cap_ratio` times the median run's gets the steps that time buys, planned from the probes
(so the plan does not depend on how loaded the machine is), and the leaderboard says so."""

import time
from dataclasses import replace

import pytest

from attnzoo.bench.zoo import read_results, run_zoo
from attnzoo.bench.zoo import run as zoo_mod
from attnzoo.bench.zoo.presets import ZooPreset, get_preset
from attnzoo.bench.zoo.report import leaderboard_markdown
from attnzoo.bench.zoo.schedule import CONTENTION, STRETCH_MARGIN, SweepBudget, capped_steps

TINY = ZooPreset(name="tiny", grid=((16, 2),), vocab_size=32, d_models=(16,), lrs=(1e-3,), num_train=128,
                 num_test=32, batch_size=8, steps=6, eval_every=6, warmup_steps=1)


def test_capped_steps_buys_what_the_cap_allows_and_leaves_the_others_alone():
    # lower median of [1, 1, 2, 10] is 1: the cap is 2 x 1 x 100 = 200 s; 10 s/step buys 20 steps
    assert capped_steps([1.0, 1.0, 2.0, 10.0], 100, 2.0) == [100, 100, 100, 20]
    assert capped_steps([1.0, 1.0, 2.0, 10.0], 100, None) == [100] * 4
    assert capped_steps([1.0, 1000.0, 1.0], 10, 1.0) == [10, 1, 10]          # at least one step
    assert capped_steps([], 10, 2.0) == []
    # the same probes scaled by a load factor give the same plan
    assert capped_steps([3.0, 3.0, 6.0, 30.0], 100, 2.0) == capped_steps([1.0, 1.0, 2.0, 10.0], 100, 2.0)
    with pytest.raises(ValueError, match="time cap ratio must be > 0"):
        capped_steps([1.0], 10, 0.0)


def test_the_fit_counts_capped_runs_at_the_cap():
    preset = replace(TINY, steps=10_000, total_seconds=10.0, time_cap_ratio=2.0)
    b = SweepBudget(preset, 1, time.perf_counter())
    specs = [{"mixer": m} for m in "abc"]
    b.order(specs, [0.001, 0.001, 1.0], None)
    # the dear run costs 2 x 0.001 s per sweep step, not 1 s: ~10 / (0.004 x CONTENTION) = 2000 steps
    assert 0.9 * 10 / (0.004 * CONTENTION) < b.preset.steps <= 10 / (0.004 * CONTENTION)
    n = b.preset.steps
    assert abs(b.run_steps[0] - 0.002 * n) < 1 and b.run_steps[1:] == [n, n]   # longest first: the dear run leads
    assert b.preset_for(0).steps == b.run_steps[0] and b.preset_for(0).min_steps <= b.run_steps[0]
    assert b.preset_for(1) is b.preset
    assert b.record_fields(0) == {"probe_ms": 1000.0, "sweep_steps": n, "time_cap_ratio": 2.0}
    assert "1 run(s) above 2x the median run's time" in b.steps_note()
    uncapped = SweepBudget(replace(preset, time_cap_ratio=None), 1, time.perf_counter())
    uncapped.order([{"mixer": m} for m in "abc"], [0.001, 0.001, 1.0], None)
    assert uncapped.preset.steps < n / 100 and "sweep_steps" in uncapped.record_fields(0)


def test_a_floor_above_the_fit_stretches_the_budget_to_the_capped_runs():
    preset = replace(TINY, steps=500, min_steps=500, total_seconds=1.0, time_cap_ratio=2.0)
    b = SweepBudget(preset, 2, time.perf_counter())
    b.order([{"mixer": m} for m in "abc"], [1 / 64, 1 / 64, 1 / 8], None)     # binary fractions: exact steps
    assert b.preset.steps == 500 and b.run_steps == [125, 500, 500]
    assert b.planned_seconds == pytest.approx((125 / 8 + 2 * 500 / 64) * CONTENTION / 2, rel=0.01)
    assert b.total_seconds == pytest.approx(STRETCH_MARGIN * b.planned_seconds, rel=0.01)   # caps: a safety net


def test_sweep_gives_the_dear_run_fewer_steps_and_the_leaderboard_marks_it(tmp_path, monkeypatch):
    cost = {"softmax": 0.001, "sliding_window": 0.001, "linear": 0.01}
    monkeypatch.setattr(zoo_mod, "probe_step_seconds", lambda spec, preset, device: cost[spec["mixer"]])
    recs = run_zoo(preset=replace(TINY, time_cap_ratio=2.0), out=str(tmp_path), mixers=list(cost), quiet=True,
                   workers=1)
    by = {r["mixer"]: r for r in recs}
    assert by["linear"]["max_steps"] == by["linear"]["steps"] == 1          # 2 x 0.001 x 6 / 0.01 = 1.2
    assert all(by[m]["max_steps"] == by[m]["steps"] == 6 for m in ("softmax", "sliding_window"))
    assert {r["sweep_steps"] for r in recs} == {6} and {r["time_cap_ratio"] for r in recs} == {2.0}
    assert read_results(str(tmp_path / "results.jsonl")) == recs
    md = leaderboard_markdown(recs)
    assert "equal steps up to a time cap" in md and "up to 6 steps" in md and "more than 2x the median" in md
    assert "(0.001, 1‡) |" in md and "(0.001, 6) |" in md


def test_capped_runs_in_worker_processes_train_their_own_steps(tmp_path):
    # a ratio far below 1 caps every run (the real probes differ from run to run) to one step
    recs = run_zoo(preset=replace(TINY, steps=3, eval_every=3, time_cap_ratio=1e-9), out=str(tmp_path),
                   mixers=["softmax", "linear"], quiet=True, workers=2, threads=1)
    assert len(recs) == 2 and all(r["steps"] == r["max_steps"] == 1 and r["sweep_steps"] == 3 for r in recs)


def test_leaderboard_of_an_uncapped_sweep_keeps_the_equal_steps_sentence():
    base = {"task": "mqar", "d_model": 16, "seq_len": 16, "num_pairs": 2, "vocab_size": 32, "lr": 1e-3,
            "state_bytes": 100, "machine": "x", "max_steps": 300, "target_accuracy": 0.99, "seconds": 5.0,
            "mixer": "a", "accuracy": 0.5, "steps": 300, "stopped": "steps"}
    md = leaderboard_markdown([base])
    assert "Budget: equal steps. Every run trains up to 300 steps" in md and "‡" not in md


def test_quick_preset_recipe():
    """The quick preset's choices (measured; see its docstring): a small MQAR setting, RoPE attention
    at one head, no MLP, the time cap on, and a fixed step count that does not shrink with the load."""
    q = get_preset("quick")
    assert q.grid == ((32, 4),) and q.vocab_size == 64 and q.batch_size == 64 and q.lrs == (3e-3,)
    assert q.time_cap_ratio == 0.5 and q.steps == q.min_steps == 1000
    assert q.positions == () and q.mixer_kwargs["softmax"]["n_heads"] == 1
    assert get_preset("paper").time_cap_ratio is None and get_preset("standard").time_cap_ratio is None
    # an explicit step count is what every run takes: the cap is off unless given too
    assert get_preset("quick", steps=50).time_cap_ratio is None
    assert get_preset("quick", steps=50, time_cap_ratio=0.7).time_cap_ratio == 0.7


def test_cpu_probes_run_twice_in_opposite_orders_and_keep_the_faster(monkeypatch):
    calls = []

    def drifting(spec, preset, device, threads):       # the machine gets slower with every probe
        calls.append(spec["mixer"])
        return {"a": 1.0, "b": 2.0, "c": 3.0}[spec["mixer"]] * len(calls)
    monkeypatch.setattr(zoo_mod, "probe_step_seconds", drifting)
    specs = [{"mixer": m} for m in "abc"]
    assert zoo_mod._probe_many(specs, TINY, "cpu", 1) == [1.0, 4.0, 9.0]    # min(1, 6), min(4, 10), min(9, 12)
    assert calls == ["a", "b", "c", "c", "b", "a"]
