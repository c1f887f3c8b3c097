"""GPU checks and timings of the Triton (gated) delta rule (issue #22 item 1), one call:

    python benchmarks/gpu_delta.py OUT_DIR            # on a CUDA machine (about 4-5 minutes)
    python benchmarks/gpu_delta.py OUT_DIR --smoke    # tiny shapes on the CPU (Triton interpreter)

(a) The first fwd+bwd call per gate kind (compile time on a cold Triton cache). Checks (bf16
inputs, H=16, D=128, relative error ‖x − ref‖ / ‖ref‖ of o, the final state and the gradients of
q, k, v, beta, g and the initial state): against the float32 loop over time
(ops/delta/reference.py) at B·T = 4k tokens, and against the float32 torch chunked path
(ops/delta/chunk.py, equal to the loop to ~1e-6) at B·T = 16k; no gate (DeltaNet), weak gates
(logsigmoid(x + 4), ~ -0.02 per step) and strong ones (logsigmoid(x), ~ -0.8); fla's
chunk_gated_delta_rule / chunk_delta_rule against the same reference where importable, so the errors
compare; varlen (cu_seqlens) against sequences one by one; the decode kernel; torch.compile (inductor).
(b) Times (triton.testing.do_bench medians after warm-up) of fwd and fwd+bwd at T = 1k..32k with
B·T = 16k tokens: ours, the torch chunked path and fla (its Hopper guard lifted for timing, as in
attnzoo.bench.speed), with peak memory of one fwd+bwd; decode of one token at batch 64 (state given)
against fla's fused_recurrent_gated_delta_rule; whole deltanet / gated_deltanet layers fwd+bwd at
d_model = H·D = 2048 (impl triton and torch, and fla.layers' DeltaNet / GatedDeltaNet of the same
widths where importable; fla's layers differ in details such as output gates); (c) fwd and fwd+bwd
of ours under other launch options (chunk.TUNE) at T = 16k and 2k, strong gates. Every case runs in
its own try/except; results are written to OUT_DIR/gpu_delta.json (with the machine line) after
every case; a table closes the run. A time budget (--budget seconds, default 270) skips whatever is
left once spent.
"""

from __future__ import annotations

import time

import gpu_delta_setup as setup  # noqa: I001 (first: sets TRITON_INTERPRET under --smoke)
import torch
from attnzoo.bench.cases import CaseLog, script_args  # noqa: E402
from gpu_delta_setup import (BUDGET, D, DEV, FLA, H, NAMES, SMOKE, T0, TOL, delta_rule_reference, fla_call,
                             fwd_bwd, inputs, ours, rel, torch_chunked)
from gpu_delta_timing import timing, timing_decode, timing_mixer, tuning

LOG: CaseLog | None = None  # main() makes it


