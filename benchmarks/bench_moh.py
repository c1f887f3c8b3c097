"""MoH at inference: attention only for the active (token, head) pairs vs computing every head.

    .venv/bin/python benchmarks/bench_moh.py                      # the sweep below, 1 and 2 threads
    .venv/bin/python benchmarks/bench_moh.py --T 4096 --d 512 --threads 1 --repeats 9

Same weights, eval mode, no grad, one forward (prefill) of [B, T, d]. "all heads" = the same MoH
model with skip_inactive_heads=False (every head through one causal SDPA call, inactive ones
multiplied by a zero gate); "active heads" = the default inference path (shared heads through
SDPA, each routed head's selected queries through subset_causal_attention). Plain softmax
attention of the same size is shown for scale. One decode step (1 token after a T-token prefill)
is timed too, and the routed heads' attention alone (dense causal SDPA over every token vs
subset_causal_attention over the selected queries). Candidates run interleaved (A, B, C, A, B,
C, ...) so that load from other processes hits all alike; wall and process CPU time are recorded,
median and min over the repeats, with the load average.

Compute bound (multiply-adds per forward): projections 4·T·d² (q, k, v, o: all computed, see
attnzoo/mixers/moh.py), causal attention T²·d over all heads; the active path does only the
active fraction a = (shared + top_k) / heads of the attention, so the multiply-add ratio is
(4·d + a·T) / (4·d + T) ("x flops" = its inverse). Writes benchmarks/results/moh_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.bench import timing
from attnzoo.bench.timing import summary
from attnzoo.ops.softmax.subset import subset_causal_attention


def interleaved_times(fns, repeats):
    """Per candidate: wall and CPU (process) seconds, min and median over interleaved repeats
    after one warm-up each (attnzoo.bench.timing)."""
    return {k: summary(t) for k, t in timing.interleaved_times(fns, repeats=repeats).items()}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def floor_ratio(T, d, active):
    """Best possible active/all time ratio when only the attention shrinks (see the docstring)."""
    return (4 * d + active * T) / (4 * d + T)


def bench_one(B, T, d, heads, shared, top_k, repeats, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = attnzoo.build("moh", d_model=d, n_heads=heads, n_shared_heads=shared, top_k=top_k).eval()
    sm = attnzoo.build("softmax", d_model=d, n_heads=heads).eval()
    x = torch.randn(B, T, d)
    nxt = torch.randn(B, 1, d)
    active = (shared + top_k) / heads

    def run(skip, inp, state=None):
        m.skip_inactive_heads = skip
        return m(inp, state=state)

    with torch.no_grad():
        err = (run(True, x) - run(False, x)).abs().max().item()
        m.skip_inactive_heads = True
        _, st = m(x, return_state=True)
        err_dec = (run(True, nxt, st) - run(False, nxt, st)).abs().max().item()
        t = interleaved_times({
            "moh_active_heads": lambda: run(True, x),
            "moh_all_heads": lambda: run(False, x),
            "softmax": lambda: sm(x),
        }, repeats)
        td = interleaved_times({
            "decode_active_heads": lambda: run(True, nxt, st),
            "decode_all_heads": lambda: run(False, nxt, st),
        }, 5 * repeats)
        # the routed heads' attention alone: dense causal over every token vs the selected subsets
        hr, hd = heads - shared, d // heads
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, hr, T, hd, generator=g) for _ in range(3))
        pick = torch.rand(T, hr, generator=g).topk(top_k, dim=1).indices
        chosen = torch.zeros(T, hr, dtype=torch.bool).scatter_(1, pick, True).t()[None]
        count = chosen.sum(-1)
        q_pos = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)[..., : int(count.max())]
        q_sel = q.gather(2, q_pos[..., None].expand(-1, -1, -1, hd))
        ta = interleaved_times({
            "routed_attention_dense": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "routed_attention_subset": lambda: subset_causal_attention(q_sel, k, v, q_pos, count),
        }, repeats)
    res = {"B": B, "T": T, "d_model": d, "n_heads": heads, "n_shared_heads": shared, "top_k": top_k,
           "active_fraction": active, "threads": threads, "repeats": repeats,
           "floor_ratio_active_over_all": floor_ratio(T, d, active),
           "max_abs_diff_active_vs_all": err, "max_abs_diff_decode": err_dec, **t, **td, **ta,
           "load_average": os.getloadavg()}
    for kind in ("wall", "cpu"):
        res[f"speedup_{kind}_median"] = (t["moh_all_heads"][f"{kind}_median_s"]
                                         / t["moh_active_heads"][f"{kind}_median_s"])
        res[f"decode_speedup_{kind}_median"] = (td["decode_all_heads"][f"{kind}_median_s"]
                                                / td["decode_active_heads"][f"{kind}_median_s"])
        res[f"routed_attention_speedup_{kind}_median"] = (ta["routed_attention_dense"][f"{kind}_median_s"]
                                                          / ta["routed_attention_subset"][f"{kind}_median_s"])
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--d", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--shared", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "moh_cpu.json"))
    a = ap.parse_args()
    runs = []
    print(f"MoH: {a.heads} heads, {a.shared} shared + top-{a.top_k} of {a.heads - a.shared} routed "
          f"({(a.shared + a.top_k) / a.heads:.0%} active), B={a.B}; medians of {a.repeats} interleaved runs")
    print(f"{'thr':>3} {'T':>5} {'d':>5} | {'all ms':>8} {'active ms':>9} {'x wall':>6} {'x cpu':>6} "
          f"{'x flops':>7} | {'routed attn x cpu':>17} | {'decode x cpu':>12} | load")
    for threads in a.threads:
        for d in a.d:
            for T in a.T:
                r = bench_one(a.B, T, d, a.heads, a.shared, a.top_k, a.repeats, threads)
                runs.append(r)
                print(f"{threads:>3} {T:>5} {d:>5} | {r['moh_all_heads']['wall_median_s'] * 1e3:8.1f} "
                      f"{r['moh_active_heads']['wall_median_s'] * 1e3:9.1f} {r['speedup_wall_median']:6.2f} "
                      f"{r['speedup_cpu_median']:6.2f} {1 / r['floor_ratio_active_over_all']:7.2f} | "
                      f"{r['routed_attention_speedup_cpu_median']:17.2f} | {r['decode_speedup_cpu_median']:12.2f} | "
                      f"{r['load_average'][0]:.1f}", flush=True)
    out = {
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}",
        "conditions": "eval, no grad, float32, prefill of [B, T, d] (and one decode step after it); "
                      "candidates interleaved; wall and process CPU seconds; x = all-heads / active-heads "
                      "median time; x flops = the same ratio of multiply-adds when only the attention "
                      "shrinks (ideal causal attention; SDPA's causal kernel skips less than half, so a "
                      "measured x can exceed it); routed attn = the routed heads' attention alone, dense "
                      "causal SDPA over all tokens vs subset_causal_attention (random top_k routing)",
        "runs": runs,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
