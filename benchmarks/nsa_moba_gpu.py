"""GPU timings for the per-token sparse mixers nsa and moba (issue #24): their torch paths (ops/sparse/
token_select.py: one masked SDPA call, or each query's blocks gathered) against dense causal softmax
(SDPA) and block_sparse (Triton kernels, one selection per query block), whole mixers in bf16.

    python benchmarks/nsa_moba_gpu.py OUT_DIR            # on a CUDA machine (budget 360 s, ~7 min)
    python benchmarks/nsa_moba_gpu.py OUT_DIR --smoke    # tiny shapes on the CPU (a minute)

(a) Checks, float32 at T=1024 (smoke: 64): each mixer's fast path against its impl="reference" (dense
masked form), forward and the input gradient, and both torch paths (dense / gather) against each other.
(b) Times (median of 5 after 2 warm-ups, device synchronised): forward+backward of each mixer at
d_model 1024, 16 query heads, 4 KV heads, B·T = 16k tokens, T = 1k, 4k, 16k; nsa and moba once through
the masked SDPA path and once through the gather (DENSE_MAX_SCORES forced); one decode step (B=4) after
a prefill of T tokens. nsa: the paper's l=32, d=16, l'=64, 16 blocks, window 512; moba: the paper's
block 512, top 3; block_sparse: block 64, top 16. Every case runs in its own try/except (an out-of-memory
is recorded, not fatal); records are appended to OUT_DIR/nsa_moba_gpu.json after each case, with the
machine line (GPU, torch, Triton, CUDA); a case starts only while the budget (--budget s) lasts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnzoo  # noqa: E402
import attnzoo.ops.sparse.token_select as token_select  # noqa: E402
from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.timing import call_times  # noqa: E402

FULL = dict(d_model=1024, heads=dict(n_heads=16, n_kv_heads=4), lens=(1024, 4096, 16384), tokens=16384,
            check_t=1024, decode_b=4,
            kwargs={"softmax": {}, "block_sparse": dict(block_size=64, top_k=16),
                    "nsa": dict(cmp_block=32, cmp_stride=16, sel_block=64, top_n=13, n_init=1, n_local=2, window=512),
                    "moba": dict(block_size=512, top_k=3)})
SMOKE = dict(d_model=64, heads=dict(n_heads=4, n_kv_heads=2), lens=(64, 128), tokens=256, check_t=64, decode_b=2,
             kwargs={"softmax": {}, "block_sparse": dict(block_size=8, top_k=2),
                     "nsa": dict(cmp_block=8, cmp_stride=4, sel_block=8, top_n=2, n_init=1, n_local=1, window=16),
                     "moba": dict(block_size=16, top_k=2)})


def build(cfg, name, dtype, device, **extra):
    torch.manual_seed(0)
    kw = {**cfg["heads"], **cfg["kwargs"][name], **extra}
    return attnzoo.build(name, d_model=cfg["d_model"], **kw).to(device=device, dtype=dtype)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def fwd_bwd(m, x):
    def run():
        x.grad = None
        m(x).float().square().mean().backward()
    return run


def check(cfg, name, device):
    """Fast path vs impl="reference" (output and x-gradient) and, for the per-token mixers, dense vs gather."""
    T = cfg["check_t"]
    x = torch.randn(1, T, cfg["d_model"], device=device, requires_grad=True)
    fast, ref = build(cfg, name, torch.float32, device), build(cfg, name, torch.float32, device, impl="reference")
    outs = {}
    for tag, m in (("fast", fast), ("reference", ref)):
        y = m(x)
        (g,) = torch.autograd.grad(y.square().mean(), x)
        outs[tag] = (y.detach(), g)
    rec = {"case": "check", "mixer": name, "T": T, "rel_out": rel(*[o[0] for o in outs.values()]),
           "rel_grad_x": rel(*[o[1] for o in outs.values()])}
    if name in ("nsa", "moba"):
        keep = token_select.DENSE_MAX_SCORES
        try:
            token_select.DENSE_MAX_SCORES = 0
            with torch.no_grad():
                rec["rel_gather_vs_dense"] = rel(fast(x), outs["fast"][0])
        finally:
            token_select.DENSE_MAX_SCORES = keep
    return rec


def time_train(cfg, name, T, device, dtype, path):
    B = max(1, cfg["tokens"] // T)
    m = build(cfg, name, dtype, device).train()
    x = torch.randn(B, T, cfg["d_model"], device=device, dtype=dtype, requires_grad=True)
    keep = token_select.DENSE_MAX_SCORES
    token_select.DENSE_MAX_SCORES = {"dense": 1 << 62, "gather": 0}.get(path, keep)
    try:
        times = call_times(fwd_bwd(m, x), repeats=5, warmup=2, device=device)
    finally:
        token_select.DENSE_MAX_SCORES = keep
    return {"case": "train", "mixer": name, "path": path, "B": B, "T": T, "ms_fwd_bwd": 1e3 * statistics.median(times)}


def time_decode(cfg, name, T, device, dtype):
    B = cfg["decode_b"]
    m = build(cfg, name, dtype, device).eval()
    with torch.no_grad():
        _, state = m(torch.randn(B, T, cfg["d_model"], device=device, dtype=dtype), return_state=True)
        tok = torch.randn(B, 1, cfg["d_model"], device=device, dtype=dtype)
        times = call_times(lambda: m(tok, state=state), repeats=5, warmup=2, device=device)
    return {"case": "decode", "mixer": name, "B": B, "cache_T": T, "ms_step": 1e3 * statistics.median(times)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--budget", type=float, default=360.0)
    args = ap.parse_args()
    cfg = SMOKE if args.smoke else FULL
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke on a CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "nsa_moba_gpu.json"
    head = {"machine": machine_line(device), "dtype": str(dtype), "d_model": cfg["d_model"], **cfg["heads"],
            "kwargs": cfg["kwargs"], "smoke": args.smoke, "records": []}
    t0 = time.time()
    cases = [("check", n) for n in cfg["kwargs"]]
    for T in cfg["lens"]:
        for n in cfg["kwargs"]:
            for p in (("dense", "gather") if n in ("nsa", "moba") else ("auto",)):
                cases.append(("train", n, T, p))
    cases += [("decode", n, T) for T in cfg["lens"] for n in cfg["kwargs"]]
    for case in cases:
        if time.time() - t0 > args.budget:
            head["records"].append({"case": case[0], "args": list(case[1:]), "skipped": "budget"})
            continue
        try:
            if case[0] == "check":
                rec = check(cfg, case[1], device)
            elif case[0] == "train":
                rec = time_train(cfg, *case[1:3], device, dtype, case[3])
            else:
                rec = time_decode(cfg, *case[1:], device, dtype)
        except Exception as e:  # noqa: BLE001  (an out-of-memory or a failure is a result too)
            rec = {"case": case[0], "args": list(case[1:]), "error": f"{type(e).__name__}: {str(e)[:300]}",
                   "trace": traceback.format_exc(limit=3)[-600:]}
        if device == "cuda":
            torch.cuda.empty_cache()
        rec["elapsed_s"] = round(time.time() - t0, 1)
        head["records"].append(rec)
        print(json.dumps(rec), flush=True)
        path.write_text(json.dumps(head, indent=1) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
