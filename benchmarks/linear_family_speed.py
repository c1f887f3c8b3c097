"""Speed and agreement of the linear-attention / gated-recurrence mixers (issue 3).

    .venv/bin/python benchmarks/linear_family_speed.py [--device cpu|cuda --B 2 --T 1024 --d 256]

For each mixer (built at d_model=d with n_heads=4 where the mixer takes it): median seconds of a
forward (no grad) and of a forward+backward with impl="auto" (torch chunked on CPU; Triton where
the op has a kernel on CUDA), the same for the softmax mixer for scale, and the relative error of
impl="auto" against impl="reference" (the loops over time) on a short sequence (T=64) in float32,
forward and input gradient, and of prefix + state + single steps against one call. Writes
benchmarks/results/linear_family_speed_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

import attnzoo
from attnzoo.bench.timing import call_times, median

FAMILY = ["linear", "based", "retnet", "lightning", "gla", "hgrn2", "mamba2", "deltanet", "gated_deltanet", "lawcat"]


def set_impl(m, impl):
    for mod in m.modules():
        if hasattr(mod, "impl"):
            mod.impl = impl


def build(name, d, device, dtype=torch.float32):
    torch.manual_seed(0)
    kw = {} if name == "mamba2" else {"n_heads": 4}
    return attnzoo.build(name, d_model=d, **kw).to(device=device, dtype=dtype)


def timeit(fn, repeats, device):
    """Median wall seconds after one warm-up, synchronised on CUDA (attnzoo.bench.timing)."""
    return median(call_times(fn, repeats=repeats, device=device))


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def agreement(name, d, device):
    m = build(name, d, device)
    x = torch.randn(2, 64, d, device=device, requires_grad=True)
    out = {}
    for impl in ("reference", "auto"):
        set_impl(m, impl)
        y = m(x)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        out[impl] = (y.detach(), g)
    return rel(out["auto"][0], out["reference"][0]), rel(out["auto"][1], out["reference"][1])


def continuation(name, d, device):
    """impl="auto": prefix (37 tokens) + rest from the state, then 3 single steps, vs one call."""
    m = build(name, d, device)
    x = torch.randn(2, 67, d, device=device)
    with torch.no_grad():
        full = m(x)
        y1, s = m(x[:, :37], return_state=True)
        y2, s = m(x[:, 37:64], state=s, return_state=True)
        ys = [y1, y2]
        for t in range(64, 67):
            y, s = m(x[:, t : t + 1], state=s, return_state=True)
            ys.append(y)
    return rel(torch.cat(ys, 1), full)


def measure(name, a, x, dev):
    m = build(name, a.d, dev)
    with torch.no_grad():
        fwd = timeit(lambda m=m: m(x), a.repeats, dev)
    xg = x.clone().requires_grad_(True)
    fb = timeit(lambda m=m, xg=xg: m(xg).sum().backward(), a.repeats, dev)
    err_y, err_g = agreement(name, a.d, dev) if name != "softmax" else (float("nan"), float("nan"))
    err_s = continuation(name, a.d, dev)
    row = {"mixer": name, "forward_s": fwd, "fwd_bwd_s": fb, "rel_err_vs_reference": err_y,
           "rel_err_grad_vs_reference": err_g, "rel_err_state_continuation": err_s,
           "state_bytes_per_seq": m.state_bytes(a.T)}
    print(f"{name:15s} fwd {fwd * 1e3:8.2f} ms  fwd+bwd {fb * 1e3:8.2f} ms  "
          f"err y {err_y:.1e} grad {err_g:.1e} cont {err_s:.1e}  state {row['state_bytes_per_seq']} B", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--names", default=",".join(FAMILY))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = a.device
    gpu = torch.cuda.get_device_name() if dev == "cuda" else ""
    machine = (f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"threads {torch.get_num_threads()}")
    machine += f", {gpu}" if gpu else ""
    rows = []
    x = torch.randn(a.B, a.T, a.d, device=dev)
    for name in a.names.split(",") + ["softmax"]:
        try:
            row = measure(name, a, x, dev)
        except Exception as e:  # noqa: BLE001 (a failing kernel is a result too: record it, go on)
            row = {"mixer": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"{name:15s} FAILED {row['error']}", flush=True)
        rows.append(row)
    res = {"machine": machine, "config": {"B": a.B, "T": a.T, "d_model": a.d, "dtype": "float32",
                                          "repeats": a.repeats, "stat": "median", "device": dev},
           "rows": rows}
    out = a.out or os.path.join(os.path.dirname(__file__), "results", f"linear_family_speed_{dev}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
