"""GPU checks and timings of the fused row norms (ops/norm/triton.py) against their unfused torch formulas,
and what they do to whole delta-rule layers (issue #22: our gated_deltanet / deltanet layers took 11.0 / 9.25 ms
fwd+bwd against fla's 7.10 / 5.57 on an H100, ~4 ms of ours in unfused elementwise passes).

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_norm.py OUT_DIR          # a CUDA machine (~2 min on an H100)
    python3 benchmarks/gpu_norm.py OUT_DIR --smoke                     # tiny shapes, CPU, Triton interpreter

Cases (each its own try/except; OUT_DIR/gpu_norm.json rewritten after each):
- check: l2_norm and gated_rms_norm (silu) in bf16 at [4, 4096, 16, 128] against the float64 formulas: y and
  the gradients of x (gate, weight) (relative errors; ok < 2e-2), the torch path's error beside;
- time: fwd+bwd of each, fused against torch (do_bench medians);
- layer: gated_deltanet and deltanet (d_model 2048, 16 heads, B=4, T=4096, bf16) fwd+bwd with NORM_TRITON_AUTO
  off, then on.
If the checks pass and the fused norms are faster, set NORM_TRITON_AUTO = True in ops/norm/api.py.
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

import attnzoo  # noqa: E402
import attnzoo.ops.norm.api as norm_api  # noqa: E402
from attnzoo.bench.cases import CaseLog, rel_err, script_args  # noqa: E402
from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.timing import ms_timer, switched  # noqa: E402
from attnzoo.ops.norm import gated_rms_norm, l2_norm  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
DT = torch.float32 if SMOKE else torch.bfloat16
SHAPE = (1, 16, 2, 16) if SMOKE else (4, 4096, 16, 128)
T0 = time.time()
bench = ms_timer(DEV, cpu_repeats=1, cpu_warmup=0)


def ops():
    g = torch.Generator(device=DEV).manual_seed(0)
    x, z = (torch.randn(*SHAPE, device=DEV, generator=g).to(DT) for _ in range(2))
    w = 1 + 0.1 * torch.randn(SHAPE[-1], device=DEV, generator=g)
    return {"l2": (lambda x, z, w, impl: l2_norm(x, impl=impl), (x,)),
            "gated": (lambda x, z, w, impl: gated_rms_norm(x, w, z, 1e-5, "silu", impl=impl), (x, z, w))}, (x, z, w)


def outs(fn, ins, full, impl, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in ins]
    args = dict(zip(("x", "z", "w"), full))
    args.update(zip(("x", "z", "w"), leaves))
    y = fn(args["x"], args["z"], args["w"], impl)
    dy = torch.randn(y.shape, device=DEV, generator=torch.Generator(device=DEV).manual_seed(9))
    return [y, *torch.autograd.grad((y.double() * dy).sum(), leaves)]


def check(name) -> dict:
    table, full = ops()
    fn, ins = table[name]
    want = outs(fn, ins, [t.double() for t in full], "reference", torch.float64)
    res = {"op": name}
    for impl in ("triton", "torch"):
        got = outs(fn, ins, full, impl)
        res.update({f"{impl}_{k}_rel": rel_err(a, b) for k, a, b in zip(("y", "dx", "dz", "dw"), got, want)})
    res["ok"] = all(v < 2e-2 for k, v in res.items() if k.startswith("triton_") and k.endswith("_rel"))
    return res


def timing(name) -> dict:
    table, full = ops()
    fn, ins = table[name]
    leaves = [t.clone().requires_grad_(True) for t in ins]
    args = dict(zip(("x", "z", "w"), full))
    args.update(zip(("x", "z", "w"), leaves))
    res = {"op": name, "shape": list(SHAPE), "dtype": str(DT)}
    for impl in ("triton", "torch"):
        def fwdbwd(impl=impl):
            y = fn(args["x"], args["z"], args["w"], impl)
            return torch.autograd.grad(y, leaves, torch.ones_like(y))
        res[f"{impl}_fwdbwd_ms"] = bench(fwdbwd)
    res["speedup"] = res["torch_fwdbwd_ms"] / res["triton_fwdbwd_ms"]
    return res


def layer(name) -> dict:
    d, B, T = (32, 1, 16) if SMOKE else (2048, 4, 4096)
    m = attnzoo.build(name, d_model=d, n_heads=2 if SMOKE else 16).to(DEV, DT)
    x = torch.randn(B, T, d, device=DEV, dtype=DT, requires_grad=True)
    params = [p for p in m.parameters() if p.requires_grad]
    res = {"mixer": name, "d_model": d, "B": B, "T": T}
    for label, on in (("unfused", False), ("fused", True)):
        with switched(norm_api, NORM_TRITON_AUTO=on):
            res[f"{label}_fwdbwd_ms"] = bench(lambda: torch.autograd.grad(m(x).float().sum(), [x, *params]))
    res["speedup"] = res["unfused_fwdbwd_ms"] / res["fused_fwdbwd_ms"]
    return res


def main():
    a = script_args(__doc__, budget=150.0)
    log = CaseLog(a.out / "gpu_norm.json", {"machine": machine_line(DEV), "smoke": SMOKE}, budget_s=a.budget, t0=T0)
    for name in ("l2", "gated"):
        log.run(f"check {name}", lambda: check(name))
    for name in ("l2", "gated"):
        log.run(f"time {name}", lambda: timing(name))
    for name in ("gated_deltanet", "deltanet"):
        log.run(f"layer {name}", lambda: layer(name))
    print()
    print(log.summary(("ok", "triton_fwdbwd_ms", "torch_fwdbwd_ms", "unfused_fwdbwd_ms", "fused_fwdbwd_ms",
                       "speedup")))


if __name__ == "__main__":
    main()
