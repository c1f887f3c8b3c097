import math
from dataclasses import replace

import pytest

from attnzoo.bench.zoo import run as zoo_mod
from attnzoo.bench.zoo import build_model, read_results, run_zoo
from attnzoo.bench.zoo.presets import QUICK_MIXER_KWARGS, ZooPreset, get_preset
from attnzoo.bench.zoo.report import leaderboard_markdown
from attnzoo.bench.zoo.schedule import CONTENTION, budget_costs, longest_first, probe_step_seconds, run_cap
from attnzoo.registry import list_mixers

TINY = ZooPreset(name="tiny", grid=((16, 2),), vocab_size=32, d_models=(16,), lrs=(1e-3,), num_train=128,
                 num_test=32, batch_size=8, steps=3, eval_every=3, warmup_steps=1)
INF = float("inf")


def test_longest_first_is_stable_and_puts_failed_probes_last():
    specs = [{"m": c} for c in "abcde"]
    out = longest_first(specs, [1.0, INF, 3.0, 1.0, 2.0])
    assert [s["m"] for s in out] == ["c", "e", "a", "d", "b"]
    with pytest.raises(ValueError, match="one cost per run"):
        longest_first(specs, [1.0])
    assert budget_costs([1.0, INF, 3.0]) == [1.0, 3.0, 3.0] and budget_costs([INF]) == [1.0]


def test_run_cap_shares_the_time_left_by_expected_cost():
    kw = dict(total_seconds=100.0, run_seconds=None, workers=1, initial_cost=4.0)
    assert run_cap(elapsed=0.0, cost=3.0, queued_cost=1.0, **kw) == pytest.approx(75.0)
    # the first run stopped early at 10 s: the second gets all that is left, not its 25 s share
    assert run_cap(elapsed=10.0, cost=1.0, queued_cost=0.0, **kw) == pytest.approx(90.0)
    # two workers, one run still expected to need 30 s: 2 * 60 * 1 / (1 + 0 + 30)
    two = dict(kw, workers=2, initial_cost=62.0)
    assert run_cap(elapsed=40.0, cost=1.0, queued_cost=0.0, running_left=30.0, **two) == pytest.approx(120 / 31)
    # past the budget: the floor, a quarter of the run's first share
    assert run_cap(elapsed=150.0, cost=1.0, queued_cost=3.0, **kw) == pytest.approx(0.25 * 100 * 1 / 4)
    assert run_cap(elapsed=0.0, cost=3.0, queued_cost=1.0, **dict(kw, run_seconds=20.0)) == 20.0
    assert run_cap(elapsed=0.0, cost=3.0, queued_cost=1.0, **dict(kw, total_seconds=None, run_seconds=7.0)) == 7.0
    with pytest.raises(ValueError, match="workers >= 1"):
        run_cap(elapsed=0.0, cost=1.0, queued_cost=0.0, **dict(kw, workers=0))


def test_sweep_runs_longest_first_and_records_its_budget(tmp_path, monkeypatch):
    cost = {"softmax": 0.01, "sliding_window": 0.05, "linear": 0.03}
    monkeypatch.setattr(zoo_mod, "probe_step_seconds", lambda spec, preset, device: cost[spec["mixer"]])
    recs = run_zoo(preset=TINY, out=str(tmp_path), mixers=list(cost), quiet=True, workers=1)
    assert [r["mixer"] for r in recs] == ["sliding_window", "linear", "softmax"]
    assert all(r["max_steps"] == 3 and r["target_accuracy"] == 0.99 and r["steps"] == 3 for r in recs)
    assert "Budget: equal steps. Every run trains up to 3 steps" in leaderboard_markdown(recs)


def test_steps_shrink_to_fit_the_budget_equally_for_all_runs(tmp_path, monkeypatch):
    cost = {"softmax": 0.002, "sliding_window": 0.004}
    monkeypatch.setattr(zoo_mod, "probe_step_seconds", lambda spec, preset, device: cost[spec["mixer"]])
    fit = replace(TINY, steps=100_000, eval_every=1000, total_seconds=0.8)
    recs = run_zoo(preset=fit, out=str(tmp_path), mixers=list(cost), quiet=True, workers=1)
    # 0.8 s / (0.006 s * CONTENTION) ~ 121 steps each, not 100_000 and not a time cut
    steps = {r["max_steps"] for r in recs}
    assert len(steps) == 1 and 0.8 * 0.8 / (0.006 * CONTENTION) < steps.pop() <= 0.8 / (0.006 * CONTENTION)
    assert all(r["probe_ms"] == 1e3 * cost[r["mixer"]] for r in recs)
    assert read_results(str(tmp_path / "results.jsonl")) == recs
    # a floor: min_steps are kept and the budget stretched to them (no run cut by time)
    monkeypatch.setattr(zoo_mod, "probe_step_seconds", lambda spec, preset, device: 500 * cost[spec["mixer"]])
    recs = run_zoo(preset=replace(fit, min_steps=150, total_seconds=0.05), out=str(tmp_path / "floor"),
                   mixers=list(cost), quiet=True, workers=1)
    assert all(r["max_steps"] == 150 and r["steps"] == 150 and r["stopped"] == "steps" for r in recs)


def test_leaderboard_marks_runs_cut_by_the_wall_clock_cap():
    base = {"task": "mqar", "d_model": 16, "seq_len": 16, "num_pairs": 2, "vocab_size": 32, "lr": 1e-3,
            "state_bytes": 100, "machine": "x", "max_steps": 300, "target_accuracy": 0.99, "seconds": 5.0}
    recs = [dict(base, mixer="fast", accuracy=0.99, steps=120, stopped="target"),
            dict(base, mixer="slow", accuracy=0.4, steps=170, stopped="time")]
    md = leaderboard_markdown(recs)
    assert "0.990 (0.001, 120) |" in md and "0.400 (0.001, 170†) |" in md and "lower bound" in md
    assert "up to 300 steps" in md and "reaches 0.99" in md


