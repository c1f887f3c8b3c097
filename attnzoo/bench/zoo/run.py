"""`attnzoo zoo`: sweep mixers × d_model × learning rate on a recall task, Zoology style.

Arora et al. (2023), "Zoology: Measuring and Improving Recall in Efficient Language Models",
arXiv:2312.04927: 2-layer models, the best learning rate kept per (mixer, d_model), accuracy
plotted against the bytes of state a sequence keeps at inference and against d_model.

Each finished run is appended at once to <out>/results.jsonl (one JSON object per line,
results.py), so an interrupted sweep loses nothing and `resume=True` skips the runs already
there. Ctrl-C stops the runs in flight at once (worker processes are terminated, not waited for)
and raises ZooInterrupted, whose message says to go on with --resume. At the end
<out>/leaderboard.md and <out>/zoo.png are written (report.py).

Only causal mixers can be swept (check_mixers): the models are next-token language models, and a
non-causal mixer would see the token it is asked to predict.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict

import torch

from attnzoo.bench.zoo import models
from attnzoo.bench.zoo.group import group_specs, member_specs, run_group
from attnzoo.bench.zoo.models import check_mixers, default_mixers, task_data
from attnzoo.bench.zoo.presets import ZooPreset
from attnzoo.bench.zoo.results import KEY_FIELDS, RESULTS, append_result, read_results, record_init, run_key
from attnzoo.bench.zoo.schedule import SweepBudget, contention_for, probe_step_seconds

__all__ = ["KEY_FIELDS", "RESULTS", "ZooInterrupted", "append_result", "check_mixers", "read_results", "run_key",
           "run_zoo"]


class ZooInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C (SIGINT): the finished runs are in `path`; its message says how to go on."""

    def __init__(self, path: str, finished: int):
        super().__init__(f"interrupted: {finished} finished run(s) kept in {path}; "
                         "run the same command again with --resume to continue")
        self.path, self.finished = path, finished


def plan_runs(preset: ZooPreset, mixers: list[str], task: str) -> list[dict]:
    specs = []
    for seq_len, num_pairs in preset.grid:
        for mixer in mixers:
            for d_model in preset.d_models:
                for lr in preset.lrs:
                    specs.append({"task": task, "mixer": mixer, "d_model": d_model, "lr": float(lr),
                                  "seq_len": seq_len, "num_pairs": num_pairs if task == "mqar" else 0,
                                  "vocab_size": preset.vocab_size if task == "mqar" else 256})
    return specs


def run_one(spec: dict, preset: ZooPreset, *, device: str, max_seconds: float | None,
            on_step=None, on_eval=None):
    """Train one configuration; return its record (with an 'error' field if it failed). A group spec
    (with "lrs", preset.group) returns the list of its members' records (group.py)."""
    from attnzoo.train import TrainConfig, train_lm

    if "lrs" in spec:
        return run_group(spec, preset, device=device, max_seconds=max_seconds, on_step=on_step, on_eval=on_eval)

    rec = models.base_record(spec, preset, device)
    t0 = time.perf_counter()
    try:
        data = task_data(spec, preset)
        lm = models.build_model(spec, preset)
        cfg = TrainConfig(steps=preset.steps, schedule_steps=preset.schedule_steps,
                          batch_size=preset.batch_for(spec["seq_len"]), lr=spec["lr"],
                          weight_decay=preset.weight_decay, warmup_steps=preset.warmup_steps,
                          eval_every=preset.eval_every, target_accuracy=preset.target_accuracy,
                          max_seconds=max_seconds, seed=preset.seed, device=device,
                          compile=preset.compiles(spec["mixer"]))
        if cfg.compile:
            rec["compiled"] = True
        res = train_lm(lm, train=data.train, test=data.test, config=cfg, on_step=on_step, on_eval=on_eval)
        rec.update(accuracy=round(res.accuracy, 6), loss=round(res.loss, 6), steps=res.steps, stopped=res.stopped,
                   warmup_s=round(res.warmup_seconds, 3),  # the first step (JIT, warm-up): not in the run's cap
                   state_bytes=int(lm.state_bytes(spec["seq_len"])),
                   params=sum(p.numel() for p in lm.parameters()))
        if spec["task"] == "bytes":          # a real-text LM: bits per byte is the number that matters
            rec["bits_per_byte"] = round(res.loss / math.log(2), 4)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 -- a broken mixer must not stop the sweep: record why and go on
        rec.update(accuracy=None, error=models.error_text(e), steps=0, stopped="error")
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def _check_settings(specs: list[dict]):
    """Impossible task settings (MQAR's 4·pairs > T, a passkey longer than T...) fail before any run."""
    from attnzoo.tasks import token_task

    for task, T, D, V in sorted({(s["task"], s["seq_len"], s["num_pairs"], s["vocab_size"]) for s in specs}):
        token_task(task, seq_len=T, num_train=1, num_test=1, num_pairs=max(1, D), vocab_size=V)


