"""GPU check of the Triton GLA op at head dims other than 64/128 (K != V, odd sizes, the shapes the
zoo's small mixers pass: lawcat K=16 V=33 with a bf16 scalar gate, based K=21, rwkv6 T=65) against
the float64 reference. Each case runs in its own process (a CUDA fault is sticky), with
CUDA_LAUNCH_BLOCKING=1 so that a fault names its kernel; a failing case is re-run under
compute-sanitizer memcheck when it is installed.

    python benchmarks/gpu_gla_odd.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

CASES = [  # (B, T, H, K, V, gate, dtype)
    (32, 64, 2, 16, 33, "scalar", "bfloat16"),   # lawcat (normalize: V + 1)
    (32, 64, 2, 16, 32, "scalar", "bfloat16"),
    (32, 64, 2, 21, 33, None, "bfloat16"),       # based (Taylor feature dim 21)
    (32, 64, 2, 21, 32, None, "bfloat16"),
    (32, 65, 2, 32, 32, "vector", "bfloat16"),   # rwkv6
    (2, 300, 2, 16, 33, "scalar", "float32"),
    (2, 1000, 2, 48, 80, "vector", "bfloat16"),
    (2, 1000, 2, 100, 100, "scalar", "bfloat16"),
    (2, 1000, 2, 128, 256, "vector", "bfloat16"),
    (2, 777, 2, 8, 8, "scalar", "float16"),
    (2, 300, 2, 16, 32, None, "bfloat16"),      # K = 16 without a gate, and in fp16 (dk was wrong at
    (2, 300, 2, 16, 32, "scalar", "float16"),   # K blocks of 16 on the H200: triton_chunk._scalar_dqdk_bk)
    (2, 300, 2, 24, 32, "scalar", "bfloat16"),
]


def run_case(case):
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from attnzoo.ops.linear.reference import gated_linear_attention_reference as reference
    from attnzoo.ops.linear.triton import triton_gated_linear_attention as tri

    B, T, H, K, V, gate, dt = case
    dtype = getattr(torch, dt)
    torch.manual_seed(0)
    dev = "cuda"
    q, k = (torch.randn(B, T, H, K, device=dev).to(dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, device=dev).to(dtype)
    g = None
    if gate == "scalar":
        g = (torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev)) / 4).to(dtype)
    elif gate == "vector":
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, device=dev)) / 16
    h0 = torch.randn(B, H, K, V, device=dev)
    do, dS = torch.randn(B, T, H, V, device=dev), torch.randn(B, H, K, V, device=dev)
    outs = []
    for fn, cast in ((tri, lambda t: t), (reference, lambda t: t.double())):
        ins = [cast(t).detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, g, h0)]
        o, S = fn(*ins[:4], scale=K ** -0.5, initial_state=ins[4], output_final_state=True)
        torch.autograd.backward([o, S], [cast(do).to(o.dtype), cast(dS)])
        torch.cuda.synchronize()
        outs.append([o, S] + [t.grad if t is not None else None for t in ins])
    tol = {"bfloat16": 2e-2, "float16": 1e-2, "float32": 5e-3}[dt]
    errs = {}
    for name, a, b in zip(("o", "S", "dq", "dk", "dv", "dg", "dh0"), *outs):
        if b is not None:
            errs[name] = ((a.double() - b).norm() / b.norm()).item() if torch.isfinite(a).all() else float("nan")
    return {"case": list(case), "ok": all(e < tol for e in errs.values()), "tol": tol, **errs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", type=int)
    ap.add_argument("--spec", help="one ad-hoc case: B,T,H,K,V,gate,dtype (gate scalar|vector|none)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gla_odd.json"))
    a = ap.parse_args()
    if a.case is not None or a.spec:
        if a.spec:
            B, T, H, K, V, gate, dt = a.spec.split(",")
            case = (int(B), int(T), int(H), int(K), int(V), None if gate == "none" else gate, dt)
        else:
            case = CASES[a.case]
        print("RESULT " + json.dumps(run_case(case)), flush=True)
        return
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    results = []
    for i in range(len(CASES)):
        r = subprocess.run([sys.executable, __file__, "--case", str(i)], capture_output=True, text=True, env=env,
                           timeout=300)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        rec = json.loads(line[0][7:]) if line else {"case": CASES[i], "ok": False, "error": r.stderr[-1500:]}
        if "error" in rec and shutil.which("compute-sanitizer"):
            m = subprocess.run(["compute-sanitizer", "--tool", "memcheck", "--print-limit", "3", sys.executable,
                                __file__, "--case", str(i)], capture_output=True, text=True, timeout=400)
            rec["memcheck"] = (m.stdout + m.stderr)[-3000:]
        results.append(rec)
        print(json.dumps(rec)[:600], flush=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    worst = lambda r: max((v for k, v in r.items() if k in ("o", "S", "dq", "dk", "dv", "dg", "dh0")),  # noqa: E731
                          default=float("nan"))
    print("ODD: " + ", ".join(f"{r['case'][3]}x{r['case'][4]} {r['case'][5]} {r['case'][6]}:"
                              f"{'ok' if r['ok'] else 'FAIL'} {worst(r):.1e}" for r in results))


if __name__ == "__main__":
    main()
