"""Where the time goes in the two Triton gaps that 2026-12-07's H100 run left open (issue #22), one device call:

    PYTHONUNBUFFERED=1 timeout 240 python3 benchmarks/gpu_profile_gaps.py OUT_DIR     # a CUDA machine, ~2 minutes
    python3 benchmarks/gpu_profile_gaps.py OUT_DIR --smoke                           # CPU, Triton interpreter

1. The vector-gate GLA chunked path is 2.9x slower with strong gates (logsigmoid(x): 6.4 ms fwd+bwd at
   16k tokens) than with weak ones (logsigmoid(x)/16: 2.2 ms): the CUDA kernels of one fwd+bwd call in each
   regime, by total time (torch.profiler), so the strongly forgetting chunks' extra kernels show by name.
2. The delta-rule decode step (one token, B=64, state given) takes 0.153 ms against fla's 0.078: the same
   call timed eager and replayed from a CUDA graph (the difference is host time: Python checks, reshapes,
   the launch), and its kernels' own time from the profiler; the GLA decode step (scalar and vector gate)
   beside it, same method; and the delta decode kernel under other launch configs (V block, warps).
3. The gated delta rule's fwd+bwd is 0.87-0.90x fla's from 4k tokens (results/speed_goals_h100/): its kernels
   by total time at B=16 T=1024 and B=1 T=16384 (weak gates, the case fla wins by most), and the forward
   alone, so the slow kernels show by name (`--only "gated delta"`).
bf16, H=16, D=128. Every case in its own try/except; OUT_DIR/profile_gaps.json (machine line, records) is
rewritten after each; a short table closes the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_delta_setup  # noqa: E402 (its inputs; same device, dtype, H and D rule as this script's)

from attnzoo.bench.cases import CaseLog, script_args  # noqa: E402
from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.timing import capture_cuda_graph, device_us, ms_timer, tuned  # noqa: E402
from attnzoo.ops.delta import delta_rule  # noqa: E402
from attnzoo.ops.linear import gated_linear_attention  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
DT = torch.float32 if SMOKE else torch.bfloat16
H, D = (2, 16) if SMOKE else (16, 128)


bench = ms_timer(DEV, cpu_repeats=1, cpu_warmup=0)  # smoke: one interpreter call, meaningless as a time


def kernels(fn, calls: int = 3, top: int = 15) -> list[dict]:
    """The device kernels (CPU ops in the smoke mode) of `calls` calls of fn, by total time per call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    acts = [ProfilerActivity.CPU] if SMOKE else [ProfilerActivity.CUDA]
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        if not SMOKE:
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = e.self_cpu_time_total if SMOKE else device_us(e)
        if us > 0:
            rows.append({"name": e.key[:90], "ms_per_call": us / 1e3 / calls, "count_per_call": e.count / calls})
    return sorted(rows, key=lambda r: -r["ms_per_call"])[:top]


def graph_ms(fn):
    """fn replayed from a CUDA graph (no host work per call); None in the smoke mode, the error's text
    where the call cannot be captured (a host synchronisation inside, say)."""
    if SMOKE:
        return None
    try:
        return bench(capture_cuda_graph(fn).replay)
    except Exception as e:  # recorded: the eager time and the kernels still come
        return f"{type(e).__name__}: {e}"[:200]


def gla_inputs(B, T, vector, strong, grad, seed=0):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=DEV, generator=gen)  # noqa: E731
    q, k, v = (r(B, T, H, D).to(DT).requires_grad_(grad) for _ in range(3))
    g = F.logsigmoid(r(B, T, H, *((D,) if vector else ())))
    return q, k, v, (g if strong else g / 16).requires_grad_(grad)


def gla_regimes():
    B, T = (1, 40) if SMOKE else (4, 4096)
    out = {"B": B, "T": T}
    for regime in ("weak", "strong"):
        q, k, v, g = gla_inputs(B, T, True, regime == "strong", True)
        do = torch.randn_like(v)

        def step(q=q, k=k, v=v, g=g, do=do):
            o = gated_linear_attention(q, k, v, g, impl="triton")[0]
            torch.autograd.grad(o, (q, k, v, g), do)

        out[f"{regime}_fwdbwd_ms"] = bench(step)
        out[f"{regime}_kernels"] = kernels(step)
    return out


def delta_regimes():
    out = {}
    for B, T in ((1, 40),) if SMOKE else ((16, 1024), (1, 16384)):
        q, k, v, beta, g, _ = gpu_delta_setup.inputs(B, T, "strong", seed=T)   # g = logsigmoid(x)
        g = g / 16                                       # the speed table's weak gates, logsigmoid(x) / 16
        q, k, v, beta, g = (x.requires_grad_() for x in (q, k, v, beta, g))
        do = torch.randn_like(v)

        def fwd(q=q, k=k, v=v, beta=beta, g=g):
            with torch.no_grad():
                return delta_rule(q, k, v, beta, g, impl="triton")[0]

        def step(q=q, k=k, v=v, beta=beta, g=g, do=do):
            o = delta_rule(q, k, v, beta, g, impl="triton")[0]
            torch.autograd.grad(o, (q, k, v, beta, g), do)

        key = f"B{B}_T{T}"
        out[f"{key}_fwd_ms"], out[f"{key}_fwdbwd_ms"] = bench(fwd), bench(step)
        out[f"{key}_fwd_kernels"], out[f"{key}_kernels"] = kernels(fwd), kernels(step, top=20)
    return out