def check(B, T, gate, ref_name, dtype=None, d=D):
    ins = inputs(B, T, gate, dtype=dtype, d=d)
    gen = torch.Generator(device=DEV).manual_seed(1)
    do, dS = torch.randn(B, T, H, d, generator=gen, device=DEV), torch.randn(B, H, d, d, generator=gen, device=DEV)
    f32 = [t.float() if t is not None else None for t in ins]
    ref = delta_rule_reference if ref_name == "loop" else torch_chunked
    want = fwd_bwd(ref, f32, do, dS)
    out = {"B": B, "T": T, "D": d, "dtype": str(ins[0].dtype), "gate": gate, "reference": f"float32 {ref_name}",
           "tol": TOL}
    got = fwd_bwd(ours, ins, do, dS)
    out["ours"] = {n: rel(a, b) for n, a, b in zip(NAMES, got, want)}
    out["ok"] = all(e is not None and e < TOL for n, e in out["ours"].items() if want[NAMES.index(n)] is not None)
    if FLA:
        try:
            fl = fwd_bwd(fla_call, ins, do, dS)
            out["fla"] = {n: rel(a, b) for n, a, b in zip(NAMES, fl, want)}
        except Exception as e:
            out["fla"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def first_call():
    """Seconds of the first fwd+bwd (Triton compiles, nothing autotunes) on a cold cache, per gate kind."""
    out = {}
    for gate in ("weak", None):
        ins = inputs(2, 100, gate, seed=2)
        do, dS = torch.randn(2, 100, H, D, device=DEV), torch.randn(2, H, D, D, device=DEV)
        t = time.time()
        fwd_bwd(ours, ins, do, dS)
        if not SMOKE:
            torch.cuda.synchronize()
        out[f"seconds_{gate or 'no_gate'}"] = round(time.time() - t, 2)
    return out


def check_varlen():
    lens = [5, 70, 200, 1] if SMOKE else [100, 1000, 3000, 37, 4000]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device=DEV)
    ins = inputs(1, sum(lens), "weak", seed=3, n_state=len(lens))
    do, dS = torch.randn(1, sum(lens), H, D, device=DEV), torch.randn(len(lens), H, D, D, device=DEV)
    got = fwd_bwd(ours, ins, do, dS, cu_seqlens=cu)
    worst = {}
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        part = [None if t is None else t[:, a:b].float() for t in ins[:5]] + [ins[5][n:n + 1]]
        want = fwd_bwd(torch_chunked, part, do[:, a:b], dS[n:n + 1])
        sl = ([got[0][:, a:b], got[1][n:n + 1]] + [None if x is None else x[:, a:b] for x in got[2:7]]
              + [got[7][n:n + 1]])
        for name, x, y in zip(NAMES, sl, want):
            e = rel(x, y)
            worst[name] = max(worst.get(name, 0.0), e) if e is not None else worst.get(name)
    return {"lens": lens, "ours": worst, "ok": all(e < TOL for e in worst.values() if e is not None), "tol": TOL}


def check_decode():
    B, T = (2, 3) if SMOKE else (64, 4)
    q, k, v, beta, g, h0 = inputs(B, T, "weak", seed=4)
    with torch.no_grad():
        o, S = ours(q, k, v, beta, g, scale=D ** -0.5, initial_state=h0, output_final_state=True)
        f32 = [t.float() for t in (q, k, v, beta, g)]
        o_r, S_r = delta_rule_reference(*f32, scale=D ** -0.5, initial_state=h0, output_final_state=True)
    errs = {"o": rel(o, o_r), "S": rel(S, S_r)}
    return {"B": B, "T": T, "ours": errs, "ok": all(e < TOL for e in errs.values()), "tol": TOL}


def check_compile():
    ins = inputs(2, 200 if SMOKE else 2048, "weak", seed=5)

    def loss(q, k, v, beta, g, h0):
        o, S = ours(q, k, v, beta, g, scale=D ** -0.5, initial_state=h0, output_final_state=True)
        return o.float().square().sum() + S.sum()

    xs = [t.clone().requires_grad_(True) for t in ins]
    ge = torch.autograd.grad(loss(*xs), xs)
    compiled = torch.compile(loss, backend="aot_eager" if SMOKE else "inductor", fullgraph=True)
    gc = torch.autograd.grad(compiled(*xs), xs)
    errs = {n: rel(a, b) for n, a, b in zip(("dq", "dk", "dv", "dbeta", "dg", "dh0"), gc, ge)}
    return {"ours_compiled_vs_eager": errs, "ok": all(e < 1e-2 for e in errs.values())}


