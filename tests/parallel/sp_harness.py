"""Run a function on `world` gloo processes (CPU) and collect what each rank returned or raised.

    results = run_ranks(3, fn, arg, tmp=tmp_path)     # fn(rank, world, arg) runs in every process
    results[r] == {"ok": value} or {"error": "SequenceParallelError", "message": "..."}

Processes are forked from a forkserver that has imported torch and attnzoo once (a fresh interpreter
per rank would import torch again: ~3 s each on a loaded 2-core machine), and rendezvous through a
file (no ports). A rank that
is still alive after `timeout` seconds is killed and reported as {"error": "hung"}: a test can then
assert that no rank hung.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world, init_file, out_dir, fn, args, pg_timeout):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=pg_timeout))
    try:
        res = {"ok": fn(rank, world, *args)}
    except BaseException as e:  # reported to the test, which decides
        res = {"error": type(e).__name__, "message": str(e), "trace": traceback.format_exc()}
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    if "ok" in res:
        dist.destroy_process_group()


def run_ranks(world: int, fn, *args, tmp, timeout: float = 120.0, pg_timeout: float = 60.0):
    out_dir = str(tmp)
    init_file = os.path.join(out_dir, f"init_{world}_{time.monotonic_ns()}")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "attnzoo.parallel", "attnzoo.mixers"])
    procs = [ctx.Process(target=_entry, args=(r, world, init_file, out_dir, fn, args, pg_timeout))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    results = []
    for r, p in enumerate(procs):
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
        path = os.path.join(out_dir, f"rank{r}.pt")
        results.append(torch.load(path, weights_only=False) if os.path.exists(path) else {"error": "hung"})
    return results


def values(results):
    """The ranks' return values; fails with the first rank's error and traceback otherwise."""
    for r, res in enumerate(results):
        if "ok" not in res:
            raise AssertionError(f"rank {r}: {res.get('error')}: {res.get('message', '')}\n{res.get('trace', '')}")
    return [res["ok"] for res in results]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