def test_probe_times_a_step_and_reports_a_broken_model_as_inf():
    spec = {"task": "mqar", "mixer": "softmax", "d_model": 16, "lr": 1e-3, "seq_len": 16, "num_pairs": 2,
            "vocab_size": 32}
    t = probe_step_seconds(spec, TINY)
    assert 0 < t < 5
    broken = replace(TINY, mixer_kwargs={"softmax": {"n_heads": 3}})        # 16 is not a multiple of 3
    assert math.isinf(probe_step_seconds(spec, broken))


def test_preset_mixer_kwargs_override_the_card_example():
    spec = {"mixer": "softmax", "d_model": 16, "vocab_size": 32, "seq_len": 16}
    lm = build_model(spec, replace(TINY, mixer_kwargs={"softmax": {"n_heads": 1, "n_kv_heads": 1}}))
    assert lm.blocks[0].mixer.n_heads == 1
    assert build_model(spec, TINY).blocks[0].mixer.n_heads == 4                  # the card's example_kwargs


def test_quick_preset_overrides_name_registered_mixers_and_build():
    quick = get_preset("quick")
    assert set(QUICK_MIXER_KWARGS) <= set(list_mixers())
    for name in QUICK_MIXER_KWARGS:
        lm = build_model({"mixer": name, "d_model": quick.d_models[0], "vocab_size": quick.vocab_size,
                          "seq_len": quick.grid[0][0]}, quick)
        assert lm.state_bytes(quick.grid[0][0]) > 0


def test_a_killed_worker_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNZOO_ZOO_KILL_WORKER", "sliding_window")      # the worker dies as if OOM-killed
    recs = run_zoo(preset=TINY, out=str(tmp_path), mixers=["softmax", "sliding_window"], quiet=True, workers=2,
                   threads=1)
    by = {r["mixer"]: r for r in recs}
    assert len(recs) == 2 and by["softmax"]["accuracy"] is not None and by["softmax"]["steps"] == 3
    assert by["sliding_window"]["accuracy"] is None and "worker process died" in by["sliding_window"]["error"]


def test_shared_gpu_runs_plan_fewer_steps_than_cpu_runs():
    """Runs sharing one GPU are planned with the step model measured there (max(2.5 x probe, a floor
    per run sharing the GPU)), CPU runs and a single GPU run with the CPU's factor 1.25: the same
    probes fit fewer steps in the same budget, and a cheap run is planned at the floor."""
    import time

    from attnzoo.bench.zoo.schedule import (
        CUDA_SHARED_FLOOR_PER_RUN, CUDA_SHARED_SLOPE, StepModel, SweepBudget, contention_for,
    )

    assert contention_for("cuda", 8) == StepModel(CUDA_SHARED_SLOPE, 8 * CUDA_SHARED_FLOOR_PER_RUN)
    assert contention_for("cuda:0", 2) == StepModel(CUDA_SHARED_SLOPE, 2 * CUDA_SHARED_FLOOR_PER_RUN)
    assert contention_for("cuda", 1) == contention_for("cpu", 8) == StepModel(CONTENTION)
    gpu = contention_for("cuda", 8)
    assert gpu(0.007) == 8 * CUDA_SHARED_FLOOR_PER_RUN and gpu(0.04) == 0.04 * CUDA_SHARED_SLOPE
    preset = replace(get_preset("standard"), steps=10_000, min_steps=1, total_seconds=100.0)
    specs = [{"mixer": f"m{i}"} for i in range(8)]
    planned = {}
    for dev in ("cpu", "cuda"):
        b = SweepBudget(preset, 8, time.perf_counter(), contention=contention_for(dev, 8))
        b.order(list(specs), [0.01] * 8, None)
        planned[dev] = b.preset.steps
    assert planned["cuda"] < planned["cpu"]
    assert math.isclose(planned["cpu"] / planned["cuda"], gpu(0.01) / (0.01 * CONTENTION), rel_tol=0.02)
    b = SweepBudget(preset, 8, time.perf_counter(), contention=gpu)  # cheap and dear runs in one sweep
    b.order([{"mixer": "cheap"}, {"mixer": "dear"}], [0.002, 0.05], None)
    assert math.isclose(b.expected[1] / b.expected[0], 8 * CUDA_SHARED_FLOOR_PER_RUN / (0.05 * CUDA_SHARED_SLOPE))


def test_leaderboard_state_column_names_the_width_when_a_mixer_lacks_the_widest():
    """The state column is for the widest d_model; a mixer not run there shows its own widest run's state,
    labelled with that width (never another width's state under the column's name)."""
    base = {"task": "mqar", "seq_len": 16, "num_pairs": 2, "vocab_size": 32, "lr": 1e-3, "machine": "x",
            "max_steps": 300, "target_accuracy": 0.99, "seconds": 5.0, "steps": 300, "stopped": "steps"}
    recs = [dict(base, mixer="a", d_model=16, accuracy=0.5, state_bytes=1024),
            dict(base, mixer="a", d_model=32, accuracy=0.6, state_bytes=2048),
            dict(base, mixer="b", d_model=16, accuracy=0.4, state_bytes=4096)]
    md = leaderboard_markdown(recs)
    row = {line.split("`")[1]: line for line in md.splitlines() if line.startswith("| ") and "`" in line}
    assert "state @T=16, d=32" in md
    assert "| 2.0 KiB |" in row["a"] and "| 4.0 KiB (d=16) |" in row["b"]
