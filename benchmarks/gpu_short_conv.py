"""GPU checks and timings of the short causal conv (issue #22): is the conv why our deltanet / gated_deltanet
layers take 16-18 ms fwd+bwd on an H100 where fla's take 7 ms (same projections, delta-rule ops on par)?

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_short_conv.py OUT_DIR          # a CUDA machine (< 4 min on an H100)
    python3 benchmarks/gpu_short_conv.py OUT_DIR --smoke                     # tiny shapes, CPU, Triton interpreter

Three conv paths of ops.conv.causal_conv1d (W = 4, SiLU, as DeltaNet's conv over q/k/v, C = 3 · 2048):
"conv1d" (F.conv1d groups=C on a transposed [B, C, T] copy: cuDNN), "shift" (W shifted multiply-adds,
SHORT_CONV_TORCH = "shift") and "triton" (ops/conv/triton/, SHORT_CONV_TRITON_AUTO = True). Cases:
- check: the Triton conv in bf16 (with bias and initial_state) against the float32 conv1d path at
  [4, 4096, 6144]: y, final state, dx, dweight, dbias, d initial_state (relative errors; ok < 2e-2); shift too;
- conv: fwd and fwd+bwd (grads of x and weight) of each path alone, [4, 4096, 6144] and [16, 1024, 6144] bf16,
  and a few Triton tile settings (ops/conv/triton/api.py TUNE; the shipped ones from sm_90 register counts,
  untimed) at the first shape;
- layer: the whole deltanet and gated_deltanet layers (attnzoo.build(name, d_model=2048, n_heads=16)), bf16,
  B=4, T=4096, fwd+bwd (grads of x and every parameter) with each conv path;
- compiled: the shift path and the Triton conv under torch.compile at the first shape (last: the budget may skip it);
- profile: torch.profiler of one gated_deltanet fwd+bwd (default conv1d path, then the Triton conv), top 15
  kernels by self CUDA time (also in OUT_DIR/profile_gated_deltanet.txt).
Times are medians of triton.testing.do_bench (attnzoo.bench.speed.do_bench_ms). Every case is its own
try/except; OUT_DIR/short_conv.json (machine line, records) is rewritten after each; --budget seconds (default
200) skips what is left once spent. If the Triton conv is correct and fastest, set SHORT_CONV_TRITON_AUTO = True.
"""

from __future__ import annotations

import contextlib
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
import attnzoo.ops.conv.api as conv_api  # noqa: E402
import attnzoo.ops.conv.triton.api as tri  # noqa: E402
from attnzoo.bench.cases import CaseLog, script_args  # noqa: E402
from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.timing import ms_timer, tuned  # noqa: E402
from attnzoo.ops.conv import causal_conv1d  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
DT = torch.float32 if SMOKE else torch.bfloat16  # smoke: the interpreter on the CPU
PATHS = ("conv1d", "shift", "triton")
W = 4
T0 = time.time()
LOG: CaseLog | None = None  # main() makes it
MACHINE = {"machine": machine_line(DEV), "dtype": str(DT), "W": W, "smoke": SMOKE, "triton_tune": dict(tri.TUNE)}


bench = ms_timer(DEV, cpu_repeats=1, cpu_warmup=0)  # smoke: one interpreter call, meaningless as a time


@contextlib.contextmanager
def conv_path(path: str):
    """causal_conv1d's impl="auto" takes `path` inside the block (the module switches of ops/conv/api.py). On
    the CPU (smoke) "auto" never takes Triton, so there the triton path forces impl="triton" instead."""
    old = conv_api.SHORT_CONV_TORCH, conv_api.SHORT_CONV_TRITON_AUTO, conv_api._resolve
    conv_api.SHORT_CONV_TORCH = "shift" if path == "shift" else "conv1d"
    conv_api.SHORT_CONV_TRITON_AUTO = path == "triton"
    if SMOKE and path == "triton":
        conv_api._resolve = lambda impl, *a, **k: "triton" if impl == "auto" else old[2](impl, *a, **k)
    try:
        yield
    finally:
        conv_api.SHORT_CONV_TORCH, conv_api.SHORT_CONV_TRITON_AUTO, conv_api._resolve = old


@contextlib.contextmanager
def count_kernel_calls():
    """How many times the Triton forward ran inside the block: {"n": ...}."""
    n, fwd = {"n": 0}, tri._fwd

    def counted(*a):
        n["n"] += 1
        return fwd(*a)

    tri._fwd = counted
    try:
        yield n
    finally:
        tri._fwd = fwd


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(B, T, C, seed=0, bias=False, state=False):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(B, T, C, device=DEV, generator=g).to(DT)
    w = torch.randn(C, W, device=DEV, generator=g) / W ** 0.5
    b = torch.randn(C, device=DEV, generator=g) if bias else None
    s = torch.randn(B, W - 1, C, device=DEV, generator=g).to(DT) if state else None
    return x, w, b, s


