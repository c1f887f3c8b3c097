"""Worker processes of a zoo sweep: a fresh process for every task, on Python 3.10 too.

A process that ran a mixer can keep GBs of fragmented heap (the chunked delta / GLA ops, before
6bd237a, leaked each step's graph: later runs in that worker ran 10-40x slower and one was
OOM-killed at 18 GB), so every run gets its own process. Python 3.11+ does this with
`ProcessPoolExecutor(max_tasks_per_child=1)`; Python 3.10 lacks that argument, so there each task
gets its own one-process executor (`ProcessPerTask`), shut down once the task is done. Either way a
worker killed mid-task fails that task's future with BrokenProcessPool.

Ctrl-C: a terminal sends SIGINT to the whole process group; the workers ignore it (`ignore_sigint`,
their initializer) and the main process stops them at once (`stop_workers`: terminated, not waited
for to the end of their runs), whether the signal reached them too or the main process alone.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor

HAS_MAX_TASKS_PER_CHILD = sys.version_info >= (3, 11)


class ProcessPerTask:
    """The part of the ProcessPoolExecutor interface the zoo uses (submit, map, shutdown), with one
    new process per task. At most as many tasks run at once as the caller submits (the zoo keeps
    `workers` in flight); an executor whose task is done is shut down (its process joined) at the
    next submit or shutdown."""

    def __init__(self, max_workers: int, mp_context=None, initializer=None):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers, self.mp_context, self.initializer = max_workers, mp_context, initializer
        self._tasks: list[tuple[ProcessPoolExecutor, Future]] = []

    def _reap(self):
        alive = []
        for ex, fut in self._tasks:
            if fut.done():
                ex.shutdown(wait=True)
            else:
                alive.append((ex, fut))
        self._tasks = alive

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self._reap()
        ex = ProcessPoolExecutor(max_workers=1, mp_context=self.mp_context, initializer=self.initializer)
        fut = ex.submit(fn, *args, **kwargs)
        self._tasks.append((ex, fut))
        return fut

    def map(self, fn, *iterables) -> list:
        """Results in order; max_workers tasks at a time, each in its own process."""
        items, out = list(zip(*iterables)), []
        for s in range(0, len(items), self.max_workers):
            futures = [self.submit(fn, *args) for args in items[s:s + self.max_workers]]
            out.extend(f.result() for f in futures)
        return out

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False):
        for ex, _ in self._tasks:
            ex.shutdown(wait=wait, cancel_futures=cancel_futures)
        self._tasks = []

    def executors(self) -> list[ProcessPoolExecutor]:
        return [ex for ex, _ in self._tasks]


# What the fork server imports once, so that a fresh worker does not: torch (~0.4 s), torch._dynamo (which
# the optimizers import on first use: ~2 s, 5 s on the loaded 2-core CPU) and the zoo.
WORKER_PRELOAD = ("torch", "torch._dynamo", "attnzoo.bench.zoo.run")


def worker_context():
    """The multiprocessing context of the zoo's workers: "forkserver" with WORKER_PRELOAD where the
    platform has it (each worker forked from a server that imported torch once, no CUDA initialised
    there), else "spawn". A worker reads nothing of the parent's environment set after the server
    started: what it needs comes as arguments."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))
        return ctx
    return mp.get_context("spawn")


def fresh_process_pool(workers: int, mp_context, initializer=None):
    """An executor of `workers` processes that runs every task in a new process (each process runs
    `initializer()` first)."""
    if HAS_MAX_TASKS_PER_CHILD:
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp_context, max_tasks_per_child=1,
                                   initializer=initializer)
    return ProcessPerTask(max_workers=workers, mp_context=mp_context, initializer=initializer)


def ignore_sigint():
    """Initializer of a worker: Ctrl-C is the main process's to handle (it stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_workers(pool, join_seconds: float = 5.0):
    """Stop `pool` now: no new task starts and every worker process is terminated (its task's future
    fails with BrokenProcessPool). A second Ctrl-C meanwhile is ignored, so the stop finishes."""
    executors = pool.executors() if isinstance(pool, ProcessPerTask) else [pool]
    with _sigint_ignored():
        # ProcessPoolExecutor's own table of its processes (Python 3.14's terminate_workers reads it too),
        # copied: shutdown clears it
        procs = [p for ex in executors for p in list((getattr(ex, "_processes", None) or {}).values())]
        for p in procs:
            with contextlib.suppress(ValueError, ProcessLookupError):        # already closed / gone
                if p.is_alive():
                    p.terminate()
        for ex in executors:
            # The executor's management thread sees the terminated workers, fails their futures and ends;
            # wait for it before shutdown clears the process table, which that thread reads when a worker
            # exits normally (max_tasks_per_child: a run that has just finished), else it dies on None in a
            # traceback on stderr (seen once in six interrupted sweeps on a loaded CPU).
            thread = getattr(ex, "_executor_manager_thread", None)
            if thread is not None:
                thread.join(join_seconds)
            ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            with contextlib.suppress(ValueError, AssertionError):
                p.join(join_seconds)


@contextlib.contextmanager
def _sigint_ignored():
    unset = object()
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:              # not the main thread: signals are not ours to set
        old = unset
    try:
        yield
    finally:
        if old is not unset:
            signal.signal(signal.SIGINT, old if old is not None else signal.SIG_DFL)