class _Reporter:
    """Sends a worker's progress to the main process's bars, at most every `every` seconds."""

    def __init__(self, queue, key, every: float = 0.5):
        self.queue, self.key, self.every, self.last = queue, key, every, 0.0

    def step(self, step, loss):
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.queue.put((self.key, "step", step, loss))

    def eval(self, step, loss, acc):
        self.queue.put((self.key, "eval", step, loss, acc))


def _worker(spec: dict, preset_dict: dict, device: str, max_seconds, threads, queue, key, kill_mixer=None):
    if threads:
        torch.set_num_threads(threads)
    if kill_mixer == spec["mixer"]:     # tests: a worker killed (OOM killer); ATTNZOO_ZOO_KILL_WORKER in the parent
        os._exit(1)
    rep = _Reporter(queue, key)
    queue.put((key, "start"))
    return run_one(spec, ZooPreset(**preset_dict), device=device, max_seconds=max_seconds, on_step=rep.step,
                   on_eval=rep.eval)


def default_workers(device: str, preset: ZooPreset) -> int:
    """Runs at once: the preset's on CUDA; on a CPU one single-threaded run per core (up to 8),
    since a tiny model uses one core poorly and two runs on two cores beat one run on both."""
    if torch.device(device).type == "cuda":
        return preset.workers
    return max(1, min(8, os.cpu_count() or 1))


def run_zoo(*, preset: ZooPreset, out: str, mixers: list[str] | None = None, task: str = "mqar",
            device: str = "cpu", resume: bool = False, max_runs: int | None = None, workers: int | None = None,
            threads: int | None = None, quiet: bool = False, on_step=None) -> list[dict]:
    """Run the sweep; return every record in <out>/results.jsonl.

    max_runs stops after that many new runs (what a kill does, for tests). on_step(step, loss) is
    passed to every run (in-process runs only, workers=1). Each model's training step is timed
    once (the probe); the runs go longest first; every run gets the same number of steps,
    preset.steps or fewer if the probes say that would not fit in total_seconds (early stop at
    the target), except that with preset.time_cap_ratio a run dearer than that many times the
    median run gets the steps that time buys (schedule.capped_steps); a wall-clock cap, the unused
    budget shared by the unfinished runs, cuts a run only when the machine turns out slower than
    probed (schedule.py).

    Raises ValueError before any run for unknown or non-causal mixers, impossible task settings
    and workers/threads < 1; ZooInterrupted (a KeyboardInterrupt) on Ctrl-C, once the runs in
    flight are stopped: the finished ones stay in results.jsonl for resume=True."""
    from attnzoo.bench.zoo.progress import ZooProgress
    from attnzoo.bench.zoo.report import write_report

    mixers = list(mixers) if mixers is not None else default_mixers(preset)
    check_mixers(mixers)           # unknown names, non-causal mixers fail here, before any run
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1 (or None for the default), got {value!r}")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, RESULTS)
    if not resume and os.path.exists(path):
        os.replace(path, path + ".previous")
    on_record = read_results(path)
    other = sorted({record_init(r) for r in on_record} - {preset.init})
    if other:                        # the run key has no init: a resume would skip runs of another init
        raise ValueError(f"{path} holds runs with init {', '.join(map(repr, other))}; this sweep uses init "
                         f"{preset.init!r}: give it another --out (one init per results file)")
    done = {run_key(r) for r in on_record}
    t_start = time.perf_counter()
    pending = [s for s in plan_runs(preset, mixers, task) if run_key(s) not in done]
    _check_settings(pending)
    if preset.group:                 # one unit of work per (mixer, d_model, T): its lrs as one group
        pending = group_specs(pending)
    workers = max(1, min(workers or default_workers(device, preset), max(1, len(pending))))

    budget = SweepBudget(preset, workers, t_start, contention=contention_for(device, workers))

    n_runs = len(pending) if max_runs is None else min(max_runs, len(pending))
    try:
        with ZooProgress(total=n_runs, quiet=quiet) as prog:
            if workers == 1:
                _run_in_process(pending, preset, device, threads, path, prog, budget, max_runs, on_step)
            else:
                _run_parallel(pending, preset, device, workers, threads, path, prog, budget, max_runs)
    except KeyboardInterrupt:
        raise ZooInterrupted(path, len(read_results(path, report=False))) from None
    records = read_results(path, report=False)       # foreign lines were reported when the sweep began
    write_report(records, out, quiet=quiet)
    return records


def _run_in_process(pending, preset, device, threads, path, prog, budget, max_runs, on_step):
    if threads:
        torch.set_num_threads(threads)
    pending = budget.order(pending, [probe_step_seconds(s, preset, device) for s in pending], max_runs)
    prog.note(budget.steps_note())
    preset = budget.preset                  # its steps: what fits the budget, the same for every run
    for i, spec in enumerate(pending):
        per_run = budget.start(i)
        run_preset = budget.preset_for(i)       # fewer steps for a run above the preset's time cap
        prog.start_run(i, spec, run_preset.steps)

        def step_cb(step, loss, i=i):
            prog.step(i, step, loss)
            if on_step is not None:
                on_step(step, loss)

        rec = run_one(spec, run_preset, device=device, max_seconds=per_run, on_step=step_cb,
                      on_eval=lambda s, lo, a, i=i: prog.eval(i, s, lo, a))
        budget.finish(i)
        _append(path, rec, budget, i, prog)


