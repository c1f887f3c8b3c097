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


def interleaved_times(fns, repeats):
    """Run the candidates in turn (A, B, C, A, B, C, ...) so that load from other processes hits all
    of them alike; return per candidate (min, median) seconds."""
    for fn in fns.values():
        fn()  # warm-up
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: (min(v), sorted(v)[len(v) // 2]) for k, v in ts.items()}


def set_skip(m, skip):
    m.skip_inactive_heads = skip
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--shared", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=15)
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
    with torch.no_grad():
        y_fast = set_skip(m, True)(x)
        y_all = set_skip(m, False)(x)
        t = interleaved_times({
            "moh_active_heads": lambda: set_skip(m, True)(x),
            "moh_all_heads": lambda: set_skip(m, False)(x),
            "softmax": lambda: sm(x),
        }, a.repeats)
    res = {f"{k}_{stat}_s": v[i] for k, v in t.items() for i, stat in enumerate(("min", "median"))}
    err = (y_fast - y_all).abs().max().item()
    res["speedup_active_vs_all_min"] = res["moh_all_heads_min_s"] / res["moh_active_heads_min_s"]
    res["speedup_active_vs_all_median"] = res["moh_all_heads_median_s"] / res["moh_active_heads_median_s"]
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
                   f"torch {torch.__version__}, threads {torch.get_num_threads()}",
        "config": {"B": a.B, "T": a.T, "d_model": a.d, "n_heads": a.heads, "n_shared_heads": a.shared,
                   "top_k": a.top_k, "active_fraction": active, "repeats": a.repeats,
                   "timing": "interleaved runs; min and median seconds"},
        "max_abs_diff_active_vs_all": err,
        **res,
    }
    print(f"MoH B={a.B} T={a.T} d={a.d} heads={a.heads} ({a.shared} shared + top-{a.top_k} of "
          f"{a.heads - a.shared} routed = {active:.0%} active)")
    for k, label in (("moh_all_heads", "all heads   "), ("moh_active_heads", "active heads"), ("softmax", "softmax MHA ")):
        print(f"  {label} min {res[k + '_min_s'] * 1e3:8.1f} ms   median {res[k + '_median_s'] * 1e3:8.1f} ms")
    print(f"  speed-up active vs all heads: x{res['speedup_active_vs_all_min']:.2f} (min), "
          f"x{res['speedup_active_vs_all_median']:.2f} (median)")
    print(f"  max |diff| active vs all heads: {err:.2e}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
