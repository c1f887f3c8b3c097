"""Compile the Triton GLA chunk kernels for Hopper (sm_90) on a machine WITHOUT a GPU, with the
configs triton_chunk.py launches, and report shared memory and ptxas's register/spill summary.
Catches compile errors, shared-memory overflow and register spills before any GPU time is spent
(it says nothing about speed). Needs only the triton wheel (its bundled ptxas):

    python benchmarks/compile_gla_sm90.py [--dtypes bf16,fp16,fp32] [--dims 128x128,64x256]
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnzoo.ops.linear import triton_chunk as tc  # noqa: E402
from attnzoo.ops.linear import triton_output, triton_scalar_bwd, triton_vector, triton_vector_fast  # noqa: E402

FP32_ARGS = {"b", "A", "db"}
INT_ARGS = {"cu_seqlens", "chunk_seq", "chunk_idx"}
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_sm90(kernel, dtype: str, constexprs: dict, num_warps: int):
    # constexpr parameters left at their defaults (e.g. FUSED_DG) are constexprs too, as at launch
    defaults = {p.name: p.default for p in kernel.params
                if p.is_constexpr and p.default is not inspect.Parameter.empty}
    constexprs = {**defaults, **constexprs}
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "scale":
            sig[name] = "fp32"
        elif name in INT_ARGS:
            sig[name] = "*i32"
        elif name in FP32_ARGS:
            sig[name] = "*fp32"
        else:  # q, k, v, do, o, dq, dk, dv and h, dh (stored in the input dtype)
            sig[name] = "*" + dtype
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))


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
    """(name, kernel, constexprs, num_warps) as triton_chunk.py launches them, H = 16."""
    BK, BV = tc._blocks(K, V)
    BKv = min(32, max(16, triton.next_power_of_2(K)))
    base = dict(H=16, K=K, V=V, BT=tc.BT)
    out = []
    for gate in (1, 2):
        for name, kern, dv in (("output", triton_output.chunk_output_kernel, False),
                               ("dv", triton_output.chunk_dv_kernel, True)):
            cfg = tc._output_config(gate, BK, dv=dv)
            nw = cfg.pop("num_warps")
            out.append((f"{name} g{gate}", kern, dict(base, BV=BV, **cfg), nw))
    out.append(("scalar dqdk", triton_scalar_bwd.chunk_scalar_dqdk_kernel,
                dict(base, BK=tc._scalar_dqdk_bk(K), BV=min(BV, 32), GATE=1), 8 if K > 64 else 4))
    out.append(("vector intra", triton_vector.chunk_intra_kernel,
                dict(H=16, K=K, BT=tc.BT, BC=tc.BC, BK=BKv), 4))
    out.append(("vector dqdk", triton_vector.chunk_vector_dqdk_kernel, dict(base, BC=tc.BC, BK=BKv, BV=BV), 4))
    out.append(("vector fast dqdk", triton_vector_fast.chunk_vector_fast_dqdk_kernel,
                dict(base, BK=BK, BV=min(BV, 32)), 8))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    ap.add_argument("--dims", default="128x128,64x64,100x100", help="comma list of KxV")
    args = ap.parse_args()
    failed = 0
    for dims in args.dims.split(","):
        K, V = (int(x) for x in dims.split("x"))
        for dtype in args.dtypes.split(","):
            for name, kernel, ce, nw in jobs(K, V):
                try:
                    c = compile_sm90(kernel, dtype, ce, nw)
                    msg = f"shared {c.metadata.shared} B | {ptxas_summary(c)}"
                except Exception as e:  # noqa: BLE001 (report every failure, keep going)
                    failed += 1
                    msg = f"FAILED: {type(e).__name__}: {str(e)[:400]}"
                print(f"K={K} V={V} {dtype:5s} {name:17s} warps={nw}: {msg}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
