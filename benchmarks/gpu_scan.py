"""GPU checks and timings of the Triton selective scan (ops/scan/triton/, Mamba-1) against the torch chunked
scan, and what it does to the zoo's slowest group (issue #23: Mamba's groups took 358 s per 1500 steps at
d = 128, the longest of Figure 2's grid).

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_scan.py OUT_DIR          # a CUDA machine (~2 min on an H100)
    python3 benchmarks/gpu_scan.py OUT_DIR --smoke                     # tiny shapes, CPU, Triton interpreter

Cases (each its own try/except; OUT_DIR/gpu_scan.json, machine line and records, rewritten after each):
- check: the kernel (bf16 or fp32 inputs) against the float64 loop over time (impl="reference") on the GPU:
  y, final state and the gradients of u, Δ, A, B, C, D, h0 (relative errors; ok < 2e-2 bf16, 1e-4 fp32), at a
  Mamba layer's shape (D = 1536, N = 16, T = 1030: 17 chunks, the last partial), the zoo's (a group of 4
  models as one batch: B = 2048, T = 64, D = 256, N = 4) and strong decays (Δ x 30);
- vmap: torch.func.vmap over 4 members with A and D per member, kernel against the torch path;
- time: fwd and fwd+bwd of the kernel and of the torch chunked path (do_bench medians), peak memory;
- tiles: the kernel at other channel tiles and warp counts (TUNE) at the Mamba shape;
- zoo: seconds per step of the zoo's mamba group (paper preset, 4 learning rates as one model, CUDA graph)
  at d = 128 and 256, T = 64, torch path then the kernel (SCAN_TRITON_AUTO), the same batches.
If every check passes and the kernel is faster, set SCAN_TRITON_AUTO = True in ops/scan/api.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnzoo.ops.scan.api as scan_api  # noqa: E402
from attnzoo.bench.cases import CaseLog, cuda_peak_mb as peak_mb, rel_err as rel, script_args  # noqa: E402
from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.timing import ms_timer, switched, tuned  # noqa: E402
from attnzoo.ops.scan import selective_scan  # noqa: E402
from attnzoo.ops.scan.triton import api as tri  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
T0 = time.time()
bench = ms_timer(DEV, cpu_repeats=1, cpu_warmup=0)
NAMES = ("y", "final", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0")


def inputs(Bsz, T, Dm, N, *, strength=1.0, seed=0, dtype=torch.bfloat16):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
    u = r(Bsz, T, Dm).to(dtype)
    delta = torch.nn.functional.softplus(r(Bsz, T, Dm) - 4) * strength  # ~0.02: Mamba's dt_init range
    A = -torch.arange(1, N + 1, device=DEV, dtype=torch.float32).repeat(Dm, 1)  # S4D-real
    B, C = r(Bsz, T, N).to(dtype), r(Bsz, T, N).to(dtype)
    return [u, delta, A, B, C, r(Dm), r(Bsz, Dm, N)]


def outs_and_grads(ins, impl, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in ins]
    u, delta, A, B, C, D, h0 = leaves
    y, h = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, impl=impl)
    g = torch.Generator(device=DEV).manual_seed(99)
    dy = torch.randn(y.shape, device=DEV, generator=g)
    dh = torch.randn(h.shape, device=DEV, generator=g)
    grads = torch.autograd.grad((y.double() * dy).sum() + (h.double() * dh).sum(), leaves)
    return [y, h, *grads]


def check(Bsz, T, Dm, N, dtype=torch.bfloat16, strength=1.0) -> dict:
    ins = inputs(Bsz, T, Dm, N, strength=strength, dtype=dtype)
    got = outs_and_grads(ins, "triton")
    want = outs_and_grads(ins, "reference", torch.float64)
    errs = {f"{k}_rel": rel(a, b) for k, a, b in zip(NAMES, got, want)}
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    return {"B": Bsz, "T": T, "D": Dm, "N": N, "dtype": str(dtype), "strength": strength, **errs, "tol": tol,
            "ok": all(v < tol for v in errs.values())}


def check_vmap(G=4, Bsz=8, T=64, Dm=64, N=4) -> dict:
    per = [inputs(Bsz, T, Dm, N, seed=i, dtype=torch.float32) for i in range(G)]
    stacked = [torch.stack([m[j] for m in per]) for j in range(7)]
    res = {}
    for impl in ("triton", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in stacked]

        def one(u, delta, A, B, C, D, h0, impl=impl):
            return selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, impl=impl)

        y, h = torch.func.vmap(one)(*leaves)
        res[impl] = [y, h, *torch.autograd.grad(y.square().sum() + h.sum(), leaves)]
    errs = {f"{k}_rel": rel(a, b) for k, a, b in zip(NAMES, res["triton"], res["torch"])}
    return {"G": G, "B": Bsz, "T": T, "D": Dm, "N": N, **errs, "ok": all(v < 1e-4 for v in errs.values())}


def timing(Bsz, T, Dm, N, dtype) -> dict:
    ins = inputs(Bsz, T, Dm, N, dtype=dtype)
    leaves = [t.clone().requires_grad_(True) for t in ins]
    res = {"B": Bsz, "T": T, "D": Dm, "N": N, "dtype": str(dtype)}
    for impl in ("triton", "torch"):
        def fwd(impl=impl):
            with torch.no_grad():
                return selective_scan(*ins[:6], initial_state=ins[6], impl=impl)[0]

        def fwdbwd(impl=impl):
            y, _ = selective_scan(*leaves[:6], initial_state=leaves[6], impl=impl)
            return torch.autograd.grad(y.float().square().sum(), leaves)

        res[f"{impl}_fwd_ms"] = bench(fwd)
        res[f"{impl}_fwdbwd_ms"] = bench(fwdbwd)
        res[f"{impl}_fwdbwd_peak_mb"] = peak_mb(fwdbwd)
    res["speedup_fwd"] = res["torch_fwd_ms"] / res["triton_fwd_ms"]
    res["speedup_fwdbwd"] = res["torch_fwdbwd_ms"] / res["triton_fwdbwd_ms"]
    return res


def tile_sweep(Bsz, T, Dm, N, dtype) -> dict:
    """fwd and fwd+bwd of the kernel at other tiles (TUNE BD x num_warps, PREFETCH): at a small batch the sequential
    loop is latency-bound (~1 µs per step with 2 programs per SM at B=4, D=2048), more, narrower programs
    may hide it."""
    ins = inputs(Bsz, T, Dm, N, dtype=dtype)
    leaves = [t.clone().requires_grad_(True) for t in ins]
    out = {"B": Bsz, "T": T, "D": Dm, "N": N, "variants": []}
    for bd, warps, pre in ((32, 4, False), (32, 4, True), (16, 2, False), (8, 1, False), (8, 1, True), (16, 4, False),
                           (8, 2, False), (4, 1, False), (4, 1, True), (2, 1, False)):
        with tuned(tri.TUNE, BD=bd, num_warps=warps, PREFETCH=pre):
            fwd = bench(lambda: selective_scan(*ins[:6], initial_state=ins[6], impl="triton")[0])
            fb = bench(lambda: torch.autograd.grad(
                selective_scan(*leaves[:6], initial_state=leaves[6], impl="triton")[0].float().square().sum(), leaves))
        out["variants"].append({"BD": bd, "num_warps": warps, "prefetch": pre, "fwd_ms": fwd, "fwdbwd_ms": fb})
    best = min(out["variants"], key=lambda v: v["fwdbwd_ms"])
    out["best"] = (f"BD {best['BD']} warps {best['num_warps']} prefetch {best['prefetch']}: {best['fwd_ms']:.3f} / "
                   f"{best['fwdbwd_ms']:.3f} ms")
    return out


def scan_auto(on: bool):
    return switched(scan_api, SCAN_TRITON_AUTO=on)


def zoo_group(d_model, T=64) -> dict:
    from attnzoo.bench.zoo.presets import get_preset
    from attnzoo.bench.zoo.throughput import case_spec, time_group

    preset = get_preset("paper")
    spec = case_spec("mamba", d_model, T, preset.vocab_size, batch=16 if SMOKE else None)
    res = {"d_model": d_model, "T": T, "batch": spec["batch"], "group_size": 4}
    for name, on in (("torch", False), ("triton", True)):
        with scan_auto(on):
            res[f"{name}_s_per_step"] = time_group(spec, preset, device=DEV, group_size=4, graph=DEV == "cuda",
                                                   steps=2 if SMOKE else 20, warmup=1 if SMOKE else 3)
    res["speedup"] = res["torch_s_per_step"] / res["triton_s_per_step"]
    res["triton_1500_steps_s"] = 1500 * res["triton_s_per_step"]
    return res


def main():
    a = script_args(__doc__, budget=150.0)
    log = CaseLog(a.out / "gpu_scan.json", {"machine": machine_line(DEV), "smoke": SMOKE, "tune": dict(tri.TUNE)},
                  budget_s=a.budget, t0=T0)
    small = SMOKE
    log.run("check mamba bf16", lambda: check(1, 70, 24, 16) if small else check(2, 1030, 1536, 16))
    log.run("check zoo fp32", lambda: check(8, 16, 20, 4, torch.float32) if small else
            check(2048, 64, 256, 4, torch.float32))
    log.run("check strong bf16", lambda: check(1, 40, 16, 4, strength=30.0) if small else
            check(2, 1030, 512, 16, strength=30.0))
    log.run("vmap", lambda: check_vmap(2, 2, 12, 16, 4) if small else check_vmap())
    log.run("time mamba bf16", lambda: timing(1, 40, 16, 16, torch.bfloat16) if small else
            timing(4, 2048, 2048, 16, torch.bfloat16))
    log.run("time zoo fp32", lambda: timing(8, 16, 20, 4, torch.float32) if small else
            timing(2048, 64, 256, 4, torch.float32))
    log.run("tiles mamba bf16", lambda: tile_sweep(1, 40, 16, 16, torch.bfloat16) if small else
            tile_sweep(4, 2048, 2048, 16, torch.bfloat16))
    for d in ((16,) if small else (128, 256)):
        log.run(f"zoo mamba d={d}", lambda: zoo_group(d, T=16 if small else 64))
    print()
    print(log.summary(("ok", "speedup_fwd", "speedup_fwdbwd", "triton_fwdbwd_ms", "torch_fwdbwd_ms",
                      "torch_s_per_step", "triton_s_per_step", "speedup", "best")))

if __name__ == "__main__":
    main()