def decode_case():
    B = 4 if SMOKE else 64
    gen = torch.Generator(device=DEV).manual_seed(1)
    r = lambda *s: torch.randn(*s, device=DEV, generator=gen)  # noqa: E731
    q, v = r(B, 1, H, D).to(DT), r(B, 1, H, D).to(DT)
    k = F.normalize(r(B, 1, H, D), dim=-1).to(DT)
    beta, g, S0 = torch.sigmoid(r(B, 1, H)).to(DT), F.logsigmoid(r(B, 1, H) + 4), r(B, H, D, D)
    gv = F.logsigmoid(r(B, 1, H, D)) / 16
    kw = {"initial_state": S0, "output_final_state": True, "impl": "triton"}
    calls = {
        "delta (gated)": lambda: delta_rule(q, k, v, beta, g, **kw),
        "delta (no gate)": lambda: delta_rule(q, k, v, beta, None, **kw),
        "gla scalar": lambda: gated_linear_attention(q, k, v, g, **kw),
        "gla vector": lambda: gated_linear_attention(q, k, v, gv, **kw),
    }
    out = {"B": B, "T": 1, "state_mib": S0.numel() * 4 / 2**20}
    with torch.no_grad():
        for name, fn in calls.items():
            rec = {"eager_ms": bench(fn), "graph_ms": graph_ms(fn), "kernels": kernels(fn, calls=10, top=6)}
            rec["kernel_ms"] = sum(x["ms_per_call"] for x in rec["kernels"])
            out[name] = rec
        out["delta decode launch configs"] = decode_configs(calls["delta (gated)"])
    return out


def decode_configs(fn) -> list[dict]:
    """The gated delta decode step under other launch configs of its kernel (ops/delta/triton/recurrent.TUNE),
    each timed eager (each config compiles once first)."""
    from attnzoo.ops.delta.triton import recurrent

    rows = []
    for bv in ((16, 32) if SMOKE else (8, 16, 32, 64, 128)):
        for warps in ((1, 4) if SMOKE else (1, 2, 4, 8)):
            with tuned(recurrent.TUNE, bv=bv, num_warps=warps):
                try:
                    fn()
                    rows.append({"bv": bv, "num_warps": warps, "ms": bench(fn)})
                except Exception as e:  # recorded (a config that does not compile, say)
                    rows.append({"bv": bv, "num_warps": warps, "error": f"{type(e).__name__}: {e}"[:200]})
    return rows


def main():
    a = script_args(__doc__, only=True)
    log = CaseLog(a.out / "profile_gaps.json", {"machine": machine_line(DEV)}, only=a.only)
    gla = log.run("gla vector regimes", gla_regimes)
    dec = log.run("decode steps", decode_case)
    delta = log.run("gated delta regimes", delta_regimes)
    print(f"\nmachine: {machine_line(DEV)}")
    for key in sorted(k[: -len("_fwdbwd_ms")] for k in delta if k.endswith("_fwdbwd_ms")):
        print(f"\ngated delta rule, weak gates, {key}: fwd {delta[key + '_fwd_ms']:.3f} ms, fwd+bwd "
              f"{delta[key + '_fwdbwd_ms']:.3f} ms; kernels (ms per call, launches per call):")
        for x in delta[key + "_kernels"][:14]:
            print(f"  {x['ms_per_call']:8.3f}  x{x['count_per_call']:<4g} {x['name']}")
    if "error" not in gla and "skipped" not in gla:
        for regime in ("weak", "strong"):
            print(f"\nGLA vector gate, {regime} gates, B={gla['B']} T={gla['T']}: fwd+bwd "
                  f"{gla[regime + '_fwdbwd_ms']:.3f} ms; kernels (ms per call, launches per call):")
            for x in gla[regime + "_kernels"][:10]:
                print(f"  {x['ms_per_call']:8.3f}  x{x['count_per_call']:<4g} {x['name']}")
    if "error" not in dec and "skipped" not in dec:
        print(f"\ndecode, one token, B={dec['B']} (state {dec['state_mib']:.0f} MiB fp32):")
        print("| call | eager ms | CUDA graph ms | kernels ms |")
        print("|---|---|---|---|")
        for name in ("delta (gated)", "delta (no gate)", "gla scalar", "gla vector"):
            r = dec[name]
            gm = f"{r['graph_ms']:.4f}" if isinstance(r["graph_ms"], float) else str(r["graph_ms"])[:40]
            print(f"| {name} | {r['eager_ms']:.4f} | {gm} | {r['kernel_ms']:.4f} |")
        best = min((r for r in dec["delta decode launch configs"] if "ms" in r), key=lambda r: r["ms"], default=None)
        print("delta decode launch configs (bv, warps: ms):", ", ".join(
            f"{r['bv']},{r['num_warps']}: {r['ms']:.4f}" for r in dec["delta decode launch configs"] if "ms" in r),
            f"; best {best}" if best else "")
    print("errors:", log.failed() or "none")


if __name__ == "__main__":
    main()
