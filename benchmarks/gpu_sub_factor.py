"""One GPU call (issue #22): the vector-gate GLA's sub-chunk diagonal blocks factorised about their midpoint
(chunk.TUNE["vector_sub_factor"], vector.py) against the pairwise form: correctness at real shapes against
the float64 loop (gpu_gla.check), then fwd+bwd time both ways, interleaved, in the weak (logsigmoid(x)/16)
and strong (logsigmoid(x)) regimes. bf16, H=16, D=128, 16k tokens per call.

    python benchmarks/gpu_sub_factor.py OUT [--budget S]
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from gpu_gla import check, fwd_bwd, inputs, tri  # noqa: E402

from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.speed import do_bench_ms  # noqa: E402
from attnzoo.ops.linear.triton import chunk as tc  # noqa: E402

CHECKS = [("vector_logsig_8k_D128", 2, 8192, 4, 128, "vector_logsig"),
          ("vector_logsig_4129_D128", 1, 4129, 4, 128, "vector_logsig"),
          ("vector_strong_2049_D128", 1, 2049, 2, 128, "vector", torch.bfloat16, 8.0),
          ("vector_mixed_4129_D128", 1, 4129, 4, 128, "vector_mixed", torch.bfloat16, 4.0),
          ("vector_logsig_fp16_1000_D128", 1, 1000, 4, 128, "vector_logsig", torch.float16)]


def timing(T, regime, H=16, D=128):
    B = 16384 // T
    # gpu_gla's gates: "vector_gla" = logsigmoid(x) / 16 (weak), "vector_logsig" = logsigmoid(x) (strong)
    q, k, v, g, _, h0 = inputs(B, T, H, D, "vector_gla" if regime == "weak" else "vector_logsig", torch.bfloat16,
                               1.0, seed=T)
    do, dS = torch.randn(B, T, H, D, device="cuda").bfloat16(), torch.randn(B, H, D, D, device="cuda")
    out = {"T": T, "B": B, "gates": regime}
    for _ in range(3):
        for flag in (False, True):
            tc.TUNE["vector_sub_factor"] = flag
            ms = do_bench_ms(lambda: fwd_bwd(tri, q, k, v, g, None, h0, do, dS))
            out.setdefault(f"{'sub_factor' if flag else 'pairwise'}_ms", []).append(ms)
    tc.TUNE["vector_sub_factor"] = False
    for key in ("pairwise_ms", "sub_factor_ms"):
        out[key] = sorted(out[key])[1]
    out["speedup"] = out["pairwise_ms"] / out["sub_factor_ms"]
    return out


def main():
    out_dir = sys.argv[1]
    budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 240.0
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    rec = {"machine": machine_line("cuda"), "checks": [], "timing": []}
    for flag in (True, False):
        for c in CHECKS if flag else CHECKS[:1]:
            tc.TUNE["vector_sub_factor"] = flag
            try:
                rec["checks"].append(dict(check(*c), sub_factor=flag))
            except Exception as e:  # noqa: BLE001 (a failure is a result here)
                rec["checks"].append({"check": c[0], "sub_factor": flag, "ok": False, "error": repr(e)[:300]})
            print(json.dumps(rec["checks"][-1]), flush=True)
    tc.TUNE["vector_sub_factor"] = False
    for T in (1024, 4096, 16384):
        for regime in ("strong", "weak"):
            if time.time() - t0 > budget:
                break
            rec["timing"].append(timing(T, regime))
            print(json.dumps(rec["timing"][-1]), flush=True)
    with open(os.path.join(out_dir, "sub_factor.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print("\n| T | gates | pairwise ms | sub_factor ms | speedup |\n|---|---|---|---|---|")
    for t in rec["timing"]:
        print(f"| {t['T']} | {t['gates']} | {t['pairwise_ms']:.3f} | {t['sub_factor_ms']:.3f} | {t['speedup']:.2f}x |")
    print("CHECKS: " + ", ".join(f"{c['check']}{'+sf' if c['sub_factor'] else ''}={'ok' if c['ok'] else 'FAIL'}"
                                 for c in rec["checks"]))


if __name__ == "__main__":
    main()
