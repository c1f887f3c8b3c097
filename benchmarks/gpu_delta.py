"""GPU checks and timings of the Triton (gated) delta rule (issue #22 item 1), one call:

    python benchmarks/gpu_delta.py OUT_DIR            # on a CUDA machine (about 4-5 minutes)
    python benchmarks/gpu_delta.py OUT_DIR --smoke    # tiny shapes on the CPU (Triton interpreter)

(a) Checks (bf16 inputs, H=16, D=128, relative error ‖x − ref‖ / ‖ref‖ of o, the final state and the
gradients of q, k, v, beta, g and the initial state): against the float32 loop over time
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

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnzoo.ops.delta.chunk import chunk_delta_rule  # noqa: E402
from attnzoo.ops.delta.reference import delta_rule_reference  # noqa: E402
from attnzoo.ops.delta.triton import triton_delta_rule  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
DT = torch.float32 if SMOKE else torch.bfloat16  # the interpreter cannot multiply bf16 tiles
H, D = (2, 16) if SMOKE else (16, 128)
TOKENS = 128 if SMOKE else 16384
TOL = 1e-3 if SMOKE else 2e-2
T0 = time.time()
RECORDS: list[dict] = []
NAMES = ("o", "S", "dq", "dk", "dv", "dbeta", "dg", "dh0")


def machine():
    import triton

    if SMOKE:
        return {"gpu": None, "torch": torch.__version__, "triton": triton.__version__, "smoke": True}
    from attnzoo.bench.speed import machine_line

    return {**machine_line()["machine"], "dtype": str(DT), "H": H, "D": D}


def fla_ops():
    """fla's chunked and recurrent delta-rule ops with the Hopper guard lifted, or {} (missing)."""
    if SMOKE:
        return {}
    try:
        import fla.ops.common.chunk_o as chunk_o
        from fla.ops.delta_rule import chunk_delta_rule as fla_delta
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gated
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_recurrent
    except Exception as e:
        print("fla not importable:", type(e).__name__, str(e)[:200])
        return {}
    if hasattr(chunk_o, "TRITON_ABOVE_3_7_1"):
        chunk_o.TRITON_ABOVE_3_7_1 = True  # speed and error only (fla #640)
    return {"gated": fla_gated, "plain": fla_delta, "recurrent": fla_recurrent}


FLA = fla_ops()


def inputs(B, T, gate, seed=0, n_state=None, dtype=None, d=D):
    dtype = dtype or DT
    gen = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device=DEV)  # noqa: E731
    q, k, v = r(B, T, H, d), F.normalize(r(B, T, H, d), dim=-1), r(B, T, H, d)
    beta = torch.sigmoid(r(B, T, H))
    g = {"weak": F.logsigmoid(r(B, T, H) + 4.0), "strong": F.logsigmoid(r(B, T, H))}.get(gate)
    h0 = r(n_state or B, H, d, d)
    return [q.to(dtype), k.to(dtype), v.to(dtype), beta.to(dtype), g, h0]


def ours(q, k, v, beta, g, **kw):
    return triton_delta_rule(q, k, v, beta, g, **kw)


def torch_chunked(q, k, v, beta, g, **kw):
    return chunk_delta_rule(q, k, v, beta, g, **kw)


