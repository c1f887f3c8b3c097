"""Host (Python + dispatch + launch) time against GPU time of one op call, on the GPU machine:

    python benchmarks/gpu_host_profile.py [--shape 8192x2] [--providers attnzoo_scalar,attnzoo_vector]

Host time per call: the GPU is first kept busy (torch.cuda._sleep), so calls only queue work and
perf_counter measures what the CPU spends submitting them. GPU time: do_bench's median. When the
host time is the larger, the op is launch-bound and do_bench reports the host time. Then the
profiler's top CPU entries of one call show where the host time goes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnzoo.bench.speed import do_bench_ms, fla_module, make_call, parse_shapes  # noqa: E402


def host_ms(fn, n=20):
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(3e9))  # ~1-2 s of GPU work ahead of the calls
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e3
    torch.cuda.synchronize()
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8192x2")
    ap.add_argument("--providers", default="attnzoo_scalar,attnzoo_vector")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--table", action="store_true", help="print the profiler's top CPU entries")
    ap.add_argument("--cprofile", action="store_true",
                    help="print cProfile's top Python functions (by own time) over 20 calls, GPU kept busy")
    a = ap.parse_args()
    s = parse_shapes(a.shape)[0]
    fla = fla_module() if "fla" in a.providers else None
    rows = []
    for p in a.providers.split(","):
        for mode in a.modes.split(","):
            call = make_call(p, s, mode, fla=fla)
            if call is None:
                continue
            fn = call[0]
            h = host_ms(fn)
            g = do_bench_ms(fn)
            rows.append((p, mode, h, g))
            if a.cprofile:
                import cProfile
                import pstats

                pr = cProfile.Profile()
                pr.enable()
                host_ms(fn)
                pr.disable()
                print(f"== {p} {mode} (cProfile, 21 calls)")
                pstats.Stats(pr).sort_stats("tottime").print_stats(28)
            if a.table:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(5):
                        fn()
                    torch.cuda.synchronize()
                print(f"== {p} {mode}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    print(f"shape T={s.T} B={s.B} H={s.H} D={s.D}")
    print(f"{'provider':16s} {'mode':7s} {'host ms':>8s} {'do_bench ms':>12s}")
    for p, mode, h, g in rows:
        print(f"{p:16s} {mode:7s} {h:8.3f} {g:12.3f}")


if __name__ == "__main__":
    main()