def fmt(x):
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def table():
    for r in LOG.records:
        if r["case"] == "first call":
            print("first fwd+bwd (compiles):", {k: v for k, v in r.items() if k.startswith("seconds_")})
    print("\nchecks (max relative error over o, S and the gradients; fla beside where importable)")
    for r in LOG.records:
        if r["case"].startswith("check") and isinstance(r.get("ours"), dict):
            fl = r.get("fla")
            fl = max(v for v in fl.values() if v is not None) if isinstance(fl, dict) else fl
            print(f"  {r['case']:<40} ok={r['ok']} ours={fmt(max(v for v in r['ours'].values() if v is not None))}"
                  f" fla={fmt(fl)}")
    print("\n| T | B | gate | ours fwd | ours fwd+bwd | torch fwd+bwd | fla fwd+bwd | fla / ours "
          "| peak MiB ours / fla |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in LOG.records:
        if r["case"].startswith("time ") and "T" in r and "B" in r and r["T"] > 1:
            o, f = r.get("ours_fwdbwd_ms"), r.get("fla_fwdbwd_ms")
            print(f"| {r['T']} | {r['B']} | {r['gate']} | {fmt(r.get('ours_fwd_ms'))} | {fmt(o)} | "
                  f"{fmt(r.get('torch_fwdbwd_ms'))} | {fmt(f)} | {fmt(f / o if o and f else None)} | "
                  f"{fmt(r.get('ours_peak_mib'))} / {fmt(r.get('fla_peak_mib'))} |")
    for r in LOG.records:
        if r["case"] == "time decode":
            print(f"\ndecode B={r.get('B')}: ours {fmt(r.get('ours_ms'))} ms, fla {fmt(r.get('fla_ms'))} ms")
    for r in LOG.records:
        if r["case"].startswith("mixer ") and "T" in r:
            o, f = r.get("triton_fwdbwd_ms"), r.get("fla_fwdbwd_ms")
            print(f"{r['case']} d_model={r['d_model']} B={r['B']} T={r['T']} fwd+bwd: triton {fmt(o)} ms, torch "
                  f"{fmt(r.get('torch_fwdbwd_ms'))} ms, fla {fmt(f)} ms (fla / ours "
                  f"{fmt(f / o if o and f else None)}); "
                  f"triton vs torch output {fmt(r.get('ours_triton_vs_torch_rel'))}")
    for r in LOG.records:
        if r["case"].startswith("tune ") and "variants" in r:
            print(f"{r['case']} B={r['B']}: " + "; ".join(
                f"{v['change'] or 'defaults'} {fmt(v.get('fwd_ms'))} / {fmt(v.get('fwdbwd_ms'))} ms"
                for v in r["variants"]))
    print("errors:", [r["case"] for r in LOG.records if "error" in r] or "none",
          "| skipped:", [r["case"] for r in LOG.records if "skipped" in r] or "none")


MACHINE: dict = {}


def main():
    global MACHINE
    a = script_args(__doc__, budget=270.0, only=True)
    BUDGET[0] = a.budget
    MACHINE = setup.machine()
    global LOG
    LOG = CaseLog(a.out / "gpu_delta.json", {"machine": MACHINE}, budget_s=a.budget, t0=T0,
                  only=a.only)
    LOG.run("first call", first_call)
    small = (1, 70) if SMOKE else (2, 2048)
    big = (2, 130) if SMOKE else (4, 4096)
    for gate in (None, "weak", "strong"):
        LOG.run(f"check loop {gate} B={small[0]} T={small[1]}", lambda: check(*small, gate, "loop"))
    for gate in (None, "weak", "strong"):
        LOG.run(f"check chunked {gate} B={big[0]} T={big[1]}", lambda: check(*big, gate, "chunked"))
    # fp32 inputs (tf32 products on the GPU) and head dims below and off a power of two
    odd = (1, 45, 24) if SMOKE else (1, 1000, 100)
    LOG.run(f"check loop fp32 weak D={D // 2} T={small[1] // 2}",
            lambda: check(1, small[1] // 2, "weak", "loop", dtype=torch.float32, d=D // 2))
    LOG.run(f"check loop strong D={odd[2]} T={odd[1]}", lambda: check(odd[0], odd[1], "strong", "loop", d=odd[2]))
    LOG.run("check varlen", check_varlen)
    LOG.run("check decode", check_decode)
    LOG.run("check compile", check_compile)
    Ts = (32, 64) if SMOKE else (1024, 4096, 16384, 32768)
    for T in Ts:
        for gate in ("strong", None):
            LOG.run(f"time T={T} {gate}", lambda: timing(T, gate))
    LOG.run("time decode", timing_decode)
    for name in ("gated_deltanet", "deltanet"):
        LOG.run(f"mixer {name}", lambda: timing_mixer(name))
    for T in ((64,) if SMOKE else (16384, 2048)):
        LOG.run(f"tune T={T} strong", lambda: tuning(T, "strong"))
    table()


if __name__ == "__main__":
    main()