def fla_call(q, k, v, beta, g, *, scale, initial_state=None, output_final_state=False, cu_seqlens=None):
    if g is None:
        return FLA["plain"](q=q, k=k, v=v, beta=beta, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return FLA["gated"](q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def fwd_bwd(fn, ins, do, dS, **kw):
    xs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in ins]
    o, S = fn(*xs[:5], scale=xs[0].shape[-1] ** -0.5, initial_state=xs[5], output_final_state=True, **kw)
    torch.autograd.backward([o, S], [do.to(o.dtype), dS])
    return [o.detach(), S.detach()] + [t.grad if t is not None else None for t in xs]


def rel(a, b):
    if a is None or b is None:
        return None
    a, b = a.double(), b.double()
    e = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    return e if e == e else float("nan")


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


def bench_ms(fn):
    if SMOKE:
        from attnzoo.bench.timing import call_times, median

        return 1e3 * median(call_times(fn, repeats=2, warmup=1))
    from attnzoo.bench.speed import do_bench_ms

    return do_bench_ms(fn)


def timing(T, gate):
    B = max(1, TOKENS // T)
    ins = inputs(B, T, gate, seed=6)
    do = torch.randn(B, T, H, D, device=DEV, dtype=DT)
    provs = {"ours": ours, "torch": torch_chunked}
    if FLA:
        provs["fla"] = fla_call
    out = {"B": B, "T": T, "gate": gate}
    for name, fn in provs.items():
        try:
            xs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in ins[:5]]
            with torch.no_grad():
                fwd_ms = bench_ms(lambda: fn(*ins[:5], scale=D ** -0.5))
            run = lambda: torch.autograd.grad(fn(*xs, scale=D ** -0.5)[0], [x for x in xs if x is not None], do)  # noqa: E731
            run()
            if not SMOKE:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                run()
                torch.cuda.synchronize()
                out[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            out[f"{name}_fwd_ms"], out[f"{name}_fwdbwd_ms"] = fwd_ms, bench_ms(run)
        except Exception as e:
            out[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def fla_layer(name, d_model):
    if SMOKE:
        return None
    try:
        from fla.layers import DeltaNet, GatedDeltaNet
    except Exception:
        return None
    if name == "gated_deltanet":
        return GatedDeltaNet(hidden_size=d_model, expand_v=1, head_dim=D, num_heads=d_model // D, mode="chunk")
    return DeltaNet(hidden_size=d_model, num_heads=d_model // D, mode="chunk")


def timing_mixer(name):
    """A whole layer fwd+bwd (inputs and weights), bf16, d_model = H·D, B·T = 16k: ours with
    impl="triton" and "torch", and fla's layer of the same widths where importable; the Triton
    layer's output against the torch one (same weights)."""
    import attnzoo

    d_model, T = H * D, (64 if SMOKE else 4096)
    B = max(1, TOKENS // T)
    x = torch.randn(B, T, d_model, device=DEV, dtype=DT, requires_grad=True)
    dy = torch.randn_like(x)
    out = {"B": B, "T": T, "d_model": d_model}
    torch.manual_seed(0)
    m = attnzoo.build(name, d_model=d_model, n_heads=H).to(DEV, DT)
    layers = {"ours": m}
    fl = fla_layer(name, d_model)
    if fl is not None:
        layers["fla"] = fl.to(DEV, DT)
    with torch.no_grad():
        m.impl = "torch"
        y_t = m(x)
        m.impl = "triton"
        out["ours_triton_vs_torch_rel"] = rel(m(x), y_t)
    for impl in ("triton", "torch", "fla"):
        if impl == "fla" and "fla" not in layers:
            continue
        layer = layers["fla" if impl == "fla" else "ours"]
        if impl != "fla":
            layer.impl = impl
        params = [p for p in layer.parameters() if p.requires_grad]
        first = lambda y: y[0] if isinstance(y, tuple) else y  # noqa: E731 (fla layers return a tuple)
        try:
            out[f"{impl}_fwdbwd_ms"] = bench_ms(lambda: torch.autograd.grad(first(layer(x)), [x, *params], dy))
        except Exception as e:
            out[f"{impl}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


TUNES = ({}, {"state_bv": 16, "state_min_programs": 0}, {"state_bv": 32, "state_min_programs": 0},
         {"state_bv": 64, "state_min_programs": 0}, {"state_stages": 3}, {"state_stages": 1}, {"state_warps": 8},
         {"bwd_warps": 4}, {"wy_warps": 8}, {"dqk_bk": 32})


def tuning(T, gate):
    """fwd and fwd+bwd of ours under other launch options (ops/delta/triton/chunk.TUNE), each on top
    of the defaults (the first entry)."""
    from attnzoo.ops.delta.triton import chunk as delta_chunk

    B = max(1, TOKENS // T)
    ins = inputs(B, T, gate, seed=8)
    do = torch.randn(B, T, H, D, device=DEV, dtype=DT)
    xs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in ins[:5]]
    base = dict(delta_chunk.TUNE)
    out = {"B": B, "T": T, "gate": gate, "defaults": base, "variants": []}
    for change in TUNES:
        if time.time() - T0 > BUDGET[0] + 30:  # the case may start just before the budget ends
            out["variants"].append({"change": change, "skipped": "time budget spent"})
            continue
        delta_chunk.TUNE.update(change)
        rec = {"change": change}
        try:
            with torch.no_grad():
                rec["fwd_ms"] = bench_ms(lambda: ours(*ins[:5], scale=D ** -0.5))
            rec["fwdbwd_ms"] = bench_ms(lambda: torch.autograd.grad(
                ours(*xs, scale=D ** -0.5)[0], [x for x in xs if x is not None], do))
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        finally:
            delta_chunk.TUNE.clear()
            delta_chunk.TUNE.update(base)
        out["variants"].append(rec)
    return out


def timing_decode():
    B = 4 if SMOKE else 64
    q, k, v, beta, g, h0 = inputs(B, 1, "weak", seed=7)
    out = {"B": B, "T": 1}
    with torch.no_grad():
        out["ours_ms"] = bench_ms(lambda: ours(q, k, v, beta, g, scale=D ** -0.5, initial_state=h0,
                                               output_final_state=True))
        if FLA:
            try:
                out["fla_ms"] = bench_ms(lambda: FLA["recurrent"](q=q, k=k, v=v, g=g, beta=beta, scale=D ** -0.5,
                                                                  initial_state=h0, output_final_state=True))
            except Exception as e:
                out["fla_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def case(name, fn, out_dir, budget):
    if time.time() - T0 > budget:
        rec = {"case": name, "skipped": "time budget spent"}
    else:
        t = time.time()
        try:
            rec = {"case": name, **fn()}
        except Exception as e:
            rec = {"case": name, "error": f"{type(e).__name__}: {str(e)[:300]}",
                   "trace": traceback.format_exc()[-1500:]}
        rec["seconds"] = round(time.time() - t, 1)
        if not SMOKE:
            torch.cuda.empty_cache()
    RECORDS.append(rec)
    print(json.dumps({k: v for k, v in rec.items() if k != "trace"}), flush=True)
    (out_dir / "gpu_delta.json").write_text(json.dumps({"machine": MACHINE, "records": RECORDS}, indent=1))


def fmt(x):
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def table():
    print("\nchecks (max relative error over o, S and the gradients; fla beside where importable)")
    for r in RECORDS:
        if r["case"].startswith("check") and isinstance(r.get("ours"), dict):
            fl = r.get("fla")
            fl = max(v for v in fl.values() if v is not None) if isinstance(fl, dict) else fl
            print(f"  {r['case']:<40} ok={r['ok']} ours={fmt(max(v for v in r['ours'].values() if v is not None))}"
                  f" fla={fmt(fl)}")
    print("\n| T | B | gate | ours fwd | ours fwd+bwd | torch fwd+bwd | fla fwd+bwd | fla / ours "
          "| peak MiB ours / fla |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in RECORDS:
        if r["case"].startswith("time ") and "T" in r and "B" in r and r["T"] > 1:
            o, f = r.get("ours_fwdbwd_ms"), r.get("fla_fwdbwd_ms")
            print(f"| {r['T']} | {r['B']} | {r['gate']} | {fmt(r.get('ours_fwd_ms'))} | {fmt(o)} | "
                  f"{fmt(r.get('torch_fwdbwd_ms'))} | {fmt(f)} | {fmt(f / o if o and f else None)} | "
                  f"{fmt(r.get('ours_peak_mib'))} / {fmt(r.get('fla_peak_mib'))} |")
    for r in RECORDS:
        if r["case"] == "time decode":
            print(f"\ndecode B={r.get('B')}: ours {fmt(r.get('ours_ms'))} ms, fla {fmt(r.get('fla_ms'))} ms")
    for r in RECORDS:
        if r["case"].startswith("mixer ") and "T" in r:
            o, f = r.get("triton_fwdbwd_ms"), r.get("fla_fwdbwd_ms")
            print(f"{r['case']} d_model={r['d_model']} B={r['B']} T={r['T']} fwd+bwd: triton {fmt(o)} ms, torch "
                  f"{fmt(r.get('torch_fwdbwd_ms'))} ms, fla {fmt(f)} ms (fla / ours "
                  f"{fmt(f / o if o and f else None)}); "
                  f"triton vs torch output {fmt(r.get('ours_triton_vs_torch_rel'))}")
    for r in RECORDS:
        if r["case"].startswith("tune ") and "variants" in r:
            print(f"{r['case']} B={r['B']}: " + "; ".join(
                f"{v['change'] or 'defaults'} {fmt(v.get('fwd_ms'))} / {fmt(v.get('fwdbwd_ms'))} ms"
                for v in r["variants"]))
    print("errors:", [r["case"] for r in RECORDS if "error" in r] or "none",
          "| skipped:", [r["case"] for r in RECORDS if "skipped" in r] or "none")


MACHINE: dict = {}
BUDGET = [300.0]


def main():
    global MACHINE
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU through the Triton interpreter")
    p.add_argument("--budget", type=float, default=270.0, help="seconds after which remaining cases are skipped")
    a = p.parse_args()
    BUDGET[0] = a.budget
    if not SMOKE and not torch.cuda.is_available():
        sys.exit("needs CUDA (or --smoke)")
    a.out.mkdir(parents=True, exist_ok=True)
    MACHINE = machine()
    small = (1, 70) if SMOKE else (2, 2048)
    big = (2, 130) if SMOKE else (4, 4096)
    for gate in (None, "weak", "strong"):
        case(f"check loop {gate} B={small[0]} T={small[1]}", lambda: check(*small, gate, "loop"), a.out, a.budget)
    for gate in (None, "weak", "strong"):
        case(f"check chunked {gate} B={big[0]} T={big[1]}", lambda: check(*big, gate, "chunked"), a.out, a.budget)
    # fp32 inputs (tf32 products on the GPU) and head dims below and off a power of two
    odd = (1, 45, 24) if SMOKE else (1, 1000, 100)
    case(f"check loop fp32 weak D={D // 2} T={small[1] // 2}",
         lambda: check(1, small[1] // 2, "weak", "loop", dtype=torch.float32, d=D // 2), a.out, a.budget)
    case(f"check loop strong D={odd[2]} T={odd[1]}", lambda: check(odd[0], odd[1], "strong", "loop", d=odd[2]),
         a.out, a.budget)
    case("check varlen", check_varlen, a.out, a.budget)
    case("check decode", check_decode, a.out, a.budget)
    case("check compile", check_compile, a.out, a.budget)
    Ts = (32, 64) if SMOKE else (1024, 4096, 16384, 32768)
    for T in Ts:
        for gate in ("strong", None):
            case(f"time T={T} {gate}", lambda: timing(T, gate), a.out, a.budget)
    case("time decode", timing_decode, a.out, a.budget)
    for name in ("gated_deltanet", "deltanet"):
        case(f"mixer {name}", lambda: timing_mixer(name), a.out, a.budget)
    for T in ((64,) if SMOKE else (16384, 2048)):
        case(f"tune T={T} strong", lambda: tuning(T, "strong"), a.out, a.budget)
    table()


if __name__ == "__main__":
    main()
