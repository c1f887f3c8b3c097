"""Compile the fused short-sequence GLA kernels (attnzoo/ops/linear/triton/fused.py, fused_bwd.py) for
Hopper (sm_90) on a machine WITHOUT a GPU, with the configs fused.py launches (fused.TUNE), and report
the compile time, shared memory and ptxas's register / spill summary. Catches compile errors,
shared-memory overflow (> 232448 B on the H100/H200) and register spills before GPU time is spent; it
says nothing about speed. Needs only the triton wheel (its bundled ptxas):

    python benchmarks/compile_gla_fused_sm90.py [--dtypes bf16,fp32] [--dims 128x128,16x16]
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnzoo.ops.linear.triton import fused, fused_bwd  # noqa: E402

FP32_ARGS = {"g", "h0", "ht", "dht", "dh0", "dg", "E", "tot"}  # ckpt: the input dtype (bf16 / fp32 here)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_sm90(kernel, dtype: str, constexprs: dict, num_warps: int, num_stages: int):
    defaults = {p.name: p.default for p in kernel.params
                if p.is_constexpr and p.default is not inspect.Parameter.empty}
    constexprs = {**defaults, **constexprs}
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "scale":
            sig[name] = "fp32"
        elif name == "T":
            sig[name] = "i32"
        elif name == "cu_seqlens":
            sig[name] = "*i32"
        elif name in FP32_ARGS:
            sig[name] = "*fp32"
        else:  # q, k, v, do and the outputs o, dq, dk, dv (the input dtype)
            sig[name] = "*" + dtype
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def ptxas_summary(compiled) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        r = subprocess.run([PTXAS, "--gpu-name", "sm_90a", "-v", f.name, "-o", os.devnull],
                           capture_output=True, text=True, check=False)
    finally:
        os.unlink(f.name)
    keep = [ln.split("info    : ")[-1].strip() for ln in r.stderr.splitlines() if "registers" in ln or "spill" in ln]
    return " | ".join(keep) or r.stderr.strip()[:300]


def jobs(K: int, V: int):
    """(name, kernel, constexprs, num_warps, num_stages) as fused.py launches them, H = 16, no initial
    or final state (the timed case), regular batch."""
    tune = fused.TUNE
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    out = []
    for gate in (0, 1, 2):
        base = dict(H=16, K=K, V=V, BK=BK, GATE=gate, HAS_H0=False, VARLEN=False)
        bt_f = tune["bt_vector" if gate == 2 else "bt_scalar_fwd"]
        bt_b = tune["bt_vector" if gate == 2 else "bt_scalar_bwd"]
        out.append((f"fwd g{gate}", fused.fused_fwd_kernel, dict(base, BT=bt_f, BV=min(tune["fwd_bv"], BV),
                                                               STORE_HT=False), tune["fwd_warps"], tune["fwd_stages"]))
        bwd = dict(base, BT=bt_b, BV=BV, HAS_DHT=False, STORE_DH0=False)
        segc = tune["dg_seg"] // bt_b if gate else 0
        out.append((f"bwd g{gate}", fused_bwd.fused_bwd_kernel, dict(bwd, SEGC=segc), tune["bwd_warps"],
                    tune["bwd_stages"]))
        out.append((f"bwd split g{gate}", fused_bwd.fused_bwd_split_kernel, bwd, tune["bwd_warps"],
                    tune["bwd_stages"]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--dims", default="128x128,16x16", help="comma list of KxV")
    args = ap.parse_args()
    failed = 0
    for dims in args.dims.split(","):
        K, V = (int(x) for x in dims.split("x"))
        for dtype in args.dtypes.split(","):
            for name, kernel, ce, nw, ns in jobs(K, V):
                t0 = time.perf_counter()
                try:
                    c = compile_sm90(kernel, dtype, ce, nw, ns)
                    msg = f"{time.perf_counter() - t0:.1f} s | shared {c.metadata.shared} B | {ptxas_summary(c)}"
                except Exception as e:  # noqa: BLE001 (report every failure, keep going)
                    failed += 1
                    msg = f"FAILED: {type(e).__name__}: {str(e)[:400]}"
                print(f"K={K} V={V} {dtype:5s} {name:14s} warps={nw} stages={ns}: {msg}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
