"""Compile fla's chunk_gla and chunk_simple_gla (forward and backward) once, so that a Triton
cache (TRITON_CACHE_DIR) carried to a later call makes their first call cheap there:

    TRITON_CACHE_DIR=/tmp/tc python benchmarks/gpu_warm_fla.py [--shape 8192x2]

Autotuning still runs in the later call (only the compiled kernels are cached), so the configs fla
picks are chosen under that call's conditions. Prints the first-call seconds of each op.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnzoo.bench.speed import fla_module, make_call, parse_shapes  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8192x2")
    ap.add_argument("--ops", default="fla_gla,fla_simple_gla")
    a = ap.parse_args()
    fla = fla_module()
    if fla is None:
        sys.exit("fla is not importable")
    for s in parse_shapes(a.shape):
        for p in a.ops.split(","):
            t0 = time.perf_counter()
            make_call(p, s, "fwdbwd", fla=fla)[0]()
            torch.cuda.synchronize()
            print(f"{p} T={s.T} B={s.B} fwd+bwd first call {time.perf_counter() - t0:.1f} s", flush=True)
