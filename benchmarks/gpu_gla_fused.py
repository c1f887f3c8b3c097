"""Fused short-sequence GLA kernels against the chunked multi-kernel path and fla, on one GPU (issue #22 item 2).

    PYTHONUNBUFFERED=1 timeout 470 python3 benchmarks/gpu_gla_fused.py OUT > OUT/gla_fused.log 2>&1
    python3 benchmarks/gpu_gla_fused.py OUT --smoke     # CPU, Triton interpreter, tiny shapes (times mean nothing)

Writes OUT/gla_fused.jsonl, one JSON line per record (appended as each finishes, so a run cut by its time
limit keeps what it measured), the first line the machine (GPU, SMs, driver, torch, Triton, CUDA):
  - "check": the fused path (fused.FORCE = True) against the float32 loop (impl="reference" on float32
    copies) at H = 4, D = 128 (and 16, 48), bf16, odd T, with an initial state and a final-state gradient,
    scalar and vector gate, weak and strong gates, plus varlen; max relative error over o, S and every
    gradient (the chunked path's GPU checks give 2-7e-3 in bf16: notes/triton_gla.md).
  - "launches": CUDA kernels per fwd+bwd call (torch.profiler) of fused and chunked at T = 256.
  - "graph": fused fwd+bwd captured in a CUDA graph (no host synchronisation inside) and replayed.
  - "time": providers fused / chunked (attnzoo's Triton op with fused.FORCE on / off) / fla
    (chunk_simple_gla, chunk_gla, when fla imports; Hopper guard lifted for speed only), modes fwd and
    fwdbwd, bf16, H = 16, D = 128, B·T = --tokens (16k), T = --Ts, gates scalar and vector, regimes weak
    (logsigmoid(x) / 16) and strong (logsigmoid(x)); attnzoo.bench.speed.timed_rounds (do_bench
    medians, providers interleaved in rotated order, --rounds rounds).
Then prints a table of fused/chunked and fused/fla and the largest T at which fused beat chunked in
every fwd+bwd case: the measured value for fused.FUSED_MAX_T.

--sweep (a second call, OUT/gla_fused_sweep.jsonl): records "sweep", the fused path under each of
VARIANTS (settings of fused.TUNE, each compiling its kernels once) at T = 256 and 1024, weak gates,
fwd and fwdbwd, interleaved in timed_rounds like the providers above.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ARGS = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ARGS.add_argument("out")
ARGS.add_argument("--smoke", action="store_true", help="CPU through the Triton interpreter, tiny shapes")
ARGS.add_argument("--Ts", default="64,128,256,512,1024,2048,4096")
ARGS.add_argument("--tokens", type=int, default=16384)
ARGS.add_argument("--rounds", type=int, default=3)
ARGS.add_argument("--no-fla", action="store_true")
ARGS.add_argument("--no-checks", action="store_true")
ARGS.add_argument("--sweep", action="store_true", help="instead: fused launch configs (fused.TUNE) at T = 256, 1024")
OPT = ARGS.parse_args()
if OPT.smoke:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnzoo.bench.speed import fla_module, machine_line, timed_rounds  # noqa: E402
from attnzoo.bench.timing import capture_cuda_graph, tuned  # noqa: E402
from attnzoo.ops.linear import gated_linear_attention  # noqa: E402
from attnzoo.ops.linear.triton import fused  # noqa: E402

DEV = "cpu" if OPT.smoke else "cuda"
DTYPE = torch.float32 if OPT.smoke else torch.bfloat16  # the interpreter multiplies bf16 tiles wrongly
H, D = (2, 16) if OPT.smoke else (16, 128)
OUT = os.path.join(OPT.out, "gla_fused_sweep.jsonl" if OPT.sweep else "gla_fused.jsonl")
VARIANTS = {"base": {}, "fwd_bv128": {"fwd_bv": 128}, "fwd_w8": {"fwd_warps": 8}, "bwd_w4": {"bwd_warps": 4},
            "bt_bwd64": {"bt_scalar_bwd": 64}, "bt_fwd32": {"bt_scalar_fwd": 32}, "bt_vec32": {"bt_vector": 32},
            "stages1": {"fwd_stages": 1, "bwd_stages": 1}, "stages3": {"fwd_stages": 3, "bwd_stages": 3},
            "bwd_split": {"bwd_split": True}, "bt_bwd16": {"bt_scalar_bwd": 16}, "fwd_bv32": {"fwd_bv": 32},
            "dg_seg0": {"dg_seg": 0}, "dg_seg128": {"dg_seg": 128}, "dg_seg256": {"dg_seg": 256}}


def emit(rec):
    with open(OUT, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def inputs(B, T, h, d, gate, regime, rg, seed=0):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device=DEV, generator=gen)  # noqa: E731
    q, k, v = (rnd(B, T, h, d).to(DTYPE).requires_grad_(rg) for _ in range(3))
    g = torch.nn.functional.logsigmoid(rnd(B, T, h, *((d,) if gate == "vector" else ())))
    g = (g / 16 if regime == "weak" else g).requires_grad_(rg)
    return q, k, v, g


def forced(force, fn):
    def call():
        fused.FORCE = force
        return fn()
    return call


def op_call(provider, q, k, v, g, mode, fla):
    if provider in ("fused", "chunked"):
        base = lambda: gated_linear_attention(q, k, v, g, impl="triton")[0]  # noqa: E731
        base = forced(provider == "fused", base)
    else:
        f = fla["fla_gla" if g.dim() == 4 else "fla_simple_gla"]
        base = lambda: f(q, k, v, g, scale=q.shape[-1] ** -0.5)[0]  # noqa: E731
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                base()
        return fn
    do = torch.randn_like(v)
    return lambda: torch.autograd.grad(base(), (q, k, v, g), do)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check(T, gate, regime, cu=None, d=None):
    """Max relative error of the fused path (bf16) against the float32 loop, o, S and all gradients."""
    B = 1 if cu is not None else 2
    T = int(cu[-1]) if cu is not None else T
    h, d = (2, 16) if OPT.smoke else (4, d or 128)
    q, k, v, g = inputs(B, T, h, d, gate, regime, True, seed=1)
    n = B if cu is None else cu.shape[0] - 1
    h0 = torch.randn(n, h, d, d, device=DEV, requires_grad=True)
    do, dS = torch.randn_like(v, dtype=torch.float32), torch.randn(n, h, d, d, device=DEV)
    runs = []
    for impl, cast in (("triton", lambda x: x), ("reference", lambda x: x.float())):
        fused.FORCE = True
        ins = [cast(x.detach()).requires_grad_(True) for x in (q, k, v, g, h0)]
        o, S = gated_linear_attention(*ins[:4], initial_state=ins[4], output_final_state=True, cu_seqlens=cu,
                                      impl=impl)
        grads = torch.autograd.grad([o, S], ins, [do.to(o.dtype), dS])
        runs.append([o, S, *grads])
    errs = {name: rel(a, b) for name, a, b in zip(("o", "S", "dq", "dk", "dv", "dg", "dh0"), *runs)}
    emit({"kind": "check", "T": T, "D": d, "gate": gate, "regime": regime, "varlen": cu is not None,
          "max_rel": max(errs.values()), **errs})


def launches(T, gate):
    from torch.profiler import ProfilerActivity, profile

    B = max(1, OPT.tokens // T)
    q, k, v, g = inputs(B, T, H, D, gate, "weak", True)
    for provider in ("fused", "chunked"):
        fn = op_call(provider, q, k, v, g, "fwdbwd", None)
        fn()
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(3):
                fn()
            sync()
        kernels = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        emit({"kind": "launches", "provider": provider, "T": T, "B": B, "gate": gate,
              "kernels_per_call": len(kernels) / 3, "names": sorted({e.name[:60] for e in kernels})})


def graph(T, gate):
    """fused fwd+bwd in one CUDA graph: capture, then replay time against the eager call."""
    import triton

    B = max(1, OPT.tokens // T)
    q, k, v, g = inputs(B, T, H, D, gate, "weak", True)
    fn = op_call("fused", q, k, v, g, "fwdbwd", None)
    rec = {"kind": "graph", "T": T, "B": B, "gate": gate}
    try:
        cg = capture_cuda_graph(fn)
        cg.replay()
        sync()
        rec["graph_ms"] = triton.testing.do_bench(cg.replay, warmup=25, rep=100, return_mode="median")
        rec["eager_ms"] = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    except Exception as e:  # recorded: a capture failure is a finding
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    emit(rec)


def perf_ms(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def timings(fla):
    providers = ["fused", "chunked"] + (["fla"] if fla else [])
    Ts = [int(x) for x in OPT.Ts.split(",")] if not OPT.smoke else [16, 40]
    tokens = OPT.tokens if not OPT.smoke else 80
    for provider_set in ([p for p in providers if p != "fla"], ["fla"] if fla else []):  # fla last (slow compiles)
        for T in Ts:
            B = max(1, tokens // T)
            for gate in ("scalar", "vector"):
                for regime in ("weak", "strong"):
                    for mode in ("fwd", "fwdbwd"):
                        q, k, v, g = inputs(B, T, H, D, gate, regime, mode == "fwdbwd")
                        entries = []
                        for p in provider_set:
                            rec = {"kind": "time", "provider": p, "T": T, "B": B, "H": H, "D": D, "gate": gate,
                                   "regime": regime, "mode": mode}
                            try:
                                fn = op_call(p, q, k, v, g, mode, fla)
                                failed = len(fused.FAILED)
                                t0 = time.perf_counter()
                                fn()
                                sync()
                                rec["first_call_s"] = time.perf_counter() - t0
                                rec["fell_back"] = len(fused.FAILED) > failed  # fused did not compile
                            except Exception as e:
                                rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                                fn = None
                            entries.append((rec, fn))
                        timer = perf_ms if OPT.smoke else None
                        recs = timed_rounds(entries, OPT.rounds, **({"timer": timer} if timer else {}))
                        for rec in recs:
                            emit(rec)


def sweep():
    with tuned(fused.TUNE) as table:   # each variant's call sets its settings; the defaults come back after
        _sweep(table, dict(table))
    emit({"kind": "failed_configs", "fused_failed": [str(x) for x in sorted(fused.FAILED, key=str)]})


def _sweep(table: dict, base: dict):
    for T in ((16, 40) if OPT.smoke else (256, 1024)):
        B = max(1, (80 if OPT.smoke else OPT.tokens) // T)
        for gate in ("scalar", "vector"):
            for mode in ("fwd", "fwdbwd"):
                q, k, v, g = inputs(B, T, H, D, gate, "weak", mode == "fwdbwd")
                entries = []
                for name, settings in VARIANTS.items():
                    call = op_call("fused", q, k, v, g, mode, None)

                    def fn(call=call, settings=settings):
                        table.clear()
                        table.update({**base, **settings})
                        return call()
                    rec = {"kind": "sweep", "variant": name, "T": T, "B": B, "gate": gate, "mode": mode}
                    try:
                        failed = len(fused.FAILED)
                        fn()
                        if len(fused.FAILED) > failed:  # did not compile: the chunked path ran instead
                            rec["error"] = "fused.FAILED: this config fell back to the chunked path"
                    except Exception as e:  # recorded
                        rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    entries.append((rec, None if "error" in rec else fn))
                for rec in timed_rounds(entries, OPT.rounds, **({"timer": perf_ms} if OPT.smoke else {})):
                    emit(rec)


def table(path):
    recs = [json.loads(x) for x in open(path) if '"kind": "time"' in x]
    ms = {(r["provider"], r["T"], r["gate"], r["regime"], r["mode"]): r.get("ms") for r in recs}
    print("\n| mode | gate | regime | T | B | fused ms | chunked ms | fla ms | fused/chunked | fused/fla |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    best = {}
    for (p, T, gate, regime, mode), f in sorted(ms.items(), key=lambda x: (x[0][4], x[0][2], x[0][3], x[0][1])):
        if p != "fused" or f is None:
            continue
        c, a = ms.get(("chunked", T, gate, regime, mode)), ms.get(("fla", T, gate, regime, mode))
        B = next(r["B"] for r in recs if r["T"] == T)
        fmt = lambda x: f"{x:.3f}" if x else "-"  # noqa: E731
        print(f"| {mode} | {gate} | {regime} | {T} | {B} | {f:.3f} | {fmt(c)} | {fmt(a)} | "
              f"{fmt(f / c if c else None)} | {fmt(f / a if a else None)} |")
        if mode == "fwdbwd" and c:
            best.setdefault(T, []).append(f < c)
    wins = [T for T in sorted(best) if all(best[T])]
    print(f"\nT where fused beat chunked in every fwd+bwd case: {wins}; FUSED_MAX_T now {fused.FUSED_MAX_T}")


def main():
    os.makedirs(OPT.out, exist_ok=True)
    if os.path.exists(OUT):
        os.remove(OUT)
    emit(machine_line() if DEV == "cuda" else {"machine": {"device": "cpu (Triton interpreter)",
                                                           "torch": torch.__version__}})
    torch.manual_seed(0)
    if OPT.sweep:
        sweep()
        return
    if not OPT.no_checks:
        cu = torch.tensor([0, 5, 5, 29, 40] if OPT.smoke else [0, 100, 100, 377, 512], device=DEV, dtype=torch.int32)
        for gate in ("scalar", "vector"):
            dims = (16, 48) if gate == "scalar" else (16,)  # small and odd head dims too (each compiles anew)
            for regime, c, d in (("weak", None, None), ("strong", None, None), ("strong", cu, None),
                                 *(("weak", None, d) for d in dims)):
                try:
                    check(37 if OPT.smoke else 300, gate, regime, cu=c, d=d)
                except Exception as e:  # recorded, and the timings still run
                    emit({"kind": "check", "gate": gate, "regime": regime, "error": f"{type(e).__name__}: {e}"[:400]})
    if DEV == "cuda":
        for gate in ("scalar", "vector"):
            launches(256, gate)
            graph(256, gate)
    fla = None if (OPT.no_fla or OPT.smoke) else fla_module()
    if fla is None and not OPT.smoke:
        print("fla: not importable or --no-fla (no fla column)", flush=True)
    timings(fla)
    fused.FORCE = None
    emit({"kind": "failed_configs", "fused_failed": [str(x) for x in sorted(fused.FAILED, key=str)]})
    table(OUT)


if __name__ == "__main__":
    main()
