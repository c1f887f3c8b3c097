"""Timing of a callable for the benches and the scripts in benchmarks/: one place for the warm-up,
the device synchronisation and the clocks.

- `call_times(fn, repeats=..., warmup=..., device=..., clock=...)`: the seconds of each timed call;
  on CUDA the device is synchronised before and after every call, so a call's time includes its
  kernels; clock "wall" (perf_counter) or "cpu" (process_time: the CPU seconds of this process,
  which on a shared CPU machine moves less with other jobs' load than the wall clock).
- `interleaved_times(fns, ...)`: several candidates timed in turn within each repeat (a drift of
  the machine's load is then shared by all of them), wall and CPU clock of every call.
- `median`, `summary`: the statistics the results report.
- `tuned(table, **changes)`: a kernel's launch-config dict (e.g. ops/delta/triton/recurrent.TUNE)
  with changes for the block, restored exactly on exit (the sweeps of benchmarks/gpu_*.py).

GPU kernels alone are timed with triton's do_bench (attnzoo.bench.speed.do_bench_ms).
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_us(event) -> float:
    """A torch.profiler averaged event's own device time in µs: self_device_time_total (torch >= 2.4) or the
    older self_cuda_time_total (getattr's default would be evaluated, and fail, where only the new one exists)."""
    return event.self_device_time_total if hasattr(event, "self_device_time_total") else event.self_cuda_time_total


def call_times(fn, *, repeats: int = 3, warmup: int = 1, device="cpu", clock: str = "wall") -> list[float]:
    """Seconds of each of `repeats` calls of fn() after `warmup` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {tuple(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = now()
        fn()
        sync(device)
        times.append(now() - t0)
    return times


def interleaved_times(fns: dict, *, repeats: int = 3, warmup: int = 1, device="cpu") -> dict:
    """{name: {"wall": [s, ...], "cpu": [s, ...]}}: each repeat calls every candidate once, in order."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            out[k]["cpu"].append(time.process_time() - c0)
            out[k]["wall"].append(time.perf_counter() - w0)
    return out


def median(xs) -> float:
    """The median (the mean of the two middle values for an even count)."""
    return statistics.median(xs)


def summary(times: dict) -> dict:
    """interleaved_times' lists as {"wall_median_s", "wall_min_s", "cpu_median_s", "cpu_min_s"}."""
    return {f"{c}_{s}_s": (median(v) if s == "median" else min(v)) for c, v in times.items() for s in ("median", "min")}


def do_bench_ms(fn) -> float:
    """Milliseconds of one fn() on a GPU: triton.testing.do_bench's median (25 ms warm-up, 100 ms of runs)."""
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def ms_timer(device, *, cpu_repeats: int = 3, cpu_warmup: int = 1):
    """A function fn -> milliseconds of one fn() for the scripts that time on either device: on CUDA
    triton's do_bench median (attnzoo.bench.speed.do_bench_ms), on the CPU the median of `cpu_repeats`
    calls after `cpu_warmup` (a smoke run through the Triton interpreter takes one call, no warm-up)."""
    if torch.device(device).type == "cuda":
        return do_bench_ms
    return lambda fn: 1e3 * median(call_times(fn, repeats=cpu_repeats, warmup=cpu_warmup))


def capture_cuda_graph(fn, warmup: int = 3):
    """fn captured in a CUDA graph after `warmup` calls on a side stream (the warm-up PyTorch asks for before
    a capture); returns the graph, whose replay() runs fn's kernels with no host work per call."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


@contextlib.contextmanager
def tuned(table: dict, **changes):
    """`table` (a module's TUNE dict of launch options, read at each call) updated with `changes` inside the
    block and restored to exactly its old items after, also when the block raises; yields the table."""
    old = dict(table)
    table.update(changes)
    try:
        yield table
    finally:
        table.clear()
        table.update(old)


@contextlib.contextmanager
def switched(module, **values):
    """A module's switches (module-level names read at each call, e.g. ops.scan.api.SCAN_TRITON_AUTO) set to
    `values` inside the block and restored after, also when the block raises."""
    missing = [k for k in values if not hasattr(module, k)]
    if missing:
        raise AttributeError(f"{module.__name__} has no {missing}")
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield module
    finally:
        for k, v in old.items():
            setattr(module, k, v)
