"""Worker processes of a zoo sweep: a fresh process for every task, on Python 3.10 too.

A process that ran a mixer can keep GBs of fragmented heap (the chunked delta / GLA ops, before
6bd237a, leaked each step's graph: later runs in that worker ran 10-40x slower and one was
OOM-killed at 18 GB), so every run gets its own process. Python 3.11+ does this with
`ProcessPoolExecutor(max_tasks_per_child=1)`; Python 3.10 lacks that argument, so there each task
gets its own one-process executor (`ProcessPerTask`), shut down once the task is done. Either way a
worker killed mid-task fails that task's future with BrokenProcessPool.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ProcessPoolExecutor

HAS_MAX_TASKS_PER_CHILD = sys.version_info >= (3, 11)


class ProcessPerTask:
    """The part of the ProcessPoolExecutor interface the zoo uses (submit, map, shutdown), with one
    new process per task. At most as many tasks run at once as the caller submits (the zoo keeps
    `workers` in flight); an executor whose task is done is shut down (its process joined) at the
    next submit or shutdown."""

    def __init__(self, max_workers: int, mp_context=None):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers, self.mp_context = max_workers, mp_context
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
        ex = ProcessPoolExecutor(max_workers=1, mp_context=self.mp_context)
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


def fresh_process_pool(workers: int, mp_context):
    """An executor of `workers` processes that runs every task in a new process."""
    if HAS_MAX_TASKS_PER_CHILD:
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp_context, max_tasks_per_child=1)
    return ProcessPerTask(max_workers=workers, mp_context=mp_context)
