"""The sub-chunk kernels of the vector-gate GLA compile for Hopper (sm_90) with Triton's own compiler and
ptxas, without a GPU: `triton.compile` of an ASTSource for GPUTarget("cuda", 90, 32). The interpreter tests
run the kernels as Python, which accepts code the compiler rejects: with TUNE["vector_sub_factor"] off, a
runtime `if` on a Python False left a name set only under the constexpr branch, which ran in the interpreter
and failed to compile on an H100 (2026-12-07). A subprocess: these kernels must not be the interpreted ones
that the other Triton tests of this process create (TRITON_INTERPRET=1 at import)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from attnzoo.ops.linear.triton.vector import chunk_intra_kernel, chunk_vector_dqdk_kernel

    P = "*bf16"
    tables = {"cu_seqlens": "*i32", "chunk_seq": "*i32", "chunk_idx": "*i32"}
    intra = {"q": P, "k": P, "b": "*fp32", "A": "*fp32", **tables}
    dqdk = {"q": P, "k": P, "v": P, "do": P, "b": "*fp32", "h": "*fp32", "dh": "*fp32", "dq": P, "dk": P,
            "db": "*fp32", **tables, "scale": "fp32"}
    cases = [(chunk_intra_kernel, intra, dict(H=16, K=128, BT=64, BC=16, BK=32)),
             (chunk_vector_dqdk_kernel, dqdk, dict(H=16, K=128, V=128, BT=64, BC=16, BK=32, BV=64))]
    for fn, sig, const in cases:
        for sub in (False, True):
            c = dict(const, SUB_FACTOR=sub)
            src = ASTSource(fn, {**sig, **{k: "constexpr" for k in c}}, constexprs=c)
            kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            assert kernel.asm["cubin"], (fn.__name__, sub)
            print(fn.__name__, sub, "ok")
""")


def test_subchunk_kernels_compile_for_sm90_either_way():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(" ok") == 4, r.stdout