def grads_of(path, x, w, b, s, dy, dS, dtype):
    leaves = [t.detach().to(dtype).requires_grad_(True) if t is not None else None for t in (x, w, b, s)]
    with conv_path(path):
        y, S = causal_conv1d(*leaves[:3], initial_state=leaves[3], output_final_state=True, activation="silu")
    g = torch.autograd.grad([y, S], [t for t in leaves if t is not None], [dy.to(y.dtype), dS.to(S.dtype)])
    return dict(zip(("y", "final", "dx", "dw", "db", "ds"), (y, S, *g)))


def check_case(B, T, C) -> dict:
    x, w, b, s = inputs(B, T, C, seed=1, bias=True, state=True)
    dy, dS = torch.randn_like(x), torch.randn_like(s)
    ref = grads_of("conv1d", x, w, b, s, dy, dS, torch.float32)
    res = {"B": B, "T": T, "C": C}
    for path in ("triton", "shift"):
        got = grads_of(path, x, w, b, s, dy, dS, DT)
        errs = {k: rel(got[k], ref[k]) for k in ref}
        res.update({f"{path}_{k}_rel": v for k, v in errs.items()})
        res[f"{path}_ok"] = all(v < 2e-2 for v in errs.values())
        res[f"{path}_y_dtype"] = str(got["y"].dtype)
    res["ok"] = res["triton_ok"]
    return res


def conv_case(B, T, C, paths=PATHS) -> dict:
    x, w, _, _ = inputs(B, T, C, seed=2)
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    dy = torch.randn_like(x)
    res = {"B": B, "T": T, "C": C}
    for path in paths:
        with conv_path(path):
            def fwd():
                with torch.no_grad():
                    return causal_conv1d(x, w, activation="silu")[0]

            def fwdbwd():
                return torch.autograd.grad(causal_conv1d(xg, wg, activation="silu")[0], [xg, wg], dy)

            res[f"{path}_fwd_ms"] = bench(fwd)
            res[f"{path}_fwdbwd_ms"] = bench(fwdbwd)
    return res


def compiled_case(B, T, C) -> dict:
    """The shift path and the Triton conv (its custom op) under torch.compile (inductor fuses the shift path's
    multiply-adds and SiLU; smoke: aot_eager), fwd and fwd+bwd, beside the eager times of conv_case."""
    x, w, _, _ = inputs(B, T, C, seed=2)
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    dy = torch.randn_like(x)
    res = {"B": B, "T": T, "C": C}
    for path in ("shift", "triton"):
        with conv_path(path):
            f = torch.compile(lambda x, w: causal_conv1d(x, w, activation="silu")[0],
                              backend="aot_eager" if SMOKE else "inductor")
            t = time.time()
            torch.autograd.grad(f(xg, wg), [xg, wg], dy)
            res[f"{path}_compile_s"] = time.time() - t

            def fwd():
                with torch.no_grad():
                    return f(x, w)

            res[f"{path}_compiled_fwd_ms"] = bench(fwd)
            res[f"{path}_compiled_fwdbwd_ms"] = bench(lambda: torch.autograd.grad(f(xg, wg), [xg, wg], dy))
    return res


def tile_case(B, T, C, tune: dict) -> dict:
    with tuned(tri.TUNE, **tune):
        return {**tune, **conv_case(B, T, C, paths=("triton",))}


def layer_call(name, B, T, d_model, H, with_output=False):
    torch.manual_seed(0)
    m = attnzoo.build(name, d_model=d_model, n_heads=H).to(DEV, DT)
    x = torch.randn(B, T, d_model, device=DEV, dtype=DT, requires_grad=True)
    dy = torch.randn_like(x)
    params = [p for p in m.parameters() if p.requires_grad]
    fn = lambda: torch.autograd.grad(m(x), [x, *params], dy)  # noqa: E731
    if not with_output:
        return fn

    def out():
        with torch.no_grad():
            return m(x)

    return fn, out


def layer_case(name, B, T, d_model, H) -> dict:
    fn, out = layer_call(name, B, T, d_model, H, with_output=True)
    res = {"layer": name, "B": B, "T": T, "d_model": d_model, "H": H}
    ref = None
    for path in PATHS:
        with conv_path(path), count_kernel_calls() as n:
            fn()  # compiles / warms up; counts the Triton conv's launches of one call
            res[f"{path}_triton_conv_calls"] = n["n"]
            y = out()
            ref = y if ref is None else ref  # the layer's output with conv1d, the first path
            res[f"{path}_out_rel_vs_conv1d"] = rel(y, ref)
            res[f"{path}_fwdbwd_ms"] = bench(fn)
    res["ok"] = all(res[f"{p}_out_rel_vs_conv1d"] < 2e-2 for p in PATHS) and res["triton_triton_conv_calls"] > 0
    return res


def profile_case(name, B, T, d_model, H, path="conv1d") -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn = layer_call(name, B, T, d_model, H)
    with conv_path(path):
        fn()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
        with profile(activities=acts) as prof:
            fn()
            if DEV == "cuda":
                torch.cuda.synchronize()
    avg = prof.key_averages()
    for key in (["self_cuda_time_total", "self_device_time_total"] if DEV == "cuda" else ["self_cpu_time_total"]):
        try:
            table = avg.table(sort_by=key, row_limit=15, max_name_column_width=70)
            break
        except Exception:
            table = None
    print(table, flush=True)
    return {"layer": name, "path": path, "sorted_by": key, "table": table}


