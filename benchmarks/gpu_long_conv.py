"""GPU checks and timings of the long causal conv's direct forms (ops/conv/long.py): F.conv1d (cuDNN's depthwise
conv) against the Toeplitz matmul (LONG_CONV_DIRECT = "toeplitz") and the FFT, and what the switch does to the
zoo's convolution groups (issue #23: h3's d=256 group took 464 s for 1500 steps, the grid's slowest).

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_long_conv.py OUT_DIR      # a CUDA machine (~2 min on an H100)
    python3 benchmarks/gpu_long_conv.py OUT_DIR --smoke                 # tiny shapes on the CPU

Cases (each its own try/except; OUT_DIR/gpu_long_conv.json rewritten after each):
- check: the Toeplitz form (fp32 and bf16 inputs) against the float64 sum over lags: y and the gradients of x
  and the kernel (relative errors; ok < 1e-4 fp32 with TF32 off, < 2e-2 bf16);
- time: fwd and fwd+bwd of conv1d / toeplitz / fft at the zoo's shapes (H3 at d=256: C = 512 channels of
  K̄V, kernel length T; T = 64 with 4 x 512 rows, T = 256 with 4 x 256 rows), peak memory;
- zoo: seconds per group step (paper preset, 4 learning rates as one model, CUDA graph) of h3, hyena,
  base_conv and Based at d=256, T=64, with LONG_CONV_DIRECT = "conv1d" then "toeplitz".
If the checks pass and the Toeplitz form is faster, set LONG_CONV_DIRECT = "toeplitz" in ops/conv/long.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnzoo.ops.conv.long as long_mod  # noqa: E402
from attnzoo.bench.cases import CaseLog, cuda_peak_mb as peak_mb, rel_err as rel, script_args  # noqa: E402
from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.timing import ms_timer, switched  # noqa: E402
from attnzoo.ops.conv.long import fast_causal_conv  # noqa: E402
from attnzoo.ops.conv.reference import direct_causal_conv  # noqa: E402

SMOKE = "--smoke" in sys.argv
DEV = "cpu" if SMOKE else "cuda"
T0 = time.time()
bench = ms_timer(DEV, cpu_repeats=1, cpu_warmup=0)


def direct(path: str):
    return switched(long_mod, LONG_CONV_DIRECT=path)


def inputs(B, T, C, dtype):
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(B, T, C, device=DEV, generator=g).to(dtype)
    k = torch.randn(C, T, device=DEV, generator=g) * torch.exp(-torch.arange(T, device=DEV) / 16.0) / 4
    return x, k


def check(B, T, C, dtype) -> dict:
    x, k = inputs(B, T, C, dtype)
    dy = torch.randn(B, T, C, device=DEV)
    out = {}
    for name, fn, dt in (("toeplitz", lambda a, b: fast_causal_conv(a, b, fft=False), None),
                         ("ref", direct_causal_conv, torch.float64)):
        xl = x.detach().to(dt or x.dtype).requires_grad_()
        kl = k.detach().to(dt or k.dtype).requires_grad_()
        with direct("toeplitz"):
            y = fn(xl, kl)
        out[name] = [y, *torch.autograd.grad((y.double() * dy).sum(), [xl, kl])]
    errs = {f"{n}_rel": rel(a, b) for n, a, b in zip(("y", "dx", "dk"), out["toeplitz"], out["ref"])}
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    return {"B": B, "T": T, "C": C, "dtype": str(dtype), **errs, "tol": tol, "ok": all(v < tol for v in errs.values())}


def timing(B, T, C, dtype) -> dict:
    x, k = inputs(B, T, C, dtype)
    xl, kl = x.clone().requires_grad_(), k.clone().requires_grad_()
    res = {"B": B, "T": T, "C": C, "dtype": str(dtype)}
    for name, fft, path in (("conv1d", False, "conv1d"), ("toeplitz", False, "toeplitz"), ("fft", True, "conv1d")):
        def fwd(fft=fft, path=path):
            with torch.no_grad(), direct(path):
                return fast_causal_conv(x, k, fft=fft)

        def fwdbwd(fft=fft, path=path):
            with direct(path):
                y = fast_causal_conv(xl, kl, fft=fft)
            return torch.autograd.grad(y.float().square().sum(), [xl, kl])

        res[f"{name}_fwd_ms"] = bench(fwd)
        res[f"{name}_fwdbwd_ms"] = bench(fwdbwd)
        res[f"{name}_fwdbwd_peak_mb"] = peak_mb(fwdbwd)
    res["toeplitz_speedup_fwdbwd"] = res["conv1d_fwdbwd_ms"] / res["toeplitz_fwdbwd_ms"]
    return res


def zoo_group(mixer, d_model, T=64) -> dict:
    from attnzoo.bench.zoo.presets import get_preset
    from attnzoo.bench.zoo.throughput import case_spec, time_group

    preset = get_preset("paper")
    spec = case_spec(mixer, d_model, T, preset.vocab_size, batch=8 if SMOKE else None)
    res = {"mixer": mixer, "d_model": d_model, "T": T, "batch": spec["batch"], "group_size": 4}
    for path in ("conv1d", "toeplitz"):
        with direct(path):
            res[f"{path}_s_per_step"] = time_group(spec, preset, device=DEV, group_size=4, graph=DEV == "cuda",
                                                   steps=2 if SMOKE else 15, warmup=1 if SMOKE else 3)
    res["speedup"] = res["conv1d_s_per_step"] / res["toeplitz_s_per_step"]
    return res


def main():
    a = script_args(__doc__, budget=150.0)
    torch.backends.cuda.matmul.allow_tf32 = False  # the checks' fp32 tolerance; timings say which they ran
    log = CaseLog(a.out / "gpu_long_conv.json", {"machine": machine_line(DEV), "smoke": SMOKE,
                                                 "tf32": torch.backends.cuda.matmul.allow_tf32},
                  budget_s=a.budget, t0=T0)
    s = (2, 16, 8) if SMOKE else None
    log.run("check fp32", lambda: check(*(s or (2048, 64, 512)), torch.float32))
    log.run("check bf16", lambda: check(*(s or (1024, 256, 512)), torch.bfloat16))
    log.run("time T=64 fp32", lambda: timing(*(s or (2048, 64, 512)), torch.float32))
    log.run("time T=256 fp32", lambda: timing(*(s or (1024, 256, 512)), torch.float32))
    for mixer in ("h3", "hyena", "base_conv", "base_conv,based"):
        log.run(f"zoo {mixer} d=256", lambda: zoo_group(mixer, 16 if SMOKE else 256, T=16 if SMOKE else 64))
    print()
    print(log.summary(("ok", "conv1d_fwdbwd_ms", "toeplitz_fwdbwd_ms", "fft_fwdbwd_ms",
                      "toeplitz_speedup_fwdbwd", "conv1d_s_per_step", "toeplitz_s_per_step", "speedup")))

if __name__ == "__main__":
    main()
