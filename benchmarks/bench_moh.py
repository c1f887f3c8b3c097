"""MoH at inference: attention only for the active (token, head) pairs vs computing every head.

    .venv/bin/python benchmarks/bench_moh.py [--T 1024 --d 512 --heads 16 --shared 4 --top-k 4]

Same weights, eval mode, one forward (prefill) of [B, T, d]. "all heads" = the same MoH model with
skip_inactive_heads=False (every head through SDPA, inactive ones multiplied by a zero gate);
"active heads" = the default inference path. Plain softmax attention of the same size is shown
for scale. Prints a table and writes benchmarks/results/moh_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

import attnzoo


def timeit(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--shared", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "moh_cpu.json"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = attnzoo.build("moh", d_model=a.d, n_heads=a.heads, n_shared_heads=a.shared, top_k=a.top_k).eval()
    sm = attnzoo.build("softmax", d_model=a.d, n_heads=a.heads).eval()
    x = torch.randn(a.B, a.T, a.d)
    active = (a.shared + a.top_k) / a.heads
    res = {}
    with torch.no_grad():
        m.skip_inactive_heads = True
        y_fast = m(x)
        res["moh_active_heads_s"] = timeit(lambda: m(x), a.repeats)
        m.skip_inactive_heads = False
        y_all = m(x)
        res["moh_all_heads_s"] = timeit(lambda: m(x), a.repeats)
        res["softmax_s"] = timeit(lambda: sm(x), a.repeats)
    err = (y_fast - y_all).abs().max().item()
    res["speedup_active_vs_all"] = res["moh_all_heads_s"] / res["moh_active_heads_s"]
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
                   f"torch {torch.__version__}, threads {torch.get_num_threads()}",
        "config": {"B": a.B, "T": a.T, "d_model": a.d, "n_heads": a.heads, "n_shared_heads": a.shared,
                   "top_k": a.top_k, "active_fraction": active, "repeats": a.repeats, "stat": "median"},
        "max_abs_diff_active_vs_all": err,
        **res,
    }
    print(f"MoH B={a.B} T={a.T} d={a.d} heads={a.heads} ({a.shared} shared + top-{a.top_k} of "
          f"{a.heads - a.shared} routed = {active:.0%} active)")
    print(f"  all heads    {res['moh_all_heads_s'] * 1e3:8.1f} ms")
    print(f"  active heads {res['moh_active_heads_s'] * 1e3:8.1f} ms   speed-up x{res['speedup_active_vs_all']:.2f}")
    print(f"  softmax      {res['softmax_s'] * 1e3:8.1f} ms   (same size, plain MHA)")
    print(f"  max |diff| active vs all heads: {err:.2e}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