def _run_parallel(pending, preset, device, workers, threads, path, prog, budget, max_runs):
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, wait

    from concurrent.futures.process import BrokenProcessPool

    from attnzoo.bench.zoo import pool as zoo_pool

    ctx = zoo_pool.worker_context()
    threads = threads or max(1, (os.cpu_count() or 1) // workers)     # no oversubscription of the cores
    # A fresh process per task (forked from a server that imported torch and the zoo once, pool.py; a
    # spawned one paid ~2 s, 5 s on a loaded CPU, of imports per run): a mixer that leaks or bloats
    # memory (the chunked GLA / delta ops leaked each step's graph until 6bd237a: later runs in that
    # worker ran 10-40x slower and one was OOM-killed at 18 GB) then cannot slow down or kill the runs
    # after it. On Python 3.10 too (pool.py).

    def new_pool():
        return zoo_pool.fresh_process_pool(workers, ctx, initializer=zoo_pool.ignore_sigint)

    pool, running = new_pool(), {}
    with ctx.Manager() as manager:
        try:
            events = manager.Queue()
            shares = [pending[w::workers] for w in range(workers)]
            probed = list(pool.map(_probe_many, shares, [preset] * workers, [device] * workers, [threads] * workers))
            costs = [0.0] * len(pending)
            for w, c in enumerate(probed):
                costs[w::workers] = c
            pending[:] = budget.order(pending, costs, max_runs)
            prog.note(budget.steps_note())
            preset = budget.preset                      # its steps: what fits the budget, the same for every run
            todo = list(enumerate(pending))
            broken: dict[int, int] = {}
            pool_broken = False

            def drain():
                while True:
                    try:
                        ev = events.get_nowait()
                    except queue_mod.Empty:
                        return
                    key = ev[0]
                    if ev[1] == "start":
                        prog.start_run(key, pending[key], budget.preset_for(key).steps)
                    elif ev[1] == "step":
                        prog.step(key, ev[2], ev[3])
                    else:
                        prog.eval(key, ev[2], ev[3], ev[4])

            while todo or running:
                while todo and len(running) < workers and not pool_broken:
                    if (todo[0][0] in broken and running) or any(running[f] in broken for f in running):
                        break                   # a run retried after a dead worker runs alone
                    key, spec = todo.pop(0)
                    per_run = budget.start(key)
                    fut = pool.submit(_worker, spec, asdict(budget.preset_for(key)), device, per_run, threads,
                                      events, key, os.environ.get("ATTNZOO_ZOO_KILL_WORKER"))
                    running[fut] = key
                finished, _ = wait(list(running), timeout=0.25, return_when=FIRST_COMPLETED)
                drain()
                for fut in finished:
                    key = running.pop(fut)
                    budget.finish(key)
                    try:
                        rec = fut.result()
                    except BrokenProcessPool:
                        pool_broken = True
                        # a worker died (killed, e.g. out of memory): every run in flight fails with
                        # this; each is retried alone in a new pool, and recorded as an error if it
                        # breaks the pool again
                        broken[key] = broken.get(key, 0) + 1
                        if broken[key] < 2:
                            todo.insert(0, (key, pending[key]))
                            continue
                        rec = [dict(models.base_record(m, budget.preset_for(key), device), accuracy=None,
                                    steps=0, stopped="error", seconds=0.0,
                                    error="BrokenProcessPool: the worker process died (killed, out of memory?)")
                               for m in member_specs(pending[key])]
                    _append(path, rec, budget, key, prog)
                if pool_broken and not running:
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool, pool_broken = new_pool(), False
        except BaseException:
            for fut, key in running.items():    # finished before the interrupt, not yet written
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    _append(path, fut.result(), budget, key, None)
            zoo_pool.stop_workers(pool)         # Ctrl-C (or a bug): the runs in flight are stopped, not waited for
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _append(path: str, rec, budget, key: int, prog):
    """Write a unit's record(s) at once (a group gives one per member) and show the best member."""
    recs = rec if isinstance(rec, list) else [rec]
    budget.add_warmup(recs[0].get("warmup_s"))
    for r in recs:
        append_result(path, dict(r, **budget.record_fields(key)))
    if prog is not None:
        prog.finish_run(key, max(recs, key=lambda r: -1.0 if r.get("accuracy") is None else r["accuracy"]))


def _probe_many(specs: list[dict], preset: ZooPreset, device: str, threads) -> list[float]:
    """Probe step times of several runs in one worker (one process start for all of them). On a CPU
    twice, the second pass in reverse order, keeping each run's faster probe: a load that rises or
    falls while the probes run (other jobs on a shared machine) then does not favour the runs probed
    first, and the time cap's plan rests on these ratios (schedule.capped_steps)."""
    first = [probe_step_seconds(s, preset, device, threads) for s in specs]
    if torch.device(device).type != "cpu":
        return first
    second = [probe_step_seconds(s, preset, device, threads) for s in reversed(specs)][::-1]
    return [min(a, b) for a, b in zip(first, second)]