def report(out: Path):
    def f(r, key):
        return f" {r[key]:11.3f}" if isinstance(r.get(key), float) else "           -"

    print("\nconv alone (ms)             " + "".join(f"{p + ' fwd':>12s}{p + ' f+b':>12s}" for p in PATHS))
    for r in LOG.records:
        if r["case"].startswith(("conv ", "tile ")) and "error" not in r and "skipped" not in r:
            print(f"{r['case']:>28s}" + "".join(f(r, f"{p}_fwd_ms") + f(r, f"{p}_fwdbwd_ms") for p in PATHS))
    for r in LOG.records:
        if r["case"].startswith("compiled ") and "error" not in r and "skipped" not in r:
            print(f"{r['case']:>28s}" + f(r, "shift_compiled_fwd_ms") + f(r, "shift_compiled_fwdbwd_ms")
                  + f(r, "triton_compiled_fwd_ms") + f(r, "triton_compiled_fwdbwd_ms")
                  + "   (torch.compile: shift fwd, f+b, triton fwd, f+b)")
    print("\nlayer fwd+bwd (ms)          " + "".join(f"{p:>12s}" for p in PATHS) + "   triton conv calls")
    for r in LOG.records:
        if r["case"].startswith("layer ") and "error" not in r and "skipped" not in r:
            print(f"{r['case']:>28s}" + "".join(f(r, f"{p}_fwdbwd_ms") for p in PATHS)
                  + f"   {r.get('triton_triton_conv_calls')}")
    for r in LOG.records:
        if r["case"].startswith("check") and "error" not in r:
            print(f"\n{r['case']}: triton ok={r['triton_ok']} shift ok={r['shift_ok']}; worst triton rel err "
                  f"{max(v for k, v in r.items() if k.startswith('triton_') and k.endswith('_rel')):.2e}")
    bad = [r["case"] for r in LOG.records if r.get("ok") is False or "error" in r]
    print("FAILED CHECKS / CASES WITH ERRORS (see the JSON):", bad or "none")
    print("skipped (time budget):", [r["case"] for r in LOG.records if "skipped" in r] or "none")
    print(f"done in {time.time() - T0:.0f} s; results in {out / 'short_conv.json'}")


def main():
    a = script_args(__doc__, budget=200.0)
    global LOG
    LOG = CaseLog(a.out / "short_conv.json", MACHINE, budget_s=a.budget, t0=T0, unprinted=("table",))
    if SMOKE:
        torch.set_num_threads(1)
    print(MACHINE, flush=True)
    big, small = ((2, 64, 48), (4, 16, 48)) if SMOKE else ((4, 4096, 6144), (16, 1024, 6144))
    layer = (2, 64, 64, 2) if SMOKE else (4, 4096, 2048, 16)
    tiles = ([{"BLOCK_T": 8, "BWD_BLOCK_T": 16, "BWD_ROWS": 32, "BLOCK_C": 32}] if SMOKE else
             [{"BLOCK_T": 16, "BWD_BLOCK_T": 8, "BLOCK_C": 128, "BWD_ROWS": 128, "num_warps": 4},  # the 1st default
              {"BLOCK_T": 8, "BWD_BLOCK_T": 8, "BLOCK_C": 128},
              {"BLOCK_T": 32, "BWD_BLOCK_T": 16, "BLOCK_C": 128, "num_warps": 8},
              {"BLOCK_T": 16, "BWD_BLOCK_T": 8, "BLOCK_C": 256, "num_warps": 8},
              {"BLOCK_T": 16, "BWD_BLOCK_T": 8, "BLOCK_C": 64, "BWD_ROWS": 256},
              {"BLOCK_T": 32, "BWD_BLOCK_T": 32, "BLOCK_C": 64, "BWD_ROWS": 1024, "num_warps": 4}])
    cases = [(f"check {list(big)}", lambda: check_case(*big)),
             (f"conv {list(big)}", lambda: conv_case(*big)),
             (f"conv {list(small)}", lambda: conv_case(*small)),
             ("layer deltanet", lambda: layer_case("deltanet", *layer)),
             ("layer gated_deltanet", lambda: layer_case("gated_deltanet", *layer)),
             ("profile gated_deltanet", lambda: profile_case("gated_deltanet", *layer)),
             ("profile gated_deltanet triton conv", lambda: profile_case("gated_deltanet", *layer, path="triton"))]
    cases += [(f"tile {list(big)} {t}", lambda t=t: tile_case(*big, t)) for t in tiles]
    cases.append((f"compiled {list(big)}", lambda: compiled_case(*big)))
    for name, fn in cases:
        LOG.run(name, fn)
    prof = [r for r in LOG.records if r["case"].startswith("profile") and r.get("table")]
    if prof:  # the tables as text beside the JSON
        (a.out / "profile_gated_deltanet.txt").write_text("\n\n".join(f"{r['case']}\n{r['table']}" for r in prof))
    report(a.out)


if __name__ == "__main__":
    main()
