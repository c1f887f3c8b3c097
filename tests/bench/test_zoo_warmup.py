"""The zoo's time accounting (issue #6) and its fresh worker per run on Python 3.10.

On the H200 many runs ended after 1-100 steps in ~10 s: the first step (Triton JIT, several
seconds per op, and torch's warm-up) ate the run's cap. The first step is now recorded apart
(`warmup_s`), not counted by the run's cap nor by the sweep's budget, and the probe times only
the steps after it.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from attnzoo.bench.zoo import models as zoo_models
from attnzoo.bench.zoo import run as zoo_mod
from attnzoo.bench.zoo import pool as zoo_pool
from attnzoo.bench.zoo import read_results, run_zoo
from attnzoo.bench.zoo.presets import ZooPreset
from attnzoo.bench.zoo.schedule import SweepBudget, probe_step_seconds

TINY = ZooPreset(name="tiny", grid=((16, 2),), vocab_size=32, d_models=(16,), lrs=(1e-3,), num_train=128,
                 num_test=32, batch_size=8, steps=3, eval_every=3, warmup_steps=1)
SPEC = {"task": "mqar", "mixer": "softmax", "d_model": 16, "lr": 1e-3, "seq_len": 16, "num_pairs": 2,
        "vocab_size": 32}


def _slow_first_step(monkeypatch, seconds: float):
    """Every model built by the zoo sleeps `seconds` in its first forward (a JIT compilation)."""
    real = zoo_models.build_model

    def build(spec, preset):
        lm = real(spec, preset)
        forward, calls = lm.forward, []

        def slow_once(*args, **kwargs):
            if not calls:
                time.sleep(seconds)
            calls.append(1)
            return forward(*args, **kwargs)

        lm.forward = slow_once
        return lm

    monkeypatch.setattr(zoo_models, "build_model", build)


def test_a_run_whose_first_step_is_slow_still_gets_its_steps(tmp_path, monkeypatch):
    # before the fix: the 1.2 s first step used up the 1 s cap and the run stopped after 1 step
    _slow_first_step(monkeypatch, 1.2)
    preset = replace(TINY, steps=10, eval_every=10, run_seconds=1.0)
    (rec,) = run_zoo(preset=preset, out=str(tmp_path), mixers=["softmax"], quiet=True, workers=1, threads=1)
    assert rec.get("error") is None, rec
    assert rec["steps"] == 10 and rec["stopped"] == "steps", rec
    assert rec["warmup_s"] >= 1.2
    assert rec["probe_ms"] < 1000, "the probe timed the slow first step"
    assert read_results(f"{tmp_path}/results.jsonl")[0]["warmup_s"] == rec["warmup_s"]


def test_the_cap_still_cuts_the_steps_after_the_first(tmp_path, monkeypatch):
    _slow_first_step(monkeypatch, 0.0)
    real = zoo_mod.run_one

    def slow_steps(spec, preset, *, on_step=None, **kw):  # 0.2 s per step after the first
        def step(s, loss):
            if s > 1:
                time.sleep(0.2)
            if on_step is not None:
                on_step(s, loss)
        return real(spec, preset, on_step=step, **kw)

    monkeypatch.setattr(zoo_mod, "run_one", slow_steps)
    preset = replace(TINY, steps=1000, eval_every=1000, run_seconds=0.5)
    (rec,) = run_zoo(preset=preset, out=str(tmp_path), mixers=["softmax"], quiet=True, workers=1, threads=1)
    assert rec["stopped"] == "time" and 2 <= rec["steps"] <= 6, rec


def test_probe_times_the_steps_after_the_first(monkeypatch):
    _slow_first_step(monkeypatch, 1.0)
    t = probe_step_seconds(SPEC, TINY)
    assert 0 < t < 0.5


def test_the_sweep_budget_grows_by_the_warmups_shared_by_the_workers():
    budget = SweepBudget(replace(TINY, total_seconds=100.0), workers=4, t_start=time.perf_counter())
    budget.order([dict(SPEC)], [0.01], None)
    budget.add_warmup(8.0)
    budget.add_warmup(None)              # an errored run has no warm-up
    assert budget.total_seconds == pytest.approx(102.0)
    no_budget = SweepBudget(TINY, workers=1, t_start=0.0)
    no_budget.add_warmup(5.0)
    assert no_budget.total_seconds is None


# ---- a fresh worker per run on Python 3.10 (no ProcessPoolExecutor(max_tasks_per_child=...)) ----
def test_process_per_task_runs_every_task_in_a_new_process():
    import multiprocessing as mp

    pool = zoo_pool.ProcessPerTask(max_workers=2, mp_context=mp.get_context("spawn"))
    try:
        pids = [f.result() for f in [pool.submit(os.getpid) for _ in range(3)]]
        assert pool.map(abs, [-1, 2, -3]) == [1, 2, 3]
    finally:
        pool.shutdown()
    assert len(set(pids)) == 3 and os.getpid() not in pids
    with pytest.raises(ValueError, match="max_workers must be >= 1"):
        zoo_pool.ProcessPerTask(max_workers=0)


def test_zoo_on_the_python_310_path_with_a_killed_worker(tmp_path, monkeypatch):
    """The fallback forced on this interpreter: the sweep runs, and a worker killed mid-run is
    recorded as that run's error while the other run completes."""
    monkeypatch.setattr(zoo_pool, "HAS_MAX_TASKS_PER_CHILD", False)
    made = []
    real = zoo_pool.ProcessPerTask

    class Spy(real):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(zoo_pool, "ProcessPerTask", Spy)
    monkeypatch.setenv("ATTNZOO_ZOO_KILL_WORKER", "sliding_window")
    recs = run_zoo(preset=TINY, out=str(tmp_path), mixers=["softmax", "sliding_window"], quiet=True, workers=2,
                   threads=1)
    by = {r["mixer"]: r for r in recs}
    assert made, "the Python 3.10 path was not taken"
    assert len(recs) == 2 and by["softmax"]["accuracy"] is not None and by["softmax"]["steps"] == 3
    assert by["softmax"]["warmup_s"] > 0
    assert by["sliding_window"]["accuracy"] is None and "worker process died" in by["sliding_window"]["error"]
